"""Local folders as a storage pool: the pool is a folder, each share a sub-folder.

The firewall is an NFS-style exports table (``<pool>/exports``: one ``<share> <address>`` line per
share), rewritten atomically under a file lock. Archives are zip files under ``var/archive/``.
"""
import hashlib
import shutil
import zipfile
from pathlib import Path

from provisioning.drivers.base import BackupResult, StorageDriver
from provisioning.drivers.local_lock import file_lock
from provisioning.drivers.local_paths import var_path, write_atomically


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalFsStorageDriver(StorageDriver):
    """Shares are folders; every call is idempotent."""

    def _root(self) -> Path:
        return var_path("storage", f"pool{self.pool.pk}")

    def share_path(self, share) -> Path:
        return self._root() / share.name

    def _exports(self) -> Path:
        return self._root() / "exports"

    def provision_pool(self) -> dict:
        return {"external_id": str(self._root()), "config": {}}

    def delete_pool(self) -> None:
        shutil.rmtree(self._root(), ignore_errors=True)

    def create_share(self, *, share) -> str:
        path = self.share_path(share)
        path.mkdir(parents=True, exist_ok=True)
        return path.as_uri()

    def exports(self) -> dict[str, str]:
        """The exports table: share name → the one address allowed in."""
        if not self._exports().exists():
            return {}
        lines = self._exports().read_text().splitlines()
        return dict(line.split(" ", 1) for line in lines if " " in line)

    def set_firewall(self, *, share, address: str) -> None:
        with file_lock(self._root() / ".exports.lock"):
            table = self.exports()
            if address:
                table[share.name] = address
            else:
                table.pop(share.name, None)
            write_atomically(self._exports(), "".join(f"{name} {addr}\n" for name, addr in sorted(table.items())))

    def share_exists(self, *, share) -> bool:
        return self.share_path(share).is_dir()

    def delete_share(self, *, share) -> None:
        self.set_firewall(share=share, address="")
        shutil.rmtree(self.share_path(share), ignore_errors=True)

    def list_shares(self) -> list[str]:
        return sorted(p.name for p in self._root().iterdir() if p.is_dir())

    def archive_share(self, *, share, label: str) -> BackupResult:
        """Zip every file of the share to ``var/archive/<label>.zip``; same label, same file (rewritten)."""
        target = var_path("archive") / f"{label}.zip"
        partial = target.with_suffix(".zip.partial")
        root = self.share_path(share)
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(root).as_posix())
        partial.replace(target)
        return BackupResult(location=target.as_uri(), size_bytes=target.stat().st_size, checksum=sha256_of(target))

    def scrub_share(self, *, share) -> None:
        """Remove everything inside the share, keeping the (now empty) folder."""
        root = self.share_path(share)
        root.mkdir(parents=True, exist_ok=True)
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
