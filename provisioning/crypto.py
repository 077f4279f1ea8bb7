"""Encryption at rest of the local drivers' backups: Fernet (the ``cryptography`` package) with CELLHUB_BACKUP_KEY.

The clouds encrypt with their own keys (KMS, transparent data encryption, storage service encryption);
on this machine every backup file is written through ``EncryptingWriter`` and is unreadable without
the key. Fernet (AES-128-CBC + HMAC-SHA256) authenticates each token, so a wrong key or a changed
byte is an error, never garbage.

File format, so a backup streams in bounded memory whatever its size::

    MAGIC  key-id (8 hex) "\\n"  then frames:  length (4 bytes, big-endian)  Fernet token

Each token's plaintext is ``index (8 bytes) | last (1 byte) | up to CHUNK bytes``. Index and the
``last`` flag are inside the authenticated token, so a reordered, dropped or truncated frame is
detected on reading. The key id (first 8 hex of the SHA-256 of the key) names the key in
``Backup.encrypted_with`` and lets a reader say which key a file needs.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse
from urllib.request import url2pathname

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

from provisioning.drivers.base import PermanentDriverError

MAGIC = b"CELLHUB-BACKUP-1\n"
CHUNK = 1 << 20
KEY_VARIABLE = "CELLHUB_BACKUP_KEY"
_FRAME_HEADER = struct.Struct(">I")
_CHUNK_HEADER = struct.Struct(">QB")


class BackupKeyError(PermanentDriverError):
    """The backup key is missing or invalid, or a file needs another key: a retry cannot fix it."""


class BackupCorrupt(PermanentDriverError):
    """A backup file is not one of ours, or was changed or cut short after it was written."""


def key_id(key: str | bytes) -> str:
    """The public name of a key: the first 8 hex digits of its SHA-256."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw.strip()).hexdigest()[:8]


def backup_key() -> tuple[Fernet, str]:
    """The Fernet of CELLHUB_BACKUP_KEY and its key id; ``BackupKeyError`` names the variable when unusable."""
    key = (settings.CELLHUB.get("BACKUP_KEY") or "").strip()
    if not key:
        raise BackupKeyError(
            f"local backups are encrypted with {KEY_VARIABLE}, which is not set; set it to a Fernet key "
            "(python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') "
            "and keep a copy outside this machine: without it no backup can be read"
        )
    try:
        fernet = Fernet(key)
    except (ValueError, TypeError):
        raise BackupKeyError(f"{KEY_VARIABLE} is not a Fernet key (32 bytes, url-safe base64 encoded)") from None
    return fernet, key_id(key)


class EncryptingWriter(io.RawIOBase):
    """A write-only binary stream that encrypts into ``out`` frame by frame; ``close()`` writes the last frame.

    ``key_id`` names the key; ``size`` and ``checksum`` (SHA-256) describe the ciphertext written to
    ``out``. It does not seek, so ``zipfile`` writes into it in streaming mode.
    """

    def __init__(self, out: BinaryIO, fernet: Fernet, key: str):
        super().__init__()
        self.out = out
        self.fernet = fernet
        self.key_id = key
        self.buffer = bytearray()
        self.index = 0
        self.size = 0
        self.digest = hashlib.sha256()
        self._emit(MAGIC + key.encode() + b"\n")

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes) -> None:
        self.out.write(data)
        self.digest.update(data)
        self.size += len(data)

    def _frame(self, chunk: bytes, last: bool) -> None:
        token = self.fernet.encrypt(_CHUNK_HEADER.pack(self.index, 1 if last else 0) + chunk)
        self._emit(_FRAME_HEADER.pack(len(token)) + token)
        self.index += 1

    def write(self, data) -> int:
        self.buffer += data
        while len(self.buffer) > CHUNK:
            self._frame(bytes(self.buffer[:CHUNK]), last=False)
            del self.buffer[:CHUNK]
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._frame(bytes(self.buffer), last=True)
            self.buffer.clear()
        super().close()

    @property
    def checksum(self) -> str:
        return self.digest.hexdigest()


def _read_exact(source: BinaryIO, count: int, what: str) -> bytes:
    data = source.read(count)
    if len(data) != count:
        raise BackupCorrupt(f"backup is cut short (in the {what})")
    return data


def file_key_id(source: BinaryIO) -> str:
    """Read the header of an encrypted backup; returns the id of the key it was written with."""
    if source.read(len(MAGIC)) != MAGIC:
        raise BackupCorrupt("not a Cell Hub encrypted backup (bad header)")
    return _read_exact(source, 9, "header")[:8].decode("ascii", "replace")


