"""Atomic file writes: stage in a temporary file, fsync, then os.replace into place.

Readers in other processes see either the old file or the complete new one, never a partial
write, because os.replace is atomic within one file system. Staging files therefore live in
the store's own tmp/ folder, which is on the same file system as the targets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from store.errors import store_io_error

logger = logging.getLogger(__name__)

_STAGING_NAME = re.compile(r"[a-z]+-([0-9]+)-")

__all__ = ["StagedFile", "fsync_directory", "staging_owner", "staging_prefix", "write_atomic"]


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


def staging_prefix(kind: str) -> str:
    """Return the name prefix of a staging file: ``<kind>-<process id>-``.

    gc deletes a staging file as soon as the process named in it has exited, because that
    process can no longer rename it into place.
    """
    return f"{kind}-{os.getpid()}-"


def staging_owner(name: str) -> int | None:
    """Return the process id in a staging file name made with ``staging_prefix``, or None."""
    match = _STAGING_NAME.match(name)
    return int(match.group(1)) if match else None


def write_atomic(target: Path, data: bytes, tmp_dir: Path, *, mode: int | None = None) -> None:
    """Write ``data`` to ``target`` atomically, replacing any existing file.

    The bytes go to a temporary file in ``tmp_dir`` (which must be on the target's file
    system), are fsynced, optionally get permission bits ``mode``, and are renamed over
    ``target``. Missing parent folders of ``target`` are created.

    Raises StoreIOError when the disk reports an error; the temporary file is removed then.
    """
    staged = StagedFile.write(target, data, tmp_dir, mode=mode)
    try:
        staged.commit(keep_backup=False)
    finally:
        staged.discard()


class StagedFile:
    """Bytes written and fsynced in tmp/, ready to replace ``target`` in one rename.

    Staging does every write that needs disk space, so a full disk fails there and leaves
    ``target`` untouched. ``commit`` only renames, and with ``keep_backup`` it first
    hard-links the old target into tmp/ so that ``restore`` can put it back if a later step
    of the same operation fails. ``discard`` deletes what is left in tmp/.
    """

    def __init__(self, target: Path, staged: Path | None, tmp_dir: Path) -> None:
        self.target = Path(target)
        self.staged = staged
        self.tmp_dir = Path(tmp_dir)
        self.backup: Path | None = None
        self.committed = False

    @classmethod
    def write(
        cls, target: Path, data: bytes, tmp_dir: Path, *, mode: int | None = None
    ) -> StagedFile:
        """Stage ``data`` for ``target``; raise StoreIOError (removing the staged file) on failure."""
        try:
            handle = tempfile.NamedTemporaryFile(
                dir=tmp_dir, prefix=staging_prefix("write"), suffix=".tmp", delete=False
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
        except OSError as exc:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise store_io_error("write", target, exc) from exc
        return cls(target, staged, tmp_dir)

    @classmethod
    def removal(cls, target: Path, tmp_dir: Path) -> StagedFile:
        """Prepare the deletion of ``target``: ``commit`` deletes it, ``restore`` puts it back."""
        return cls(target, None, tmp_dir)

    def commit(self, *, keep_backup: bool = True) -> None:
        """Rename the staged file over the target, creating missing parent folders.

        For a ``removal`` this deletes the target instead, if it exists.
        """
        try:
            if keep_backup:
                self.backup = self._link_backup()
            if self.staged is None:
                with contextlib.suppress(FileNotFoundError):
                    self.target.unlink()
            else:
                self.target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staged, self.target)
        except OSError as exc:
            raise store_io_error("write", self.target, exc) from exc
        self.committed = True
        fsync_directory(self.target.parent)

    def restore(self) -> None:
        """Undo ``commit``: put the backed-up file back, or delete a target that was new.

        Failures are logged, because restoring runs while another error is raised.
        """
        if not self.committed:
            return
        try:
            if self.backup is not None:
                os.replace(self.backup, self.target)
                self.backup = None
            elif self.staged is not None:
                self.target.unlink()
        except OSError as exc:
            logger.warning("Could not restore %s after a failed write: %s", self.target, exc)
        self.committed = False

    def discard(self) -> None:
        """Delete the staged file and the backup, whichever are still in tmp/."""
        for path in (self.staged, self.backup):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()
        self.backup = None

    def _link_backup(self) -> Path | None:
        backup = self.tmp_dir / f"{staging_prefix('backup')}{secrets.token_hex(8)}.tmp"
        try:
            os.link(self.target, backup)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            # Some file systems (FAT, some network shares) have no hard links.
            try:
                shutil.copyfile(self.target, backup)
            except (FileNotFoundError, NotADirectoryError):
                return None
        return backup


def list_files(root: Path) -> list[Path]:
    """Return every file under ``root``, sorted; a missing ``root`` or subfolder is empty.

    Raises StoreIOError when a folder cannot be read.
    """
    files: list[Path] = []

    def raise_walk_error(exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            return
        raise store_io_error("list the folder", exc.filename or root, exc) from exc

    for folder, _, names in os.walk(root, onerror=raise_walk_error):
        files.extend(Path(folder) / name for name in names)
    return sorted(files)
