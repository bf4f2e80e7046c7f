"""The SQLite index of a store: derived data that ``reindex`` rebuilds from blobs and ref files.

Tables:

    artifacts   id (primary key), kind, created (ISO-8601 UTC), bytes (sum of file sizes), the
                promoted metadata columns of ``PROMOTED_COLUMNS``, and metadata (full JSON text)
    files       artifact_id, path, sha256, size; primary key (artifact_id, path)
    refs        name, tag, artifact_id; primary key (name, tag)
    lineage     child, parent, position; primary key (child, position)

The schema changes only through the named sqlite-utils migrations in ``MIGRATIONS``. The
database runs in WAL mode and waits up to ``BUSY_TIMEOUT_MS`` for other writers, and every
write is one short ``BEGIN IMMEDIATE`` transaction, so several processes can share it.
sqlite3 errors are translated into IndexDatabaseError here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import Table
from sqlite_utils.migrations import Migrations

from store.errors import IndexDatabaseError
from store.manifest import Manifest
from store.refs import RefEntry

logger = logging.getLogger(__name__)

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "PROMOTED_COLUMNS", "Index"]

BUSY_TIMEOUT_MS = 30_000
"""How long a statement waits for another process's lock before it fails, in milliseconds."""

PROMOTED_COLUMNS: dict[str, type] = {
    "base_model": str,
    "peft_type": str,
    "task_type": str,
    "rank": int,
    "alpha": float,
    "target_modules": list,
    "parameters": int,
    "dtype": str,
    "source": str,
    "description": str,
}
"""Metadata keys copied into artifacts columns of the same name, with the column's type.

The ``target_modules`` column contains JSON text: a list of module names, or a string (a
PEFT regex). Values of another type leave the column NULL, and the full metadata is kept in
the metadata column either way.
"""


def create_tables(db: Database) -> None:
    """Create the artifacts, files, refs and lineage tables with their indexes."""
    artifact_columns: dict[str, type] = {"id": str, "kind": str, "created": str, "bytes": int}
    for name, kind in PROMOTED_COLUMNS.items():
        artifact_columns[name] = str if kind is list else kind
    artifact_columns["metadata"] = str

    artifacts = _table(db, "artifacts").create(
        artifact_columns, pk="id", not_null=["kind", "created"]
    )
    artifacts.create_index(["created", "id"])
    artifacts.create_index(["kind"])
    artifacts.create_index(["base_model"])

    files = _table(db, "files").create(
        {"artifact_id": str, "path": str, "sha256": str, "size": int}, pk=("artifact_id", "path")
    )
    files.create_index(["sha256"])

    refs = _table(db, "refs").create(
        {"name": str, "tag": str, "artifact_id": str}, pk=("name", "tag")
    )
    refs.create_index(["artifact_id"])

    lineage = _table(db, "lineage").create(
        {"child": str, "parent": str, "position": int}, pk=("child", "position")
    )
    lineage.create_index(["parent"])


# TODO: add an FTS table over description and metadata once listing needs free-text search.
MIGRATIONS: list[Callable[[Database], None]] = [create_tables]
"""Every schema migration in the order they apply; each is recorded under its function name."""


