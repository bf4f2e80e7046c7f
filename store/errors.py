"""Exceptions raised by the store.

Every exception that the store raises on purpose derives from ``StoreError``, so a caller can
catch that one class. OSError and sqlite3.Error are translated where they happen, with the
original exception chained as ``__cause__``.

    StoreError
    ├── StoreNotFoundError        the home has no VERSION file and create=False
    ├── StoreVersionError         VERSION names a store format version that is not supported
    ├── StoreIOError              an OSError from the disk (ENOSPC, EFBIG, EACCES, EROFS, ...)
    ├── LockTimeoutError          another process held the store lock for too long
    ├── IndexDatabaseError        a sqlite3 error from index.db (locked, damaged, disk full)
    ├── InvalidDigestError        a digest that is not 64 lowercase hex digits
    ├── BlobNotFoundError         no blob with that digest
    ├── CorruptBlobError          a blob whose bytes no longer hash to its name
    ├── ManifestError             an invalid manifest (version, paths, fields, types)
    ├── ArtifactNotFoundError     no artifact manifest with that id
    ├── InvalidReferenceError     a reference, name or tag with invalid syntax
    ├── ReferenceNotFoundError    no reference or artifact matches; lists close matches
    ├── AmbiguousReferenceError   an id prefix matches several artifacts; lists them all
    ├── ReferenceConflictError    a name clashes with the folder layout of another reference
    ├── CorruptReferenceError     a ref file that does not contain an artifact id
    └── InvalidAnnotationError    an annotation key or value, or an annotation file, that is invalid

Messages name the offending value, what was expected and what to do next.
"""

from __future__ import annotations

import errno
import os

__all__ = [
    "AmbiguousReferenceError",
    "ArtifactNotFoundError",
    "BlobNotFoundError",
    "CorruptBlobError",
    "CorruptReferenceError",
    "IndexDatabaseError",
    "InvalidAnnotationError",
    "InvalidDigestError",
    "InvalidReferenceError",
    "LockTimeoutError",
    "ManifestError",
    "ReferenceConflictError",
    "ReferenceNotFoundError",
    "StoreError",
    "StoreIOError",
    "StoreNotFoundError",
    "StoreVersionError",
    "store_io_error",
]


class StoreError(Exception):
    """Root of every error that the store raises on purpose."""


class StoreNotFoundError(StoreError):
    """The store home has no VERSION file and the caller did not ask to create one."""


class StoreVersionError(StoreError):
    """The VERSION file names a store format version that this code does not support."""

    def __init__(self, message: str, *, found: str, supported: tuple[int, ...]) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class StoreIOError(StoreError):
    """An OSError from the file system, such as a full disk or a missing permission."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class LockTimeoutError(StoreError):
    """Another process held the store lock longer than the caller was willing to wait."""


class IndexDatabaseError(StoreError):
    """A sqlite3 error from index.db, such as a lock timeout or a damaged file."""


class InvalidDigestError(StoreError):
    """A digest or artifact id that is not 64 lowercase hexadecimal digits."""


class BlobNotFoundError(StoreError):
    """No blob is stored under the requested digest."""


class CorruptBlobError(StoreError):
    """A blob's bytes no longer hash to the digest that names it."""


class ManifestError(StoreError):
    """A manifest is invalid: unknown version, unsafe path, missing field or wrong type."""


class ArtifactNotFoundError(StoreError):
    """No artifact manifest is stored under the requested id."""


class InvalidReferenceError(StoreError):
    """A reference, name or tag does not follow the reference syntax."""


class ReferenceNotFoundError(StoreError):
    """No reference or artifact matches; ``close_matches`` lists similar references."""

    def __init__(self, message: str, *, reference: str, close_matches: tuple[str, ...] = ()):
        super().__init__(message)
        self.reference = reference
        self.close_matches = close_matches


class AmbiguousReferenceError(StoreError):
    """An id prefix matches several artifacts; ``candidates`` lists all their ids."""

    def __init__(self, message: str, *, reference: str, candidates: tuple[str, ...]):
        super().__init__(message)
        self.reference = reference
        self.candidates = candidates


class ReferenceConflictError(StoreError):
    """A reference name clashes with another reference's file or folder under refs/."""


class CorruptReferenceError(StoreError):
    """A ref file does not contain a 64-digit artifact id followed by a newline."""


class InvalidAnnotationError(StoreError):
    """An annotation key or value is invalid, or an annotation file is not a JSON object of strings."""


_ERRNO_ADVICE = {
    errno.ENOSPC: "Free space on that file system, then retry.",
    errno.EDQUOT: "Free space within your disk quota, then retry.",
    errno.EFBIG: (
        "The file exceeds the largest file size allowed for this process or file system "
        "(see ulimit -f); raise the limit, then retry."
    ),
    errno.EACCES: "Check that you have permission to read and write that path, then retry.",
    errno.EPERM: "Check that you have permission to read and write that path, then retry.",
    errno.EROFS: "That file system is read-only; point ADAPTERHUB_HOME at a writable store.",
    errno.ENOENT: "Check that the path exists, then retry.",
    errno.EISDIR: "A folder is in the way of that path; move it aside, then retry.",
}


def store_io_error(action: str, path: str | os.PathLike[str], exc: OSError) -> StoreIOError:
    """Build the StoreIOError for an OSError raised while doing ``action`` on ``path``.

    The caller raises the result ``from exc``. The message names the path, the operating
    system's reason and advice that depends on the errno.
    """
    reason = exc.strerror or str(exc)
    advice = _ERRNO_ADVICE.get(exc.errno, "Check the path and the disk, then retry.")
    location = os.fspath(path)
    return StoreIOError(f"Could not {action} '{location}': {reason}. {advice}", path=location)
