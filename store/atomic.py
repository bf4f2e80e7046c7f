"""Atomic file writes: stage in a temporary file, fsync, then os.replace into place.

Readers in other processes see either the old file or the complete new one, never a partial
write, because os.replace is atomic within one file system. Staging files therefore live in
the store's own tmp/ folder, which is on the same file system as the targets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from store.errors import store_io_error

logger = logging.getLogger(__name__)

__all__ = ["fsync_directory", "write_atomic"]


def fsync_directory(path: Path) -> None:
    """Flush a folder's entries to disk so that a completed rename survives a crash.

    This is best effort: Windows cannot open folders, and some file systems reject fsync on
    them, so those errors are logged at DEBUG level and ignored.
    """
    if os.name == "nt":
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        logger.debug("Cannot open folder %s to fsync it: %s", path, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        logger.debug("Cannot fsync folder %s: %s", path, exc)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, tmp_dir: Path, *, mode: int | None = None) -> None:
    """Write ``data`` to ``target`` atomically, replacing any existing file.

    The bytes go to a temporary file in ``tmp_dir`` (which must be on the target's file
    system), are fsynced, optionally get permission bits ``mode``, and are renamed over
    ``target``. Missing parent folders of ``target`` are created.

    Raises StoreIOError when the disk reports an error; the temporary file is removed then.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(
            dir=tmp_dir, prefix="write-", suffix=".tmp", delete=False
        )
    except OSError as exc:
        raise store_io_error("create a staging file for", target, exc) from exc

    staged = Path(handle.name)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(staged, mode)
        os.replace(staged, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise store_io_error("write", target, exc) from exc

    fsync_directory(target.parent)
