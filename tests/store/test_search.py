"""Tests of annotations and of listing with full-text search and the created-after filter."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from store import InvalidAnnotationError, Store
from store.refs import NamedRef


def add(store: Store, n: int, ref: str | None = None, **annotations: str) -> str:
    return store.add_artifact(
        "adapter", [], {"n": n, "base_model": f"org/base-{n % 2}"},
        ref=NamedRef(*ref.split(":")) if ref else None, annotations=annotations or None,
    )


def ids(store: Store, **filters: object) -> list[str]:
    return [row["id"] for row in store.list_artifacts(**filters)]


def test_search_matches_names_tags_and_annotations(store: Store) -> None:
    task = add(store, 1, "org/task-lora:v2", description="Summarises Tigrinya news")
    style = add(store, 2, "style:latest", team="speech")
    add(store, 3)

    assert ids(store, search="task") == [task]
    assert ids(store, search="tigr") == [task]
    assert ids(store, search="v2") == [task]
    assert ids(store, search="org lora") == [task]
    assert ids(store, search="SPEECH") == [style]
    assert ids(store, search="base 0") == [style]
    assert ids(store, search="task speech") == []


def test_search_treats_operators_as_words(store: Store) -> None:
    add(store, 1, "not-this:latest")

    assert len(ids(store, search='NOT "this')) == 1
    assert ids(store, search="task OR x*") == []
    assert ids(store, search="---") == []


def test_search_follows_reference_changes(store: Store) -> None:
    artifact_id = add(store, 1, "first:latest")
    store.set_ref("renamed", "latest", artifact_id)
    store.remove_ref("first", "latest")

    assert ids(store, search="first") == []
    assert ids(store, search="renamed") == [artifact_id]


def test_search_combines_with_filters(store: Store) -> None:
    even = add(store, 2, "adapter-even:latest")
    add(store, 3, "adapter-odd:latest")

    assert ids(store, search="adapter", base_model="org/base-0") == [even]


def test_created_after_filter(store: Store) -> None:
    artifact_id = add(store, 1)
    created = datetime.fromisoformat(store.list_artifacts()[0]["created"])

    assert ids(store, created_after=created - timedelta(seconds=1)) == [artifact_id]
    assert ids(store, created_after=created) == []
    # A naive time counts as UTC.
    naive = (created - timedelta(seconds=1)).astimezone(timezone.utc).replace(tzinfo=None)
    assert ids(store, created_after=naive) == [artifact_id]


def test_annotations_keep_the_id(store: Store) -> None:
    artifact_id = add(store, 1, "task:latest", description="first words")

    merged = store.annotate(artifact_id, {"owner": "ml", "description": None})
    again = add(store, 1, None, owner="data")

    assert merged == {"owner": "ml"}
    assert again == artifact_id
    assert store.annotations(artifact_id) == {"owner": "data"}
    assert store.list_artifacts()[0]["annotations"] == {"owner": "data"}
    assert ids(store, search="first") == []


def test_invalid_annotations_rejected(store: Store) -> None:
    artifact_id = add(store, 1)

    with pytest.raises(InvalidAnnotationError) as caught:
        store.annotate(artifact_id, {"1st": "x", "ok": "y" * 5000})

    assert str(caught.value) == (
        "Invalid annotations: key '1st' is invalid; the value of 'ok' has 5000 characters, more "
        "than the maximum of 4096. A key starts with a letter, contains only letters, digits "
        "and the characters _ . -, and has at most 64 characters, such as 'description'."
    )
    assert store.annotations(artifact_id) == {}


def test_damaged_annotation_file_reported(store: Store) -> None:
    artifact_id = add(store, 1, description="fine")
    path = store.annotation_files.path(artifact_id)
    path.write_text("[1, 2]")

    report = store.verify()

    assert report.problems == (
        (f"Annotation file '{path}' does not contain a JSON object of string keys and string "
         "values. Delete the file, then annotate the artifact again."),
    )


def test_reindex_restores_annotations_and_search(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Store(home) as store:
        artifact_id = add(store, 1, "task:v1", description="Tigrinya")
        listed = store.list_artifacts()

    for name in ("index.db", "index.db-wal", "index.db-shm"):
        (home / name).unlink(missing_ok=True)

    with Store(home) as store:
        report = store.reindex()
        assert store.list_artifacts() == listed
        assert ids(store, search="tigrinya") == [artifact_id]
    assert report.problems == ()