class Index:
    """A connection to ``index.db``; not safe to share between threads.

    Every public method raises IndexDatabaseError when SQLite fails, for example when
    another process holds the write lock longer than ``BUSY_TIMEOUT_MS`` or the file is
    damaged. Deleting a damaged index.db and calling ``Store.reindex`` repairs it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._translate_errors("open the index"):
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000)
            self.db = Database(connection, execute_plugins=False)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db.enable_wal()
        self._migrate()

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self.db.close()

    def add_artifact(self, artifact_id: str, manifest: Manifest, created: str) -> bool:
        """Index one artifact with its files and lineage in one transaction.

        Returns False, changing nothing, when the artifact is already indexed, so its
        ``created`` time is kept.
        """
        with self._write("index artifact " + artifact_id):
            if self._has_artifact(artifact_id):
                return False
            self._insert_artifacts([(artifact_id, manifest, created)])
        return True

    def has_artifact(self, artifact_id: str) -> bool:
        """Return whether ``artifact_id`` has a row in the artifacts table."""
        with self._translate_errors("look up artifact " + artifact_id):
            return self._has_artifact(artifact_id)

    def artifact_ids(self) -> set[str]:
        """Return the id of every indexed artifact."""
        with self._translate_errors("list artifact ids"):
            return {row[0] for row in self.db.execute("SELECT id FROM artifacts")}

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Return the sorted ids of indexed artifacts that start with lowercase hex ``prefix``."""
        # Hex digits sort below "g", so the range covers exactly the ids with this prefix.
        with self._translate_errors("look up id prefix " + prefix):
            cursor = self.db.execute(
                "SELECT id FROM artifacts WHERE id >= ? AND id < ? ORDER BY id",
                [prefix, prefix + "g"],
            )
            return [row[0] for row in cursor]

    def set_ref(self, name: str, tag: str, artifact_id: str) -> None:
        """Record that ``name:tag`` points at ``artifact_id``, replacing any earlier row."""
        with self._write(f"set reference {name}:{tag}"):
            _table(self.db, "refs").insert(
                {"name": name, "tag": tag, "artifact_id": artifact_id}, replace=True
            )

    def remove_ref(self, name: str, tag: str) -> None:
        """Delete the row of ``name:tag`` if there is one."""
        with self._write(f"remove reference {name}:{tag}"):
            self.db.execute("DELETE FROM refs WHERE name = ? AND tag = ?", [name, tag])

    def refs_by_artifact(self) -> dict[str, list[str]]:
        """Return the sorted ``name:tag`` strings of each artifact id that has references."""
        with self._translate_errors("list references"):
            cursor = self.db.execute("SELECT artifact_id, name, tag FROM refs ORDER BY name, tag")
            refs: dict[str, list[str]] = {}
            for artifact_id, name, tag in cursor:
                refs.setdefault(artifact_id, []).append(f"{name}:{tag}")
            return refs

    def remove_artifacts(self, artifact_ids: Iterable[str]) -> None:
        """Delete the artifacts rows of ``artifact_ids`` with their files and lineage rows.

        References to them are left alone: ref files are the source of truth for those.
        """
        ids = [[artifact_id] for artifact_id in artifact_ids]
        with self._write("remove artifacts"):
            self.db.conn.executemany("DELETE FROM artifacts WHERE id = ?", ids)
            self.db.conn.executemany("DELETE FROM files WHERE artifact_id = ?", ids)
            self.db.conn.executemany("DELETE FROM lineage WHERE child = ?", ids)

    def rebuild(
        self, artifacts: Iterable[tuple[str, Manifest, str]], refs: Iterable[RefEntry]
    ) -> None:
        """Replace all rows by ``artifacts`` (id, manifest, created) and ``refs``, atomically.

        Readers in other processes see either the old or the new index, never a mixture.
        """
        with self._write("rebuild the index"):
            for table in ("artifacts", "files", "refs", "lineage"):
                self.db.execute(f"DELETE FROM {table}")
            self._insert_artifacts(list(artifacts))
            ref_rows = (
                {"name": ref.name, "tag": ref.tag, "artifact_id": ref.artifact_id} for ref in refs
            )
            _table(self.db, "refs").insert_all(ref_rows, replace=True)

    def list_artifacts(
        self,
        *,
        kind: str | None = None,
        base_model: str | None = None,
        peft_type: str | None = None,
        min_rank: int | None = None,
        max_rank: int | None = None,
        target_module: str | None = None,
        tag: str | None = None,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the artifacts that match every given filter, ordered by created time, then id.

        ``name`` and ``tag`` match artifacts with a reference of that name and/or tag (one
        reference must match both when both are given). ``target_module`` matches an exact
        module name in a target_modules list. Each dict has the artifacts columns, with
        ``metadata`` and ``target_modules`` decoded from JSON, plus ``refs`` (sorted
        ``name:tag`` strings) and ``parents`` (ids in lineage order).
        """
        conditions, parameters = _filter_conditions(
            kind=kind, base_model=base_model, peft_type=peft_type, min_rank=min_rank,
            max_rank=max_rank, target_module=target_module, tag=tag, name=name,
        )
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._translate_errors("list artifacts"):
            query = f"SELECT * FROM artifacts {where} ORDER BY created, id"
            rows = list(self.db.query(query, parameters))
            parents = self._parents_by_child()
        refs = self.refs_by_artifact()
        return [
            _decode_row(row, refs.get(row["id"], []), parents.get(row["id"], [])) for row in rows
        ]

    def _migrate(self) -> None:
        migrations = Migrations("store.index")
        for migration in MIGRATIONS:
            migrations()(migration)
        with self._write("migrate the index schema"):
            pending = [migration.name for migration in migrations.pending(self.db)]
            migrations.apply(self.db)
        if pending:
            logger.info("Applied index migrations %s to %s", ", ".join(pending), self.path)

    def _has_artifact(self, artifact_id: str) -> bool:
        cursor = self.db.execute("SELECT 1 FROM artifacts WHERE id = ?", [artifact_id])
        return cursor.fetchone() is not None

    def _insert_artifacts(self, artifacts: list[tuple[str, Manifest, str]]) -> None:
        _table(self.db, "artifacts").insert_all(
            (_artifact_row(*artifact) for artifact in artifacts), ignore=True
        )
        _table(self.db, "files").insert_all(
            (
                {"artifact_id": artifact_id, **entry.to_dict()}
                for artifact_id, manifest, _ in artifacts
                for entry in manifest.files
            ),
            ignore=True,
        )
        _table(self.db, "lineage").insert_all(
            (
                {"child": artifact_id, "parent": parent, "position": position}
                for artifact_id, manifest, _ in artifacts
                for position, parent in enumerate(manifest.parents)
            ),
            ignore=True,
        )

    def _parents_by_child(self) -> dict[str, list[str]]:
        cursor = self.db.execute("SELECT child, parent FROM lineage ORDER BY child, position")
        parents: dict[str, list[str]] = {}
        for child, parent in cursor:
            parents.setdefault(child, []).append(parent)
        return parents

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[None]:
        """Run the block in one BEGIN IMMEDIATE transaction, rolled back if the block raises.

        IMMEDIATE takes the write lock up front, so the busy timeout applies. A deferred
        transaction that reads first can fail at once with SQLITE_BUSY when it later writes.
        """
        with self._translate_errors(action):
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    @contextlib.contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _index_error(action, self.path, exc) from exc


def _table(db: Database, name: str) -> Table:
    return db.table(name)


def _artifact_row(artifact_id: str, manifest: Manifest, created: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": artifact_id,
        "kind": manifest.kind,
        "created": created,
        "bytes": manifest.size,
    }
    row.update(_promoted_values(artifact_id, manifest.metadata))
    row["metadata"] = json.dumps(manifest.metadata, sort_keys=True, ensure_ascii=False)
    return row


def _promoted_values(artifact_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column, kind in PROMOTED_COLUMNS.items():
        value = metadata.get(column)
        values[column] = _column_value(kind, value)
        if value is not None and values[column] is None:
            logger.debug(
                "Artifact %s: metadata %s=%r is not of type %s, so its column stays empty",
                artifact_id, column, value, kind.__name__,
            )
    return values


def _column_value(kind: type, value: Any) -> Any:
    if isinstance(value, bool):
        return None
    if kind is list:
        is_names = isinstance(value, list) and all(isinstance(item, str) for item in value)
        return json.dumps(value, ensure_ascii=False) if is_names or isinstance(value, str) else None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    return value if isinstance(value, kind) else None


def _filter_conditions(**filters: Any) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    parameters: list[Any] = []
    for column in ("kind", "base_model", "peft_type"):
        if filters[column] is not None:
            conditions.append(f"{column} = ?")
            parameters.append(filters[column])
    if filters["min_rank"] is not None:
        conditions.append("rank >= ?")
        parameters.append(filters["min_rank"])
    if filters["max_rank"] is not None:
        conditions.append("rank <= ?")
        parameters.append(filters["max_rank"])
    if filters["target_module"] is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM json_each(artifacts.target_modules) WHERE value = ?)"
        )
        parameters.append(filters["target_module"])

    ref_conditions = ["refs.artifact_id = artifacts.id"]
    for column in ("name", "tag"):
        if filters[column] is not None:
            ref_conditions.append(f"refs.{column} = ?")
            parameters.append(filters[column])
    if len(ref_conditions) > 1:
        conditions.append(f"EXISTS (SELECT 1 FROM refs WHERE {' AND '.join(ref_conditions)})")
    return conditions, parameters


def _decode_row(row: dict[str, Any], refs: list[str], parents: list[str]) -> dict[str, Any]:
    decoded = dict(row)
    decoded["metadata"] = json.loads(row["metadata"]) if row["metadata"] is not None else {}
    if row["target_modules"] is not None:
        decoded["target_modules"] = json.loads(row["target_modules"])
    decoded["refs"] = refs
    decoded["parents"] = parents
    return decoded


def _index_error(action: str, path: Path, exc: sqlite3.Error) -> IndexDatabaseError:
    reason = str(exc)
    if "locked" in reason or "busy" in reason:
        advice = (
            f"Another process held the database lock for more than {BUSY_TIMEOUT_MS // 1000} s. "
            "Retry when the other store operation has finished."
        )
    elif "not a database" in reason or "malformed" in reason:
        advice = (
            "The file is damaged. Delete it and run reindex, which rebuilds it from the blobs "
            "and ref files."
        )
    elif "full" in reason:
        advice = "Free space on that file system, then retry."
    else:
        advice = (
            "If this repeats, delete the file and run reindex, which rebuilds it from the blobs "
            "and ref files."
        )
    return IndexDatabaseError(
        f"Could not {action}: SQLite failed on '{path}' with '{reason}'. {advice}"
    )
