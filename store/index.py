"""The SQLite index of a store: derived data that ``reindex`` rebuilds from the store's files.

Tables:

    artifacts   id (primary key), kind, created (ISO-8601 UTC), bytes (sum of file sizes), the
                promoted metadata columns of ``PROMOTED_COLUMNS``, metadata (full JSON text)
                and annotations (JSON text of the user's annotations, or NULL)
    files       artifact_id, path, sha256, size; primary key (artifact_id, path)
    refs        name, tag, artifact_id; primary key (name, tag)
    lineage     child, parent, position; primary key (child, position)
    search      one row per artifact with the text that full-text search sees: reference
                names, tags, description, other annotations and base model
    search_fts  the FTS5 index of ``search``, kept in step by triggers

The schema changes only through the named sqlite-utils migrations in ``MIGRATIONS``. Opening
an index whose migrations are all applied reads one table and does not import sqlite-utils,
so read-only commands start fast. The database runs in WAL mode and waits up to
``BUSY_TIMEOUT_MS`` for other writers, and every write is one short ``BEGIN IMMEDIATE``
transaction, so several processes can share it. sqlite3 errors are translated into
IndexDatabaseError here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.errors import IndexDatabaseError
from store.manifest import Manifest
from store.refs import RefEntry
from store.search import create_search_tables, decode_row, list_query, refresh_search

if TYPE_CHECKING:
    from sqlite_utils import Database

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

MIGRATION_SET = "store.index"


def create_tables(db: Database) -> None:
    """Create the artifacts, files, refs and lineage tables with their indexes."""
    artifact_columns: dict[str, type] = {"id": str, "kind": str, "created": str, "bytes": int}
    for name, kind in PROMOTED_COLUMNS.items():
        artifact_columns[name] = str if kind is list else kind
    artifact_columns["metadata"] = str

    artifacts = db.table("artifacts").create(
        artifact_columns, pk="id", not_null=["kind", "created"]
    )
    artifacts.create_index(["created", "id"])
    artifacts.create_index(["kind"])
    artifacts.create_index(["base_model"])

    files = db.table("files").create(
        {"artifact_id": str, "path": str, "sha256": str, "size": int}, pk=("artifact_id", "path")
    )
    files.create_index(["sha256"])

    refs = db.table("refs").create(
        {"name": str, "tag": str, "artifact_id": str}, pk=("name", "tag")
    )
    refs.create_index(["artifact_id"])

    lineage = db.table("lineage").create(
        {"child": str, "parent": str, "position": int}, pk=("child", "position")
    )
    lineage.create_index(["parent"])


def add_annotations_and_search(db: Database) -> None:
    """Add the annotations column and the full-text search tables, filled from existing rows."""
    db.table("artifacts").add_column("annotations", str)
    create_search_tables(db)
    refresh_search(db.conn, None)


MIGRATIONS: list[Callable[[Database], None]] = [create_tables, add_annotations_and_search]
"""Every schema migration in the order they apply; each is recorded under its function name."""


class Index:
    """A connection to ``index.db``; not safe to share between threads.

    Every public method raises IndexDatabaseError when SQLite fails, for example when
    another process holds the write lock longer than ``BUSY_TIMEOUT_MS``, the disk is full
    or the file is damaged. Deleting a damaged index.db and calling ``Store.reindex``
    repairs it.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self._translate_errors("open the index"):
            # isolation_level=None leaves transactions to the explicit BEGIN in _write.
            self.conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None
            )
            self.conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.conn.execute("PRAGMA journal_mode = wal")
        self._migrate()

    def close(self) -> None:
        """Close the connection; later calls fail."""
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self, action: str) -> Iterator[None]:
        """Run the block as one write transaction; ``action`` names it in error messages.

        Write methods called inside join the transaction, so the block commits or rolls
        back as a whole.
        """
        with self._write(action):
            yield

    def add_artifact(
        self,
        artifact_id: str,
        manifest: Manifest,
        created: str,
        annotations: Mapping[str, str] | None = None,
    ) -> bool:
        """Index one artifact with its files, lineage and annotations in one transaction.

        Returns False, changing nothing, when the artifact is already indexed, so its
        ``created`` time is kept.
        """
        with self._write("index artifact " + artifact_id):
            if self._has_artifact(artifact_id):
                return False
            self._insert_artifacts([(artifact_id, manifest, created)], {artifact_id: annotations})
            refresh_search(self.conn, [artifact_id])
        return True

    def has_artifact(self, artifact_id: str) -> bool:
        """Return whether ``artifact_id`` has a row in the artifacts table."""
        with self._translate_errors("look up artifact " + artifact_id):
            return self._has_artifact(artifact_id)

    def artifact_ids(self) -> set[str]:
        """Return the id of every indexed artifact."""
        with self._translate_errors("list artifact ids"):
            return {row[0] for row in self.conn.execute("SELECT id FROM artifacts")}

    def ids_with_prefix(self, prefix: str) -> list[str]:
        """Return the sorted ids of indexed artifacts that start with lowercase hex ``prefix``."""
        # Hex digits sort below "g", so the range covers exactly the ids with this prefix.
        with self._translate_errors("look up id prefix " + prefix):
            cursor = self.conn.execute(
                "SELECT id FROM artifacts WHERE id >= ? AND id < ? ORDER BY id",
                [prefix, prefix + "g"],
            )
            return [row[0] for row in cursor]

    def set_ref(self, name: str, tag: str, artifact_id: str) -> None:
        """Record that ``name:tag`` points at ``artifact_id``, replacing any earlier row."""
        self.sync_ref(name, tag, artifact_id)

    def remove_ref(self, name: str, tag: str) -> None:
        """Delete the row of ``name:tag`` if there is one."""
        self.sync_ref(name, tag, None)

    def sync_ref(self, name: str, tag: str, artifact_id: str | None) -> None:
        """Make the row of ``name:tag`` point at ``artifact_id``, or delete it for None."""
        with self._write(f"update reference {name}:{tag}"):
            row = self.conn.execute(
                "SELECT artifact_id FROM refs WHERE name = ? AND tag = ?", [name, tag]
            ).fetchone()
            previous = row[0] if row else None
            if previous == artifact_id:
                return
            self.conn.execute("DELETE FROM refs WHERE name = ? AND tag = ?", [name, tag])
            if artifact_id is not None:
                self.conn.execute(
                    "INSERT INTO refs (name, tag, artifact_id) VALUES (?, ?, ?)",
                    [name, tag, artifact_id],
                )
            refresh_search(self.conn, [item for item in (previous, artifact_id) if item])

    def set_annotations(self, artifact_id: str, annotations: Mapping[str, str]) -> None:
        """Replace the annotations of an indexed artifact; an empty mapping clears them."""
        with self._write("annotate artifact " + artifact_id):
            self.conn.execute(
                "UPDATE artifacts SET annotations = ? WHERE id = ?",
                [_annotations_text(annotations), artifact_id],
            )
            refresh_search(self.conn, [artifact_id])

    def refs_by_artifact(self) -> dict[str, list[str]]:
        """Return the sorted ``name:tag`` strings of each artifact id that has references."""
        with self._translate_errors("list references"):
            cursor = self.conn.execute("SELECT artifact_id, name, tag FROM refs ORDER BY name, tag")
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
            self.conn.executemany("DELETE FROM artifacts WHERE id = ?", ids)
            self.conn.executemany("DELETE FROM files WHERE artifact_id = ?", ids)
            self.conn.executemany("DELETE FROM lineage WHERE child = ?", ids)
            self.conn.executemany("DELETE FROM search WHERE artifact_id = ?", ids)

    def rebuild(
        self,
        artifacts: Iterable[tuple[str, Manifest, str]],
        refs: Iterable[RefEntry],
        annotations: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Replace all rows by ``artifacts`` (id, manifest, created), ``refs`` and ``annotations``.

        This is one transaction: readers in other processes see either the old or the new
        index, never a mixture.
        """
        with self._write("rebuild the index"):
            for table in ("artifacts", "files", "refs", "lineage", "search"):
                self.conn.execute(f"DELETE FROM {table}")
            self._insert_artifacts(list(artifacts), annotations or {})
            self.conn.executemany(
                "INSERT OR REPLACE INTO refs (name, tag, artifact_id) VALUES (?, ?, ?)",
                [(ref.name, ref.tag, ref.artifact_id) for ref in refs],
            )
            refresh_search(self.conn, None)

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
        created_after: datetime | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the artifacts that match every given filter.

        ``name`` and ``tag`` match artifacts with a reference of that name and/or tag (one
        reference must match both when both are given). ``target_module`` matches an exact
        module name in a target_modules list. ``created_after`` keeps artifacts created
        strictly later (a naive datetime counts as UTC). ``search`` is free text matched by
        ``search_query``; its matches come best first, and otherwise rows are ordered by
        created time, then id. Each dict has the artifacts columns, with ``metadata``,
        ``annotations`` and ``target_modules`` decoded from JSON, plus ``refs`` (sorted
        ``name:tag`` strings) and ``parents`` (ids in lineage order).
        """
        query = list_query(
            kind=kind, base_model=base_model, peft_type=peft_type, min_rank=min_rank,
            max_rank=max_rank, target_module=target_module, tag=tag, name=name,
            created_after=created_after, search=search,
        )
        if query is None:
            return []
        with self._translate_errors("list artifacts"):
            cursor = self.conn.execute(*query)
            names = [column[0] for column in cursor.description]
            return [decode_row(dict(zip(names, row))) for row in cursor]

    def _migrate(self) -> None:
        with self._translate_errors("read the index schema"):
            if not self._pending_migrations():
                return

        from sqlite_utils import Database
        from sqlite_utils.migrations import Migrations

        migrations = Migrations(MIGRATION_SET)
        for migration in MIGRATIONS:
            migrations()(migration)
        db = Database(self.conn, recursive_triggers=False, execute_plugins=False)
        with self._write("migrate the index schema"):
            pending = [migration.name for migration in migrations.pending(db)]
            migrations.apply(db)
        if pending:
            logger.info("Applied index migrations %s to %s", ", ".join(pending), self.path)

    def _pending_migrations(self) -> list[str]:
        """Return the names of migrations not yet applied, reading without sqlite-utils."""
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlite_migrations'"
        ).fetchone()
        applied: set[str] = set()
        if exists:
            cursor = self.conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET]
            )
            applied = {row[0] for row in cursor}
        return [migration.__name__ for migration in MIGRATIONS if migration.__name__ not in applied]

    def _has_artifact(self, artifact_id: str) -> bool:
        cursor = self.conn.execute("SELECT 1 FROM artifacts WHERE id = ?", [artifact_id])
        return cursor.fetchone() is not None

    def _insert_artifacts(
        self,
        artifacts: list[tuple[str, Manifest, str]],
        annotations: Mapping[str, Mapping[str, str] | None],
    ) -> None:
        rows = [
            _artifact_row(artifact_id, manifest, created, annotations.get(artifact_id))
            for artifact_id, manifest, created in artifacts
        ]
        if rows:
            columns = list(rows[0])
            placeholders = ", ".join("?" for _ in columns)
            self.conn.executemany(
                f"INSERT OR IGNORE INTO artifacts ({', '.join(columns)}) VALUES ({placeholders})",
                [[row[column] for column in columns] for row in rows],
            )
        self.conn.executemany(
            "INSERT OR IGNORE INTO files (artifact_id, path, sha256, size) VALUES (?, ?, ?, ?)",
            [
                (artifact_id, entry.path, entry.sha256, entry.size)
                for artifact_id, manifest, _ in artifacts
                for entry in manifest.files
            ],
        )
        self.conn.executemany(
            "INSERT OR IGNORE INTO lineage (child, parent, position) VALUES (?, ?, ?)",
            [
                (artifact_id, parent, position)
                for artifact_id, manifest, _ in artifacts
                for position, parent in enumerate(manifest.parents)
            ],
        )

    @contextlib.contextmanager
    def _write(self, action: str) -> Iterator[None]:
        """Run the block in one BEGIN IMMEDIATE transaction, rolled back if the block raises.

        IMMEDIATE takes the write lock up front, so the busy timeout applies. A deferred
        transaction that reads first can fail at once with SQLITE_BUSY when it later writes.
        Inside a transaction that is already open, the block simply joins it.
        """
        with self._translate_errors(action):
            if self.conn.in_transaction:
                yield
                return
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _translate_errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _index_error(action, self.path, exc) from exc


def _annotations_text(annotations: Mapping[str, str] | None) -> str | None:
    if not annotations:
        return None
    return json.dumps(dict(annotations), sort_keys=True, ensure_ascii=False)


def _artifact_row(
    artifact_id: str, manifest: Manifest, created: str, annotations: Mapping[str, str] | None
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": artifact_id,
        "kind": manifest.kind,
        "created": created,
        "bytes": manifest.size,
    }
    row.update(_promoted_values(artifact_id, manifest.metadata))
    row["metadata"] = json.dumps(manifest.metadata, sort_keys=True, ensure_ascii=False)
    row["annotations"] = _annotations_text(annotations)
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
    if kind is int and isinstance(value, int) and not -(2**63) <= value < 2**63:
        # SQLite integers are 64-bit; a larger value stays in the metadata column only.
        return None
    return value if isinstance(value, kind) else None


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
