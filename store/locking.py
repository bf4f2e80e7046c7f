"""The store lock: writers share it, and gc and reindex hold it exclusively.

Two files under the store home carry advisory ``flock`` locks::

    locks/store   shared by every writer from its first staged blob until its artifact and
                  reference are published; exclusive for gc and reindex, which therefore never
                  see a write half done
    locks/gate    shared by a writer for the instant it takes locks/store; exclusive for gc
                  and reindex while they wait for and hold locks/store

Linux grants a new shared ``flock`` even while an exclusive request waits, so a steady stream
of writers could starve gc. The gate stops new writers from entering while gc waits for the
writers already inside to finish.

A ``flock`` belongs to the open file and ends when the process exits for any reason, SIGKILL
included, so a crashed writer never blocks gc. Waiting polls with a non-blocking ``flock`` so
that it can give up after a timeout with LockTimeoutError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from store.errors import LockTimeoutError, store_io_error

try:
    import fcntl
except ImportError:  # Windows has no flock.
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["LOCKS_AVAILABLE", "LOCK_TIMEOUT_S", "StoreLock"]

LOCKS_AVAILABLE = fcntl is not None
"""Whether this platform has ``flock``; without it the lock methods do nothing."""

LOCK_TIMEOUT_S = 600.0
"""How long a writer waits for gc, or gc for the writers, before raising LockTimeoutError."""

_FIRST_POLL_S = 0.001
_MAX_POLL_S = 0.05


class StoreLock:
    """The shared and exclusive locks of one store home, for one Store instance.

    Holding is counted per instance, so a writer may nest ``shared()`` blocks, and an
    exclusive holder may also enter ``shared()``. Use an instance from one thread only.

    NOTE: without ``fcntl`` (Windows) both locks are no-ops, so there gc relies on the grace
    period alone to spare the blobs of a concurrent writer.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._mode: str | None = None
        self._depth = 0

    @property
    def held(self) -> str | None:
        """``"shared"`` or ``"exclusive"`` while this instance holds the lock, else None."""
        return self._mode

    @contextlib.contextmanager
    def shared(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the lock shared for the block: as a writer, alongside other writers."""
        if self._mode is not None:
            with self._nested():
                yield
            return

        with self._locked("gate", "shared", timeout):
            store_fd = self._acquire("store", "shared", timeout)
        with self._holding(store_fd, "shared"):
            yield

    @contextlib.contextmanager
    def exclusive(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the lock exclusively for the block: no writer is inside meanwhile.

        Raises LockTimeoutError when the writers do not finish within ``timeout`` seconds,
        and RuntimeError when this instance holds the lock shared, which would deadlock.
        """
        if self._mode == "exclusive":
            with self._nested():
                yield
            return
        if self._mode == "shared":
            raise RuntimeError("The store lock is held shared by this Store; it cannot be upgraded")

        with self._locked("gate", "exclusive", timeout):
            store_fd = self._acquire("store", "exclusive", timeout)
            with self._holding(store_fd, "exclusive"):
                yield

    @contextlib.contextmanager
    def _nested(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    @contextlib.contextmanager
    def _holding(self, fd: int | None, mode: str) -> Iterator[None]:
        self._mode = mode
        self._depth = 1
        try:
            yield
        finally:
            self._mode = None
            self._depth = 0
            _release(fd)

    @contextlib.contextmanager
    def _locked(self, name: str, mode: str, timeout: float) -> Iterator[None]:
        fd = self._acquire(name, mode, timeout)
        try:
            yield
        finally:
            _release(fd)

    def _acquire(self, name: str, mode: str, timeout: float) -> int | None:
        """Open ``locks/<name>`` and lock it in ``mode``; return the descriptor to release."""
        if fcntl is None:
            return None
        path = self.folder / name
        fd = _open_lock_file(path)
        operation = (fcntl.LOCK_SH if mode == "shared" else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        delay = _FIRST_POLL_S
        while True:
            try:
                fcntl.flock(fd, operation)
                return fd
            except BlockingIOError:
                pass
            except OSError as exc:
                os.close(fd)
                raise store_io_error("lock", path, exc) from exc
            if time.monotonic() >= deadline:
                os.close(fd)
                raise _timeout_error(path, mode, timeout)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_POLL_S)


def _open_lock_file(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise store_io_error("open the lock file", path, exc) from exc


def _release(fd: int | None) -> None:
    # Closing the descriptor releases its flock.
    if fd is not None:
        os.close(fd)


def _timeout_error(path: Path, mode: str, timeout: float) -> LockTimeoutError:
    if mode == "shared":
        holder = "Another process is running gc or reindex on this store"
    else:
        holder = "Other processes are adding artifacts or references to this store"
    return LockTimeoutError(
        f"Timed out after {timeout:g} s waiting for the {mode} lock '{path}'. {holder}; "
        "retry when they have finished."
    )
