"""Local folders as a storage pool: the pool is a folder, each share a sub-folder.

The firewall is an NFS-style exports table (``<pool>/exports``: one ``<share> <address>`` line per
share), rewritten atomically under a file lock. Archives are zip files under ``var/archive/``.
"""
import hashlib
import os
import shutil
import tempfile
import zipfile
from datetime import datetime
from pathlib import Path, PurePosixPath

from provisioning import crypto
from provisioning.drivers.base import BackupResult, Capabilities, PermanentDriverError, StorageDriver
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

    provider = "local_fs"
    label = "Local folders"
    clouds = ("local",)
    default_for_clouds = ("local",)
    lead_time_hours = 0.1
    # Its host is this machine, the one there is: a new pool (a top-up) is a new folder, ``var/storage/pool<id>/``,
    # derived from its id; nothing in its config names a host.
    host_config_keys = ()
    capabilities = Capabilities(file_restore=True, backup_deletion=True, host_replacement=True)

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

    def replace_pool(self, new_host: str) -> dict:
        """Hand every share folder of this (failed) pool to the replacement pool's folder ``new_host`` (its
        ``external_id``): each folder is renamed into it — one rename on the same file system, no file copied,
        none lost — and its exports line moves with it. Safe to repeat: a folder already moved is found there.

        Raises ``PermanentDriverError`` for a share found in both folders (never merged) or in neither though
        it was created (its data is somewhere else: nothing is invented in its place).
        """
        target_root = Path(new_host)
        target_root.mkdir(parents=True, exist_ok=True)
        shares = list(self.pool.shares.order_by("slot"))
        for share in shares:
            source, target = self.share_path(share), target_root / share.name
            if source.is_dir() and target.exists():
                raise PermanentDriverError(f"share {share.name} is in both {source.parent} and {target_root}")
            if source.is_dir():
                source.rename(target)
            elif not target.is_dir():
                if share.endpoint:
                    raise PermanentDriverError(f"share {share.name} is in neither {source.parent} nor {target_root}")
                target.mkdir()
        # The firewall follows the shares: their lines join the new exports table, then leave the old one.
        moving = {share.name for share in shares}
        with file_lock(self._root() / ".exports.lock"):
            leaving = {name: address for name, address in self.exports().items() if name in moving}
            with file_lock(target_root / ".exports.lock"):
                new_exports = target_root / "exports"
                lines = new_exports.read_text().splitlines() if new_exports.exists() else []
                table = {**dict(line.split(" ", 1) for line in lines if " " in line), **leaving}
                write_atomically(new_exports, "".join(f"{name} {addr}\n" for name, addr in sorted(table.items())))
            staying = {name: address for name, address in self.exports().items() if name not in moving}
            write_atomically(self._exports(), "".join(f"{name} {addr}\n" for name, addr in sorted(staying.items())))
        endpoints = {share.name: (target_root / share.name).as_uri() for share in shares}
        return {"external_id": str(target_root), "config": {}, "endpoints": endpoints}

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

    # -- files backups (encrypted), restore, verification -----------------------------------------------------

    def backup_share(self, *, share, label: str, archive: bool = False) -> BackupResult:
        """Zip the share straight into a Fernet-encrypted file: no plaintext copy ever lands on disk.

        Backups go to ``var/backups/files/pool<id>/<label>.zip.enc``; ``archive`` (decommission) sends the
        file to deep storage, ``var/archive/<label>.zip.enc``. Regular files and empty folders are kept
        (with their permission bits); symbolic links are skipped, so nothing outside the share is read.
        ``extra`` counts files and bytes. The same label rewrites the same file. Raises ``BackupKeyError``
        (permanent) without CELLHUB_BACKUP_KEY.
        """
        folder = var_path("archive") if archive else var_path("backups", "files", f"pool{self.pool.pk}")
        target = folder / f"{label}.zip.enc"
        root = self.share_path(share)
        counts = {"files": 0, "bytes": 0, "skipped_links": 0}
        with crypto.encrypted_file(target) as writer:
            with zipfile.ZipFile(writer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
                for folder_path, folders, files in os.walk(root) if root.is_dir() else []:
                    here = Path(folder_path)
                    folders.sort()  # walked top-down in name order: the same share makes the same archive
                    for name in sorted(files):
                        path = here / name
                        if path.is_symlink() or not path.is_file():
                            counts["skipped_links"] += 1
                            continue
                        bundle.write(path, path.relative_to(root).as_posix())
                        counts["files"] += 1
                        counts["bytes"] += path.stat().st_size
                    if here != root and not folders and not files:
                        bundle.write(here, here.relative_to(root).as_posix() + "/")
        return BackupResult(
            location=target.as_uri(), size_bytes=writer.size, checksum=writer.checksum,
            encrypted_with=writer.key_id, extra=counts,
        )

    def unpack_archive(self, *, location: str, target: Path) -> dict:
        """Decrypt a backup made by ``backup_share`` and extract it into the folder ``target``; returns counts.

        Checks every entry first: one that would land outside ``target`` (an absolute path, ``..``) refuses
        the whole archive. Raises ``BackupKeyError`` / ``BackupCorrupt`` (permanent) for a wrong key or a
        changed file.
        """
        path = crypto.check_local_backup(location, checksum="")
        target.mkdir(parents=True, exist_ok=True)
        counts = {"files": 0, "bytes": 0}
        with tempfile.SpooledTemporaryFile(max_size=64 << 20, dir=var_path("tmp")) as plain:
            crypto.decrypt_to(path, plain)
            plain.seek(0)
            with zipfile.ZipFile(plain) as bundle:
                members = bundle.infolist()
                for member in members:
                    name = PurePosixPath(member.filename)
                    if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                        raise crypto.BackupCorrupt(f"archive {path.name} holds an unsafe path {member.filename!r}")
                for member in members:
                    destination = target.joinpath(*PurePosixPath(member.filename).parts)
                    if member.is_dir():
                        destination.mkdir(parents=True, exist_ok=True)
                        continue
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with bundle.open(member) as source, open(destination, "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                    mode = (member.external_attr >> 16) & 0o777
                    if mode:
                        destination.chmod(mode)
                    modified = datetime(*member.date_time).timestamp()  # zip keeps local time, to 2 seconds
                    os.utime(destination, (modified, modified))
                    counts["files"] += 1
                    counts["bytes"] += member.file_size
        return counts

    def restore_share(self, *, share, location: str) -> None:
        """Replace the share's content with a backup's: unpacked aside first, then scrubbed and moved in.

        A damaged backup or a wrong key fails before the share is touched; the share's folder itself stays
        (a running deployment mounts it). Idempotent: a repeat unpacks and replaces again.
        """
        staging = var_path("restoring", f"pool{self.pool.pk}") / share.name
        shutil.rmtree(staging, ignore_errors=True)
        self.unpack_archive(location=location, target=staging)
        self.scrub_share(share=share)
        root = self.share_path(share)
        for child in sorted(staging.iterdir()):
            os.replace(child, root / child.name)
        staging.rmdir()

    def share_listing(self, *, share) -> dict[str, str]:
        """Everything in the share: relative path → SHA-256 of a file, ``"dir"`` for a folder, ``"link"`` for a
        symbolic link. Empty for an empty or missing share (what a fresh share looks like)."""
        root = self.share_path(share)
        listing = {}
        for folder_path, folders, files in os.walk(root) if root.is_dir() else []:
            here = Path(folder_path)
            for name in folders:
                path = here / name
                listing[path.relative_to(root).as_posix()] = "link" if path.is_symlink() else "dir"
            for name in files:
                path = here / name
                listing[path.relative_to(root).as_posix()] = "link" if path.is_symlink() else sha256_of(path)
        return dict(sorted(listing.items()))

    def delete_backup(self, *, location: str) -> None:
        """Remove a files backup or archive of this driver; absent is fine."""
        crypto.delete_local_backup(location)
