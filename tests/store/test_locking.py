"""Tests of the store lock: writers share it, gc waits for them, and a dead holder frees it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from store import LockTimeoutError
from store.locking import LOCKS_AVAILABLE, StoreLock

pytestmark = pytest.mark.skipif(not LOCKS_AVAILABLE, reason="this platform has no flock")

HOLD_SCRIPT = """
import sys, time
from store.locking import StoreLock
lock = StoreLock(sys.argv[1])
with getattr(lock, sys.argv[2])():
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator:
    """Return a function that starts a process holding the lock in a mode until it is killed."""
    processes: list[subprocess.Popen] = []

    def start(mode: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-c", HOLD_SCRIPT, str(tmp_path / "locks"), mode],
            stdout=subprocess.PIPE, text=True,
        )
        processes.append(process)
        assert process.stdout.readline() == "held\n"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def test_writers_share_the_lock(tmp_path: Path, holder) -> None:
    holder("shared")
    lock = StoreLock(tmp_path / "locks")

    began = time.monotonic()
    with lock.shared(timeout=5):
        assert lock.held == "shared"

    assert time.monotonic() - began < 1
    assert lock.held is None


def test_exclusive_waits_for_writer(tmp_path: Path, holder) -> None:
    holder("shared")
    lock = StoreLock(tmp_path / "locks")

    with pytest.raises(LockTimeoutError) as caught:
        with lock.exclusive(timeout=0.2):
            pass

    assert str(caught.value) == (
        f"Timed out after 0.2 s waiting for the exclusive lock '{tmp_path / 'locks' / 'store'}'. "
        "Other processes are adding artifacts or references to this store; retry when they "
        "have finished."
    )


def test_writer_waits_for_gc(tmp_path: Path, holder) -> None:
    holder("exclusive")
    lock = StoreLock(tmp_path / "locks")

    with pytest.raises(LockTimeoutError) as caught:
        with lock.shared(timeout=0.2):
            pass

    # gc holds the gate too, so a new writer stops there.
    assert str(caught.value) == (
        f"Timed out after 0.2 s waiting for the shared lock '{tmp_path / 'locks' / 'gate'}'. "
        "Another process is running gc or reindex on this store; retry when they have finished."
    )


def test_killed_holder_releases_lock(tmp_path: Path, holder) -> None:
    process = holder("shared")
    lock = StoreLock(tmp_path / "locks")

    process.kill()
    process.wait()

    with lock.exclusive(timeout=5):
        assert lock.held == "exclusive"


def test_nested_blocks_keep_lock(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path / "locks")

    with lock.shared():
        with lock.shared():
            assert lock.held == "shared"
        assert lock.held == "shared"
    with lock.exclusive():
        with lock.shared():
            assert lock.held == "exclusive"

    assert lock.held is None


def test_shared_lock_cannot_upgrade(tmp_path: Path) -> None:
    lock = StoreLock(tmp_path / "locks")

    with lock.shared():
        with pytest.raises(RuntimeError) as caught:
            with lock.exclusive():
                pass

    assert str(caught.value) == (
        "The store lock is held shared by this Store; it cannot be upgraded"
    )
