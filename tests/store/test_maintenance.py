"""Tests of gc, verify and reindex on real stores."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from store import GcReport, MissingBlob, Store

SourceFile = Callable[[str, bytes], Path]

TWO_HOURS_AGO = time.time() - 7200


def add_adapter(
    store: Store, source_file: SourceFile, data: bytes, parents: tuple[str, ...] = ()
) -> str:
    weights = source_file("weights.bin", data)
    return store.add_artifact("adapter", [("weights.bin", weights)], {"size": len(data)}, parents)


def blob_set(store: Store) -> set[str]:
    return set(store.blobs.iter_digests())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_gc_deletes_unreachable_blobs(store: Store, source_file: SourceFile) -> None:
    kept = add_adapter(store, source_file, b"kept")
    dropped = add_adapter(store, source_file, b"dropped")
    store.set_ref("task", "latest", kept)
    dropped_manifest_size = len(store.manifest(dropped).to_bytes())

    report = store.gc(grace=0)

    assert report == GcReport(
        dry_run=False,
        deleted_blobs=2,
        freed_bytes=len(b"dropped") + dropped_manifest_size,
        kept_fresh_blobs=0,
        removed_artifacts=(dropped,),
        deleted_tmp_files=0,
        reachable_artifacts=1,
    )
    assert blob_set(store) == {kept, sha(b"kept")}
    assert [row["id"] for row in store.list_artifacts()] == [kept]


def test_gc_dry_run_deletes_nothing(store: Store, source_file: SourceFile) -> None:
    kept = add_adapter(store, source_file, b"kept")
    dropped = add_adapter(store, source_file, b"dropped")
    store.set_ref("task", "latest", kept)
    blobs_before = blob_set(store)

    report = store.gc(dry_run=True, grace=0)

    assert report.dry_run
    assert report.deleted_blobs == 2
    assert report.removed_artifacts == (dropped,)
    assert blob_set(store) == blobs_before
    assert {row["id"] for row in store.list_artifacts()} == {kept, dropped}


def test_gc_keeps_fresh_blobs(store: Store, source_file: SourceFile) -> None:
    unreferenced = add_adapter(store, source_file, b"new and unreferenced")
    blobs_before = blob_set(store)

    report = store.gc()

    assert report.deleted_blobs == 0
    assert report.kept_fresh_blobs == 0
    assert report.reachable_artifacts == 1
    assert blob_set(store) == blobs_before
    assert [row["id"] for row in store.list_artifacts()] == [unreferenced]


def test_gc_keeps_fresh_file_blob_without_manifest(store: Store, source_file: SourceFile) -> None:
    digest, _ = store.put_file(source_file("half-written.bin", b"artifact not added yet"))

    report = store.gc()

    assert report.kept_fresh_blobs == 1
    assert store.blobs.has(digest)
    assert store.gc(grace=0).deleted_blobs == 1
    assert not store.blobs.has(digest)


def test_gc_keeps_readded_old_blob(store: Store, source_file: SourceFile) -> None:
    # Setting the times also sets the ctime to now, so wait until the blob is older than
    # the grace period before adding it again.
    digest, _ = store.put_file(source_file("old.bin", b"old bytes"))
    os.utime(store.blobs.path(digest), (TWO_HOURS_AGO, TWO_HOURS_AGO))
    time.sleep(1.0)
    assert store.gc(dry_run=True, grace=0.5).deleted_blobs == 1

    store.put_file(source_file("old.bin", b"old bytes"))
    report = store.gc(grace=0.5)

    assert store.blobs.has(digest)
    assert report.kept_fresh_blobs == 1
    assert store.blobs.stat(digest).st_mtime == TWO_HOURS_AGO


def test_gc_keeps_lineage_parents(store: Store, source_file: SourceFile) -> None:
    parent = add_adapter(store, source_file, b"parent")
    unrelated = add_adapter(store, source_file, b"unrelated")
    child = add_adapter(store, source_file, b"child", parents=(parent,))
    store.set_ref("child", "latest", child)

    report = store.gc(grace=0)

    assert report.reachable_artifacts == 2
    assert report.removed_artifacts == (unrelated,)
    assert blob_set(store) == {child, sha(b"child"), parent, sha(b"parent")}
    assert store.manifest(child).parents == (parent,)


def test_gc_deletes_stale_tmp_files(store: Store) -> None:
    stale = store.blobs.tmp_dir / "blob-stale.tmp"
    stale.write_bytes(b"left over by a crash")
    os.utime(stale, (TWO_HOURS_AGO, TWO_HOURS_AGO))
    recent = store.blobs.tmp_dir / "blob-recent.tmp"
    recent.write_bytes(b"being written")

    assert store.gc(dry_run=True, grace=0).deleted_tmp_files == 1
    assert stale.exists()

    report = store.gc(grace=0)

    assert report.deleted_tmp_files == 1
    assert not stale.exists()
    assert recent.exists()


def test_removing_ref_then_gc(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.set_ref("task", "latest", artifact_id)
    store.remove("task")
    assert store.blobs.has(artifact_id)

    store.gc(grace=0)

    assert blob_set(store) == set()
    assert store.list_artifacts() == []


def test_verify_clean_store(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.set_ref("task", "latest", artifact_id)

    report = store.verify()

    assert report.ok
    assert report.checked_blobs == 2
    assert report.corrupt == ()
    assert report.missing == ()


def test_verify_detects_corrupt_blob(store: Store, source_file: SourceFile) -> None:
    add_adapter(store, source_file, b"weights")
    path = store.blobs.path(sha(b"weights"))
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))

    report = store.verify()

    assert not report.ok
    assert report.corrupt == (sha(b"weights"),)
    assert report.missing == ()


def test_verify_detects_missing_blobs(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    orphan_ref = add_adapter(store, source_file, b"gone")
    store.set_ref("gone", "latest", orphan_ref)
    store.blobs.delete(sha(b"weights"))
    store.blobs.delete(orphan_ref)

    report = store.verify()

    assert report.corrupt == ()
    assert report.missing == (
        MissingBlob(sha(b"weights"), f"file 'weights.bin' of artifact {artifact_id}"),
        MissingBlob(orphan_ref, "reference gone:latest"),
    )


def test_verify_reports_invalid_ref_file(store: Store) -> None:
    path = store.home / "refs" / "task" / "latest"
    path.parent.mkdir()
    path.write_text("garbage")

    report = store.verify()

    assert report.problems == (
        f"Ref file '{path}' contains 'garbage', expected a 64-digit lowercase hex artifact id "
        "and a newline. Set the reference again or delete the file.",
    )


def test_reindex_after_deleting_index(tmp_path: Path, source_file: SourceFile) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        first = store.add_artifact(
            "adapter",
            [("weights.bin", source_file("w1.bin", b"one"))],
            {"base_model": "llama", "rank": 8, "alpha": 16, "target_modules": ["q_proj"]},
        )
        second = store.add_artifact("adapter", [], {"rank": 4, "description": "é"})
        stack = store.add_artifact("stack", [], {"weights": [1.0, 0.5]}, parents=[first, second])
        store.set_ref("org/stack", "latest", stack)
        store.set_ref("first", "v1", first)
        listed = store.list_artifacts()

    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (home / name).unlink(missing_ok=True)

    with Store(home) as store:
        assert store.list_artifacts() == []
        report = store.reindex()
        assert store.list_artifacts() == listed

    assert report.artifacts == 3
    assert report.refs == 2
    assert report.problems == ()


def test_reindex_replaces_stale_rows(store: Store, source_file: SourceFile) -> None:
    kept = add_adapter(store, source_file, b"kept")
    removed = add_adapter(store, source_file, b"removed")
    store.set_ref("task", "latest", kept)
    listed = {row["id"]: row for row in store.list_artifacts()}
    store.remove(removed)

    store.reindex()

    assert {row["id"]: row for row in store.list_artifacts()} == listed


def test_reindex_reports_invalid_manifest_blob(store: Store) -> None:
    bad = (
        b'{"files":[],"kind":"adapter","metadata":{},"parents":[],'
        b'"store":"adapterhub-manifest","version":9}'
    )
    digest = store.put_bytes(bad)

    report = store.reindex()

    assert report.artifacts == 0
    assert report.problems == (
        f"Invalid manifest in blob {digest}: unsupported manifest version 9. Supported "
        "versions: 1. Upgrade adapterhub to read newer manifests.",
    )
