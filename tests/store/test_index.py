"""Tests of the SQLite index: schema migrations, promoted columns and list filters."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from store import IndexDatabaseError, Store
from store.index import MIGRATIONS, Index


def add_metadata_artifact(store: Store, **metadata: object) -> str:
    return store.add_artifact("adapter", [], dict(metadata))


def test_migrations_recorded_by_name(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.db")
    index.close()
    Index(tmp_path / "index.db").close()

    connection = sqlite3.connect(tmp_path / "index.db")
    rows = connection.execute(
        "SELECT migration_set, name FROM _sqlite_migrations ORDER BY id"
    ).fetchall()
    journal_mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    connection.close()

    assert rows == [("store.index", migration.__name__) for migration in MIGRATIONS]
    assert journal_mode == "wal"


def test_damaged_index_file(tmp_path: Path) -> None:
    path = tmp_path / "index.db"
    path.write_bytes(b"this is not a database" * 100)

    with pytest.raises(IndexDatabaseError) as caught:
        Index(path)

    assert str(caught.value) == (
        f"Could not open the index: SQLite failed on '{path}' with 'file is not a database'. "
        "The file is damaged. Delete it and run reindex, which rebuilds it from the blobs and "
        "ref files."
    )


def test_promoted_columns_filled_from_metadata(store: Store) -> None:
    artifact_id = add_metadata_artifact(
        store,
        base_model="tiny/llama",
        peft_type="LORA",
        task_type="CAUSAL_LM",
        rank=16,
        alpha=32,
        target_modules=["q_proj", "v_proj"],
        parameters=12345,
        dtype="float16",
        source="hf://someone/lora",
        description="A test adapter",
        extra={"nested": [1, 2]},
    )

    (row,) = store.list_artifacts()

    assert row["id"] == artifact_id
    assert row["kind"] == "adapter"
    assert row["base_model"] == "tiny/llama"
    assert row["peft_type"] == "LORA"
    assert row["task_type"] == "CAUSAL_LM"
    assert row["rank"] == 16
    assert row["alpha"] == 32.0
    assert isinstance(row["alpha"], float)
    assert row["target_modules"] == ["q_proj", "v_proj"]
    assert row["parameters"] == 12345
    assert row["dtype"] == "float16"
    assert row["source"] == "hf://someone/lora"
    assert row["description"] == "A test adapter"
    assert row["metadata"]["extra"] == {"nested": [1, 2]}
    assert row["bytes"] == 0
    assert row["refs"] == []
    assert row["parents"] == []


def test_mistyped_metadata_leaves_column_empty(store: Store) -> None:
    add_metadata_artifact(store, rank="sixteen", alpha=True, target_modules={"q": 1})

    (row,) = store.list_artifacts()

    assert row["rank"] is None
    assert row["alpha"] is None
    assert row["target_modules"] is None
    assert row["metadata"] == {"rank": "sixteen", "alpha": True, "target_modules": {"q": 1}}


def test_list_filters(store: Store) -> None:
    small = add_metadata_artifact(
        store, base_model="llama", peft_type="LORA", rank=4, target_modules=["q_proj"]
    )
    large = add_metadata_artifact(
        store, base_model="llama", peft_type="LORA", rank=64, target_modules=["q_proj", "v_proj"]
    )
    other = add_metadata_artifact(
        store, base_model="mistral", peft_type="IA3", target_modules="q.*"
    )
    stack = store.add_artifact("stack", [], {"base_model": "llama"}, parents=[small, large])
    store.set_ref("team/small", "v1", small)
    store.set_ref("team/large", "v1", large)
    store.set_ref("team/large", "latest", large)

    def ids(**filters: object) -> set[str]:
        return {row["id"] for row in store.list_artifacts(**filters)}

    assert ids() == {small, large, other, stack}
    assert ids(kind="stack") == {stack}
    assert ids(base_model="llama") == {small, large, stack}
    assert ids(peft_type="IA3") == {other}
    assert ids(min_rank=8) == {large}
    assert ids(max_rank=8) == {small}
    assert ids(min_rank=4, max_rank=64) == {small, large}
    assert ids(target_module="v_proj") == {large}
    assert ids(target_module="q_proj") == {small, large}
    assert ids(tag="v1") == {small, large}
    assert ids(tag="latest") == {large}
    assert ids(name="team/small") == {small}
    assert ids(name="team/small", tag="latest") == set()
    assert ids(base_model="llama", kind="adapter", min_rank=8) == {large}


def test_list_includes_refs_and_parents(store: Store) -> None:
    first = add_metadata_artifact(store, n=1)
    second = add_metadata_artifact(store, n=2)
    stack = store.add_artifact("stack", [], {}, parents=[second, first])
    store.set_ref("stack", "v2", stack)
    store.set_ref("stack", "latest", stack)

    rows = {row["id"]: row for row in store.list_artifacts()}

    assert rows[stack]["parents"] == [second, first]
    assert rows[stack]["refs"] == ["stack:latest", "stack:v2"]
    assert rows[first]["refs"] == []


def test_list_ordered_by_created_then_id(store: Store) -> None:
    ids = [add_metadata_artifact(store, n=n) for n in range(6)]

    rows = store.list_artifacts()

    keys = [(row["created"], row["id"]) for row in rows]
    assert keys == sorted(keys)
    assert {row["id"] for row in rows} == set(ids)


def test_version_one_index_gains_search(tmp_path: Path) -> None:
    # An index written before annotations and search existed has only create_tables applied.
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

    from store.index import create_tables

    path = tmp_path / "index.db"
    old = Migrations("store.index")
    old()(create_tables)
    db = Database(path)
    old.apply(db)
    artifact_id = "ab" * 32
    db["artifacts"].insert(
        {"id": artifact_id, "kind": "adapter", "created": "2025-01-01T00:00:00.000000+00:00",
         "bytes": 0, "base_model": "org/base", "metadata": "{}"}
    )
    db["refs"].insert({"name": "team/task", "tag": "latest", "artifact_id": artifact_id})
    db.close()

    index = Index(path)
    found = index.list_artifacts(search="task")
    index.close()

    assert [row["id"] for row in found] == [artifact_id]
    assert found[0]["annotations"] == {}
    assert found[0]["refs"] == ["team/task:latest"]


def test_migrated_index_opens_without_sqlite_utils(tmp_path: Path) -> None:
    Index(tmp_path / "index.db").close()
    script = (
        "import sys\n"
        "from store.index import Index\n"
        f"Index({str(tmp_path / 'index.db')!r}).list_artifacts(search='x')\n"
        "assert 'sqlite_utils' not in sys.modules, 'sqlite_utils was imported'\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
