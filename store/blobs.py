"""Content-addressed blobs: immutable files named by the sha256 of their bytes.

Layout under the store home::

    blobs/sha256/ab/cdef...   the bytes whose sha256 hex digest is "abcdef..." (read-only, 0o444)
    tmp/                      staging files, on the same file system as blobs/

The first two hex digits of a digest name a folder and the remaining 62 name the file, so
``BlobStore.path`` and ``BlobStore.digest_of_path`` are exact inverses. A blob is written to
tmp/, fsynced, made read-only and renamed into place. Writing a blob that already exists stores
nothing new, so concurrent writers of the same bytes are safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, BinaryIO

from store.atomic import fsync_directory, staging_prefix
from store.errors import (
    BlobNotFoundError,
    CorruptBlobError,
    InvalidDigestError,
    store_io_error,
)

logger = logging.getLogger(__name__)

__all__ = ["CHUNK_SIZE", "BlobStore", "StagedBlob", "validate_digest"]

CHUNK_SIZE = 1024 * 1024
"""Bytes read per step when hashing or copying a file (1 MiB)."""

_DIGEST = re.compile(r"[0-9a-f]{64}")
_BLOB_MODE = 0o444


@dataclass(frozen=True)
class StagedBlob:
    """A file written to tmp/ and hashed, waiting to be renamed to its blob path."""

    digest: str
    size: int
    path: Path


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is 64 lowercase hex digits, else raise InvalidDigestError."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise InvalidDigestError(
            f"Invalid sha256 digest {digest!r}: expected 64 lowercase hexadecimal digits. "
            "Pass the full digest as printed by the store."
        )
    return digest


class BlobStore:
    """The blobs/sha256/ and tmp/ folders of one store home.

    Every method translates OSError into StoreIOError. Instances hold no open files and may
    be shared between threads.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.root = self.home / "blobs" / "sha256"
        self.tmp_dir = self.home / "tmp"

    def create_folders(self) -> None:
        """Create blobs/sha256/ and tmp/ if they are missing."""
        for folder in (self.root, self.tmp_dir):
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise store_io_error("create the folder", folder, exc) from exc

    def path(self, digest: str) -> Path:
        """Return the file path of ``digest``, which need not exist.

        Raises InvalidDigestError when ``digest`` is not 64 lowercase hex digits.
        """
        validate_digest(digest)
        return self.root / digest[:2] / digest[2:]

    def digest_of_path(self, path: Path) -> str:
        """Return the digest that ``path`` stores; the inverse of ``path()``.

        Raises InvalidDigestError when ``path`` is not a blob path of this store.
        """
        path = Path(path)
        if path.parent.parent != self.root:
            raise InvalidDigestError(
                f"Path '{path}' is not a blob of this store: expected a file under '{self.root}'."
            )
        return validate_digest(path.parent.name + path.name)

    def has(self, digest: str) -> bool:
        """Return whether a blob with ``digest`` is stored."""
        return self.path(digest).is_file()

    def put_file(self, source: Path) -> tuple[str, int]:
        """Store the bytes of the file ``source`` and return ``(digest, size)``.

        The file is streamed in 1 MiB chunks, so its size does not matter. Raises StoreIOError
        when ``source`` cannot be read or the store cannot be written.
        """
        staged = self.stage_file(source)
        try:
            self.publish(staged)
        finally:
            self.discard(staged)
        return staged.digest, staged.size

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` and return its digest."""
        staged = self.stage_bytes(data)
        try:
            self.publish(staged)
        finally:
            self.discard(staged)
        return staged.digest

    def stage_file(self, source: Path) -> StagedBlob:
        """Copy the file ``source`` into tmp/ while hashing it, and fsync the copy.

        Nothing is visible in blobs/ until ``publish``. Raises StoreIOError when ``source``
        cannot be read or tmp/ cannot be written (a full disk, say); the copy is removed then.
        """
        try:
            stream = open(source, "rb")
        except OSError as exc:
            raise store_io_error("read", source, exc) from exc
        with stream:
            return self._stage_chunks(_read_chunks(stream, Path(source)))

    def stage_bytes(self, data: bytes) -> StagedBlob:
        """Write ``data`` into tmp/ and fsync it; see ``stage_file``."""
        return self._stage_chunks([data])

    def publish(self, staged: StagedBlob) -> bool:
        """Rename a staged blob into place and return whether it was new.

        When the blob is already stored, its ctime is refreshed instead (see ``touch``) and
        the staged copy is left for ``discard``. Raises StoreIOError when the rename fails.
        """
        target = self.path(staged.digest)
        if target.exists():
            logger.debug("Blob %s is already stored", staged.digest)
            self.touch(staged.digest)
            return False

        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, target)
        except OSError as exc:
            raise store_io_error("store blob", target, exc) from exc
        fsync_directory(target.parent)
        logger.debug("Stored blob %s", staged.digest)
        return True

    def discard(self, staged: StagedBlob) -> None:
        """Delete the staged copy if it is still in tmp/."""
        with contextlib.suppress(FileNotFoundError):
            staged.path.unlink()

    def open(self, digest: str) -> BinaryIO:
        """Open the blob ``digest`` for binary reading; raise BlobNotFoundError if it is missing.

        The bytes are not re-hashed; use ``read_bytes`` or ``verify`` for that.
        """
        path = self.path(digest)
        try:
            return open(path, "rb")
        except FileNotFoundError as exc:
            raise BlobNotFoundError(
                f"Blob {digest} not found at '{path}'. Add the file again, or run verify "
                "to list every missing blob."
            ) from exc
        except OSError as exc:
            raise store_io_error("read", path, exc) from exc

    def read_bytes(self, digest: str) -> bytes:
        """Return the bytes of blob ``digest`` after checking that they hash to ``digest``.

        Meant for small blobs such as manifests. Raises BlobNotFoundError or CorruptBlobError.
        """
        with self.open(digest) as stream:
            data = _read_all(stream, self.path(digest))
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise _corrupt_blob_error(digest, actual, self.path(digest))
        return data

    def read_head(self, digest: str, size: int) -> bytes:
        """Return at most the first ``size`` bytes of blob ``digest``, without verifying them."""
        with self.open(digest) as stream:
            try:
                return stream.read(size)
            except OSError as exc:
                raise store_io_error("read", self.path(digest), exc) from exc

    def stat(self, digest: str) -> os.stat_result:
        """Return ``os.stat`` of blob ``digest``; raise BlobNotFoundError if it is missing."""
        path = self.path(digest)
        try:
            return path.stat()
        except FileNotFoundError as exc:
            raise BlobNotFoundError(f"Blob {digest} not found at '{path}'.") from exc
        except OSError as exc:
            raise store_io_error("read the status of", path, exc) from exc

    def created(self, digest: str) -> str:
        """Return the blob's modification time as ISO-8601 UTC with microseconds.

        Blobs are never rewritten, so this is when the blob was first stored, unless a
        copy or restore of the store reset file times.
        """
        nanoseconds = self.stat(digest).st_mtime_ns
        seconds, remainder = divmod(nanoseconds, 1_000_000_000)
        moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
        moment = moment.replace(microsecond=remainder // 1000)
        return moment.isoformat(timespec="microseconds")

    def iter_digests(self) -> Iterator[str]:
        """Yield the digest of every stored blob, in sorted order.

        Files under blobs/sha256/ whose names do not form a digest are skipped and logged.
        """
        for prefix_dir in _sorted_entries(self.root):
            if not prefix_dir.is_dir():
                logger.warning("Skipping %s: not a blob folder", prefix_dir.path)
                continue
            for entry in _sorted_entries(Path(prefix_dir.path)):
                digest = prefix_dir.name + entry.name
                if entry.is_file() and _DIGEST.fullmatch(digest):
                    yield digest
                else:
                    logger.warning("Skipping %s: not a blob", entry.path)

    def verify(self, digest: str) -> bool:
        """Re-hash blob ``digest`` and return whether its bytes still match the digest.

        Raises BlobNotFoundError when the blob is missing.
        """
        hasher = hashlib.sha256()
        with self.open(digest) as stream:
            for chunk in _read_chunks(stream, self.path(digest)):
                hasher.update(chunk)
        return hasher.hexdigest() == digest

    def delete(self, digest: str) -> bool:
        """Delete blob ``digest`` and return whether it existed.

        Deleting is not atomic with respect to readers that already opened the blob: on POSIX
        they keep reading the old bytes.
        """
        path = self.path(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except PermissionError:
            # Windows refuses to delete read-only files; POSIX only checks the folder.
            try:
                os.chmod(path, 0o644)
                path.unlink()
            except OSError as exc:
                raise store_io_error("delete", path, exc) from exc
        except OSError as exc:
            raise store_io_error("delete", path, exc) from exc
        return True

    def touch(self, digest: str) -> None:
        """Mark an existing blob as recently used, so that ``gc`` treats it as fresh.

        This sets the blob's access and modification times to their current values, which
        updates only its status-change time (ctime). The mtime, which the index reports as
        the creation time, stays unchanged. Failures are logged and ignored because the
        blob itself is intact.
        """
        path = self.path(digest)
        try:
            status = path.stat()
            os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
        except OSError as exc:
            logger.debug("Cannot touch blob %s: %s", path, exc)

    def _stage_chunks(self, chunks: Iterable[bytes]) -> StagedBlob:
        """Write ``chunks`` to a new file in tmp/ while hashing them."""
        try:
            handle = tempfile.NamedTemporaryFile(
                dir=self.tmp_dir, prefix=staging_prefix("blob"), suffix=".tmp", delete=False
            )
        except OSError as exc:
            raise store_io_error("create a staging file in", self.tmp_dir, exc) from exc

        staged = Path(handle.name)
        try:
            digest, size = _write_hashed(handle, chunks)
            os.chmod(staged, _BLOB_MODE)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            raise
        return StagedBlob(digest, size, staged)


def _write_hashed(handle: IO[bytes], chunks: Iterable[bytes]) -> tuple[str, int]:
    """Write ``chunks`` to ``handle``, fsync and close it, and return ``(sha256 hex, size)``."""
    hasher = hashlib.sha256()
    size = 0
    with handle:
        try:
            for chunk in chunks:
                hasher.update(chunk)
                handle.write(chunk)
                size += len(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            raise store_io_error("write the staging file", handle.name, exc) from exc
    return hasher.hexdigest(), size


def _read_chunks(stream: BinaryIO, path: Path) -> Iterator[bytes]:
    while True:
        try:
            chunk = stream.read(CHUNK_SIZE)
        except OSError as exc:
            raise store_io_error("read", path, exc) from exc
        if not chunk:
            return
        yield chunk


def _read_all(stream: BinaryIO, path: Path) -> bytes:
    try:
        return stream.read()
    except OSError as exc:
        raise store_io_error("read", path, exc) from exc


def _sorted_entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise store_io_error("list the folder", folder, exc) from exc


def _corrupt_blob_error(digest: str, actual: str, path: Path) -> CorruptBlobError:
    return CorruptBlobError(
        f"Blob '{path}' is corrupt: its bytes hash to {actual}, expected {digest}. "
        "Run verify to find every corrupt blob, then add the affected files again."
    )
