"""Tests of several processes writing to one store at the same time."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from store import Store

PROCESSES = 4
ARTIFACTS_PER_PROCESS = 12
DISTINCT_CONTENTS = 5


def add_artifacts(home: str, worker: int) -> None:
    """Add artifacts whose contents overlap with the other workers', and tag each one."""
    with Store(home) as store:
        for number in range(ARTIFACTS_PER_PROCESS):
            content = number % DISTINCT_CONTENTS
            source = Path(home).parent / f"source-{worker}-{number}.bin"
            source.write_bytes(f"weights {content}".encode() * 1000)
            artifact_id = store.add_artifact("adapter", [("w.bin", source)], {"content": content})
            store.set_ref(f"worker{worker}", f"v{number}", artifact_id)
        store.gc()


def test_processes_share_one_store(tmp_path: Path) -> None:
    # No store exists yet, so the workers also race to create the layout and index.db.
    home = tmp_path / "home"
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=add_artifacts, args=(str(home), worker))
        for worker in range(PROCESSES)
    ]

    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)

    assert [process.exitcode for process in workers] == [0] * PROCESSES
    with Store(home) as store:
        rows = store.list_artifacts()
        assert len(rows) == DISTINCT_CONTENTS
        assert sum(len(row["refs"]) for row in rows) == PROCESSES * ARTIFACTS_PER_PROCESS
        assert len(list(store.blobs.iter_digests())) == 2 * DISTINCT_CONTENTS
        assert store.verify().ok
        assert list(store.blobs.tmp_dir.iterdir()) == []
