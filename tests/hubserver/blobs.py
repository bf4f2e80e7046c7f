"""Content-addressed file storage for the test Hub, keyed by sha256.

Layout: `<root>/objects/<first 2 hex>/<remaining 62 hex>`. Files are written to
`<root>/tmp/` first and moved in place with `os.replace`, so a reader never sees a partial object.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

CHUNK_SIZE = 64 * 1024


class DigestMismatchError(ValueError):
    """Raised when uploaded bytes do not match the sha256 or size the uploader announced."""


class BlobStore:
    """Files stored once per sha256, shared by every repo of a server."""

    def __init__(self, root: Path) -> None:
        self.objects = root / "objects"
        self.tmp = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Return where the object `sha256` is (or would be) stored."""
        return self.objects / sha256[:2] / sha256[2:]

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        return self.path(sha256).stat().st_size

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def read_prefix(self, sha256: str, length: int) -> bytes:
        """Return the first `length` bytes of an object (fewer if it is shorter)."""
        with self.path(sha256).open("rb") as file:
            return file.read(length)

    def put_bytes(self, content: bytes) -> str:
        """Store `content` and return its sha256."""
        sha256 = hashlib.sha256(content).hexdigest()
        if not self.exists(sha256):
            self._move_in(self._write_temp(content), sha256)
        return sha256

    def put_stream(self, stream: BinaryIO, length: int, expected_sha256: str) -> None:
        """Store exactly `length` bytes read from `stream`.

        Raises DigestMismatchError if the stream ends early or the bytes do not hash to
        `expected_sha256`. Nothing is stored in that case.
        """
        digest = hashlib.sha256()
        received = 0
        handle, temp_name = tempfile.mkstemp(dir=self.tmp)
        try:
            with os.fdopen(handle, "wb") as temp:
                while received < length:
                    chunk = stream.read(min(CHUNK_SIZE, length - received))
                    if not chunk:
                        break
                    digest.update(chunk)
                    temp.write(chunk)
                    received += len(chunk)
            if received != length:
                raise DigestMismatchError(f"upload ended after {received} of {length} bytes")
            if digest.hexdigest() != expected_sha256:
                raise DigestMismatchError(
                    f"uploaded bytes have sha256 {digest.hexdigest()}, expected {expected_sha256}"
                )
            self._move_in(Path(temp_name), expected_sha256)
        finally:
            Path(temp_name).unlink(missing_ok=True)

    def _write_temp(self, content: bytes) -> Path:
        handle, temp_name = tempfile.mkstemp(dir=self.tmp)
        with os.fdopen(handle, "wb") as temp:
            temp.write(content)
        return Path(temp_name)

    def _move_in(self, temp_path: Path, sha256: str) -> None:
        target = self.path(sha256)
        target.parent.mkdir(exist_ok=True)
        os.replace(temp_path, target)
