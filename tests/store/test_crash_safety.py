"""Tests of failed and interrupted writes: a full disk, a file size limit, an index that
cannot be written, and the leftovers of processes that died."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from store import IndexDatabaseError, Store, StoreIOError
from store.locking import LOCKS_AVAILABLE
from store.refs import NamedRef

TWO_HOURS_AGO_OFFSET = 7200


def snapshot(home: Path) -> dict[str, bytes]:
    """Every file under the store with its bytes, except SQLite's shared-memory file.

    The ``-shm`` file is rewritten whenever a connection opens the database and contains no
    data of the store.
    """
    return {
        str(path.relative_to(home)): path.read_bytes()
        for path in sorted(home.rglob("*"))
        if path.is_file() and not path.name.endswith("-shm")
    }


def dead_pid() -> int:
    """Return the id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Mount a 2 MiB tmpfs, or skip when this machine does not allow it (it needs root)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True, text=True, check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_full_disk_leaves_store_unchanged(small_disk: Path, tmp_path: Path) -> None:
    home = small_disk / "store"
    small = tmp_path / "small.bin"
    small.write_bytes(b"fits" * 100)
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(3 * 1024 * 1024))
    with Store(home) as store:
        store.add_artifact("adapter", [("w.bin", small)], ref=NamedRef("small"))
    before = snapshot(home)

    with Store(home) as store:
        with pytest.raises(StoreIOError) as caught:
            store.add_artifact(
                "adapter", [("config.json", small), ("w.bin", large)], ref=NamedRef("large")
            )

    assert re.fullmatch(
        rf"Could not write the staging file '{re.escape(str(home / 'tmp'))}/blob-{os.getpid()}-"
        r"\w+\.tmp': No space left on device\. Free space on that file system, then retry\.",
        str(caught.value),
    )
    assert snapshot(home) == before


def test_file_size_limit_leaves_store_unchanged(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes writes past 1 MiB fail with EFBIG, as a full disk fails with ENOSPC,
    # on any machine. Python ignores SIGXFSZ, so the write returns the error.
    home = tmp_path / "store"
    small = tmp_path / "small.bin"
    small.write_bytes(b"fits")
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(2 * 1024 * 1024))
    with Store(home) as store:
        store.add_artifact("adapter", [("w.bin", small)], ref=NamedRef("small"))
    before = snapshot(home)
    script = textwrap.dedent(f"""
        import resource
        from store import Store, StoreError
        from store.refs import NamedRef
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, resource.RLIM_INFINITY))
        with Store({str(home)!r}) as store:
            try:
                store.add_artifact("adapter", [("a.bin", {str(small)!r}), ("b.bin", {str(large)!r})],
                                   ref=NamedRef("large"))
            except StoreError as exc:
                print(exc)
    """)

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"Could not write the staging file '{re.escape(str(home / 'tmp'))}/blob-\d+-\w+\.tmp': "
        r"File too large\. The file exceeds the largest file size allowed for this process or "
        r"file system \(see ulimit -f\); raise the limit, then retry\.\n",
        result.stdout,
    )
    assert snapshot(home) == before


def test_failed_index_write_rolls_back(tmp_path: Path) -> None:
    home = tmp_path / "store"
    first = tmp_path / "first.bin"
    first.write_bytes(b"first")
    second = tmp_path / "second.bin"
    second.write_bytes(b"second")
    with Store(home) as store:
        old_id = store.add_artifact("adapter", [("w.bin", first)], ref=NamedRef("task"))
    files_before = {name: data for name, data in snapshot(home).items() if "index.db" not in name}

    # Another connection holds the write lock, and this store waits only 50 ms for it.
    blocker = sqlite3.connect(home / "index.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with Store(home) as store:
            store.index.conn.execute("PRAGMA busy_timeout = 50")
            with pytest.raises(IndexDatabaseError) as caught:
                store.add_artifact(
                    "adapter", [("w.bin", second)], {"n": 2}, ref=NamedRef("task"),
                    annotations={"description": "never"},
                )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()

    assert str(caught.value).startswith("Could not index artifact ")
    assert str(caught.value).endswith(
        f"SQLite failed on '{home / 'index.db'}' with 'database is locked'. Another process "
        "held the database lock for more than 30 s. Retry when the other store operation has "
        "finished."
    )
    files_after = {name: data for name, data in snapshot(home).items() if "index.db" not in name}
    assert files_after == files_before
    with Store(home) as store:
        assert store.resolve("task") == old_id
        assert [row["id"] for row in store.list_artifacts()] == [old_id]
        assert store.verify().ok


@pytest.mark.skipif(not LOCKS_AVAILABLE, reason="process ids are checked on POSIX only")
def test_gc_deletes_leftovers_of_dead_writers(tmp_path: Path) -> None:
    with Store(tmp_path / "store") as store:
        tmp_dir = store.blobs.tmp_dir
        dead = tmp_dir / f"blob-{dead_pid()}-abc.tmp"
        alive = tmp_dir / f"write-{os.getpid()}-abc.tmp"
        unnamed = tmp_dir / "editor-backup.tmp"
        old_folder = tmp_dir / "pull-old"
        new_folder = tmp_dir / "pull-new"
        for path in (dead, alive, unnamed):
            path.write_bytes(b"left over")
        for folder in (old_folder, new_folder):
            folder.mkdir()
            (folder / "adapter_config.json").write_text("{}")
        two_hours_ago = os.stat(unnamed).st_mtime - TWO_HOURS_AGO_OFFSET
        os.utime(old_folder, (two_hours_ago, two_hours_ago))

        report = store.gc()

    assert report.deleted_tmp_files == 2
    assert {path.name for path in tmp_dir.iterdir()} == {unnamed.name, alive.name, "pull-new"}


def test_gc_deletes_annotation_with_artifact(tmp_path: Path) -> None:
    source = tmp_path / "w.bin"
    source.write_bytes(b"weights")
    with Store(tmp_path / "store") as store:
        artifact_id = store.add_artifact(
            "adapter", [("w.bin", source)], ref=NamedRef("task"), annotations={"description": "x"}
        )
        store.remove("task")

        report = store.gc(grace=0)

        assert report.deleted_annotations == 1
        assert not store.annotation_files.path(artifact_id).exists()
        assert store.verify().ok