def decrypted_chunks(source: BinaryIO) -> Iterator[bytes]:
    """The plaintext of an encrypted backup, chunk by chunk.

    Raises ``BackupKeyError`` when the file needs another key than CELLHUB_BACKUP_KEY, and
    ``BackupCorrupt`` when a frame is missing, reordered, changed or the file ends early.
    """
    fernet, current = backup_key()
    needed = file_key_id(source)
    if needed != current:
        raise BackupKeyError(
            f"this backup was encrypted with key {needed}; {KEY_VARIABLE} is key {current}: set the key it was "
            "made with to read it"
        )
    expected = 0
    while True:
        header = source.read(_FRAME_HEADER.size)
        if len(header) != _FRAME_HEADER.size:
            raise BackupCorrupt("backup is cut short (its last frame is missing)")
        (length,) = _FRAME_HEADER.unpack(header)
        try:
            plain = fernet.decrypt(_read_exact(source, length, "frame"))
        except InvalidToken:
            raise BackupCorrupt(f"frame {expected} does not authenticate: the file was changed") from None
        index, last = _CHUNK_HEADER.unpack(plain[: _CHUNK_HEADER.size])
        if index != expected:
            raise BackupCorrupt(f"frame {expected} is missing or out of order (found {index})")
        yield plain[_CHUNK_HEADER.size:]
        expected += 1
        if last:
            if source.read(1):
                raise BackupCorrupt("data follows the last frame")
            return


def decrypt_to(path: Path, out: BinaryIO) -> int:
    """Write the plaintext of the encrypted backup at ``path`` to ``out``; returns its length."""
    total = 0
    with open(path, "rb") as source:
        for chunk in decrypted_chunks(source):
            out.write(chunk)
            total += len(chunk)
    return total


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- the local drivers' backup files ---------------------------------------------------------------------


@contextmanager
def encrypted_file(target: Path) -> Iterator[EncryptingWriter]:
    """Write ``target`` encrypted, readable by the hub's user only; it appears whole or not at all.

    The key is checked before anything is written. A failure inside the block removes the partial file.
    """
    fernet, key = backup_key()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with open(partial, "wb") as out:
            os.fchmod(out.fileno(), 0o600)
            writer = EncryptingWriter(out, fernet, key)
            yield writer
            writer.close()
            out.flush()
            os.fsync(out.fileno())
        partial.replace(target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def local_file(location: str) -> Path:
    """The path of a local backup's ``file://`` location; refuses anything outside the hub's var directory."""
    parsed = urlparse(location)
    if parsed.scheme != "file":
        raise PermanentDriverError(f"{location!r} is not a local backup (file://) location")
    path = Path(url2pathname(parsed.path)).resolve()
    var_dir = Path(settings.CELLHUB["VAR_DIR"]).resolve()
    if not path.is_relative_to(var_dir):
        raise PermanentDriverError(f"{location} is outside the hub's var directory {var_dir}")
    return path


def check_local_backup(location: str, checksum: str) -> Path:
    """The file of a local backup, after checking it is there, whole (SHA-256) and readable with the current key."""
    path = local_file(location)
    if not path.is_file():
        raise PermanentDriverError(f"backup file {path} is missing")
    if checksum and sha256_file(path) != checksum:
        raise BackupCorrupt(f"backup file {path} does not match its recorded SHA-256: it was changed or damaged")
    _, current = backup_key()
    with open(path, "rb") as handle:
        needed = file_key_id(handle)
    if needed != current:
        raise BackupKeyError(f"backup file {path} needs key {needed}; {KEY_VARIABLE} is key {current}")
    return path


def delete_local_backup(location: str) -> None:
    """Remove a local backup file (and any partial one); absent is fine."""
    path = local_file(location)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".partial").unlink(missing_ok=True)


SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677, PostgreSQL's format
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64).

    Sent in ``CREATE/ALTER ROLE … PASSWORD '<verifier>'``, the server stores it as is: the plaintext never
    reaches the server, its statement log or ``pg_stat_statements``. ``password`` must be ASCII (SASLprep
    leaves it unchanged then); the hub's derived passwords are. A fresh random salt unless one is given.
    """
    if not password.isascii():
        raise ValueError("only ASCII passwords are supported (SASLprep is not applied)")
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    salt64, stored64, server64 = (base64.b64encode(raw).decode() for raw in (salt, stored_key, server_key))
    return f"SCRAM-SHA-256${iterations}:{salt64}${stored64}:{server64}"
