"""Tests of the Store facade: layout, adding artifacts, references, resolution and listing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from store import (
    AmbiguousReferenceError,
    ArtifactNotFoundError,
    BlobNotFoundError,
    FileEntry,
    Manifest,
    ManifestError,
    ReferenceNotFoundError,
    Removal,
    RefEntry,
    Store,
    StoreNotFoundError,
    StoreVersionError,
    home_default,
)

SourceFile = Callable[[str, bytes], Path]

# Manifest(kind="adapter", metadata={"n": n}) for these two n have ids that share their
# first 8 hex digits. They were found by hashing n = 0, 1, 2, ... until two prefixes matched.
COLLIDING_N = (15516, 46451)
COLLIDING_PREFIX = "a27476de"


def blob_files(store: Store) -> list[Path]:
    return sorted(path for path in store.blobs.root.rglob("*") if path.is_file())


def add_adapter(store: Store, source_file: SourceFile, data: bytes, **metadata: object) -> str:
    config = source_file("adapter_config.json", b'{"r": 8}')
    weights = source_file("adapter_model.safetensors", data)
    return store.add_artifact(
        "adapter",
        [("adapter_config.json", config), ("adapter_model.safetensors", weights)],
        dict(metadata),
    )


def test_open_creates_layout(tmp_path: Path) -> None:
    home = tmp_path / "home"

    with Store.open(home) as store:
        assert store.home == home

    assert (home / "VERSION").read_text() == "1\n"
    assert (home / "blobs" / "sha256").is_dir()
    assert (home / "tmp").is_dir()
    assert (home / "refs").is_dir()
    assert (home / "index.db").is_file()


def test_open_without_create(tmp_path: Path) -> None:
    home = tmp_path / "missing"

    with pytest.raises(StoreNotFoundError) as caught:
        Store.open(home, create=False)

    assert str(caught.value) == (
        f"No store at '{home}': '{home / 'VERSION'}' is missing. Open it with create=True to "
        "create a store there, or set ADAPTERHUB_HOME to an existing store."
    )
    assert not home.exists()


def test_unknown_format_version_rejected(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store(home).close()
    (home / "VERSION").write_text("99\n")

    with pytest.raises(StoreVersionError) as caught:
        Store(home)

    assert str(caught.value) == (
        f"Unsupported store format version '99' in '{home / 'VERSION'}'. This code supports "
        "store format versions: 1. Upgrade adapterhub to open this store, or set "
        "ADAPTERHUB_HOME to another store."
    )
    assert caught.value.found == "99"
    assert caught.value.supported == (1,)


def test_home_default_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.delenv("ADAPTERHUB_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert home_default() == tmp_path / "user" / ".local" / "share" / "adapterhub"

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert home_default() == tmp_path / "data" / "adapterhub"

    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "hub"))
    assert home_default() == tmp_path / "hub"


def test_add_twice_stores_nothing_new(store: Store, source_file: SourceFile) -> None:
    first = add_adapter(store, source_file, b"weights", rank=8)
    files_after_first = blob_files(store)
    created = store.list_artifacts()[0]["created"]

    second = add_adapter(store, source_file, b"weights", rank=8)

    assert second == first
    assert blob_files(store) == files_after_first
    assert len(files_after_first) == 3
    assert [row["created"] for row in store.list_artifacts()] == [created]
    assert list(store.blobs.tmp_dir.iterdir()) == []


def test_artifact_id_is_manifest_digest(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")

    manifest = store.manifest(artifact_id)

    assert manifest.digest() == artifact_id
    assert [entry.path for entry in manifest.files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert manifest.files[1].sha256 == hashlib.sha256(b"weights").hexdigest()
    assert store.blobs.path(artifact_id).read_bytes() == manifest.to_bytes()


def test_invalid_path_stores_no_blob(store: Store, source_file: SourceFile) -> None:
    source = source_file("w.bin", b"weights")

    with pytest.raises(ManifestError) as caught:
        store.add_artifact("adapter", [("../w.bin", source)], {})

    assert str(caught.value) == (
        "Invalid manifest:\n  - file path '../w.bin' contains a '..' segment\n"
        "Fix the listed values and build the manifest again. Use relative paths with '/' "
        "between folders, such as 'adapter/config.json'."
    )
    assert blob_files(store) == []


def test_add_manifest_with_missing_blob(store: Store) -> None:
    digest = hashlib.sha256(b"never stored").hexdigest()
    manifest = Manifest("adapter", (FileEntry("w.bin", digest, 12),))

    with pytest.raises(BlobNotFoundError) as caught:
        store.add_manifest(manifest)

    assert str(caught.value) == (
        f"Cannot add the adapter artifact: no blob for the files 'w.bin' ({digest}). "
        "Store each file with put_file before adding the manifest."
    )


def test_add_manifest_with_wrong_size(store: Store) -> None:
    digest = store.put_bytes(b"12345")
    manifest = Manifest("adapter", (FileEntry("w.bin", digest, 4),))

    with pytest.raises(ManifestError) as caught:
        store.add_manifest(manifest)

    assert str(caught.value) == (
        "Invalid manifest: 'w.bin' is listed with 4 bytes, but its blob has 5. Use the size "
        "that put_file returned."
    )


def test_add_with_missing_parent(store: Store) -> None:
    parent = "f" * 64

    with pytest.raises(ArtifactNotFoundError) as caught:
        store.add_artifact("stack", [], {}, parents=[parent])

    assert str(caught.value) == (
        f"Cannot add the stack artifact: its parents {parent} are not in the store. "
        "Add the parent artifacts first."
    )


def test_add_manifest_from_stored_blobs(store: Store, source_file: SourceFile) -> None:
    parent = add_adapter(store, source_file, b"parent weights")
    digest, size = store.put_file(source_file("merged.bin", b"merged"))
    manifest = Manifest("adapter", (FileEntry("merged.bin", digest, size),), {}, (parent,))

    artifact_id = store.add_manifest(manifest)

    assert artifact_id == manifest.digest()
    rows = {row["id"]: row for row in store.list_artifacts()}
    assert rows[artifact_id]["parents"] == [parent]
    assert rows[artifact_id]["bytes"] == 6


def test_manifest_of_unknown_id(store: Store) -> None:
    unknown = "e" * 64

    with pytest.raises(ArtifactNotFoundError) as caught:
        store.manifest(unknown)

    assert str(caught.value) == (
        f"Artifact {unknown} not found: the store has no manifest blob with that id. "
        "List the artifacts to find a valid id."
    )


def test_manifest_of_file_blob(store: Store) -> None:
    digest = store.put_bytes(b"just a file")

    with pytest.raises(ArtifactNotFoundError) as caught:
        store.manifest(digest)

    assert str(caught.value) == (
        f"Artifact {digest} not found: the blob with that id is a stored file, not an artifact "
        "manifest. Pass the id of the artifact that contains the file."
    )


def test_resolve_name_tag_and_prefix(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.set_ref("org/task", "latest", artifact_id)
    store.set_ref("org/task", "v1", artifact_id)

    assert store.resolve("org/task") == artifact_id
    assert store.resolve("org/task:v1") == artifact_id
    assert store.resolve(f"sha256:{artifact_id[:8]}") == artifact_id
    assert store.resolve(f"sha256:{artifact_id[:8].upper()}") == artifact_id
    assert store.resolve(artifact_id) == artifact_id


def test_unknown_name_lists_close_matches(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.set_ref("task", "v1", artifact_id)
    store.set_ref("style", "latest", artifact_id)

    with pytest.raises(ReferenceNotFoundError) as caught:
        store.resolve("task")

    assert str(caught.value) == (
        f"Reference 'task:latest' not found in the store '{store.home}'. "
        "Close matches: task:v1."
    )
    assert caught.value.close_matches == ("task:v1",)

    with pytest.raises(ReferenceNotFoundError) as caught:
        store.resolve("styel")

    assert str(caught.value) == (
        f"Reference 'styel:latest' not found in the store '{store.home}'. "
        "Close matches: style:latest."
    )


def test_unknown_name_without_matches(store: Store) -> None:
    with pytest.raises(ReferenceNotFoundError) as caught:
        store.resolve("nothing:here")

    assert str(caught.value) == (
        f"Reference 'nothing:here' not found in the store '{store.home}'. "
        "List the references to see the valid names."
    )
    assert caught.value.close_matches == ()


def test_unknown_prefix(store: Store) -> None:
    with pytest.raises(ReferenceNotFoundError) as caught:
        store.resolve("sha256:0123abcd")

    assert str(caught.value) == (
        f"No artifact id starts with '0123abcd' in the store '{store.home}'. "
        "List the artifacts to find the right id."
    )


def test_colliding_ids_share_prefix() -> None:
    ids = [Manifest("adapter", metadata={"n": n}).digest() for n in COLLIDING_N]

    assert ids[0] != ids[1]
    assert ids[0][:8] == ids[1][:8] == COLLIDING_PREFIX


def test_ambiguous_prefix_lists_candidates(store: Store) -> None:
    first, second = sorted(
        store.add_artifact("adapter", [], {"n": n}) for n in COLLIDING_N
    )
    store.set_ref("task", "latest", first)
    store.set_ref("task", "v1", first)

    with pytest.raises(AmbiguousReferenceError) as caught:
        store.resolve(f"sha256:{COLLIDING_PREFIX}")

    assert str(caught.value) == (
        f"Reference 'sha256:{COLLIDING_PREFIX}' is ambiguous: 2 artifacts have ids starting "
        f"with '{COLLIDING_PREFIX}':\n"
        f"  {first} (task:latest, task:v1)\n"
        f"  {second} (no references)\n"
        "Use more hex digits of the id."
    )
    assert caught.value.candidates == (first, second)
    assert store.resolve(first) == first


def test_prefix_resolves_without_index_row(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.remove(artifact_id)
    assert store.list_artifacts() == []

    assert store.resolve(f"sha256:{artifact_id[:10]}") == artifact_id


def test_set_ref_to_unknown_artifact(store: Store) -> None:
    unknown = "c" * 64

    with pytest.raises(ArtifactNotFoundError):
        store.set_ref("task", "latest", unknown)

    assert store.refs() == []


def test_set_ref_reindexes_removed_artifact(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.remove(artifact_id)

    store.set_ref("task", "latest", artifact_id)

    assert [row["id"] for row in store.list_artifacts()] == [artifact_id]
    assert store.list_artifacts()[0]["refs"] == ["task:latest"]


def test_remove_ref_keeps_bytes(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    store.set_ref("task", "latest", artifact_id)
    files_before = blob_files(store)

    removal = store.remove("task")

    assert removal == Removal(artifact_id, ("task:latest",), removed_from_index=False)
    assert blob_files(store) == files_before
    assert store.refs() == []
    assert [row["id"] for row in store.list_artifacts()] == [artifact_id]
    assert store.list_artifacts()[0]["refs"] == []
    assert not (store.home / "refs" / "task").exists()


def test_remove_missing_ref(store: Store) -> None:
    with pytest.raises(ReferenceNotFoundError) as caught:
        store.remove_ref("task", "latest")

    assert str(caught.value) == (
        f"Reference 'task:latest' not found in the store '{store.home}'. "
        "List the references to see the valid names."
    )


def test_remove_by_id_unindexes_and_keeps_bytes(store: Store, source_file: SourceFile) -> None:
    artifact_id = add_adapter(store, source_file, b"weights")
    other = add_adapter(store, source_file, b"other weights")
    store.set_ref("task", "latest", artifact_id)
    store.set_ref("task", "v1", artifact_id)
    store.set_ref("keep", "latest", other)
    files_before = blob_files(store)

    removal = store.remove(f"sha256:{artifact_id[:12]}")

    assert removal == Removal(artifact_id, ("task:latest", "task:v1"), removed_from_index=True)
    assert blob_files(store) == files_before
    assert store.refs() == [RefEntry("keep", "latest", other)]
    assert [row["id"] for row in store.list_artifacts()] == [other]


def test_refs_filtered_by_artifact(store: Store, source_file: SourceFile) -> None:
    first = add_adapter(store, source_file, b"one")
    second = add_adapter(store, source_file, b"two")
    store.set_ref("a", "latest", first)
    store.set_ref("b", "latest", second)

    assert store.refs(second) == [RefEntry("b", "latest", second)]
    assert [str(entry) for entry in store.refs()] == ["a:latest", "b:latest"]


def test_set_ref_moves_reference(store: Store, source_file: SourceFile) -> None:
    first = add_adapter(store, source_file, b"one")
    second = add_adapter(store, source_file, b"two")
    store.set_ref("task", "latest", first)

    store.set_ref("task", "latest", second)

    assert store.resolve("task") == second
    rows = {row["id"]: row["refs"] for row in store.list_artifacts()}
    assert rows == {first: [], second: ["task:latest"]}


def test_open_uses_default_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "default"))

    with Store.open() as store:
        assert store.home == tmp_path / "default"

    assert (tmp_path / "default" / "VERSION").is_file()


def test_store_imports_neither_torch_nor_adapterhub() -> None:
    code = (
        "import sys, store\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'adapterhub')))"
    )
    project_root = Path(__file__).resolve().parents[2]

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=project_root
    )

    assert result.stdout == "[]\n"


def test_file_blob_is_no_parent(store: Store) -> None:
    digest = store.put_bytes(b"a file, not a manifest")

    with pytest.raises(ArtifactNotFoundError) as caught:
        store.add_artifact("stack", [], {}, parents=[digest])

    assert str(caught.value) == (
        f"Cannot add the stack artifact: its parents {digest} are not in the store. "
        "Add the parent artifacts first."
    )
