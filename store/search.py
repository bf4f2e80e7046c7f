"""Listing artifacts: the filters, and full-text search with its table, FTS5 index and syntax.

Each indexed artifact has one row in ``search`` with the text that a search matches: its
reference names and tags, its description (the ``description`` annotation, else the manifest
metadata's), its other annotations as "key value" pairs, and its base model. ``search_fts`` is
an FTS5 index over that table (with the default unicode61 tokenizer, so "org/task-lora" is
the words org, task and lora), kept in step by triggers. The index module calls
``refresh_search`` inside every write transaction that changes those values.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database

__all__ = [
    "SEARCH_COLUMNS",
    "create_search_tables",
    "decode_row",
    "list_query",
    "refresh_search",
    "search_query",
]

SEARCH_COLUMNS = ("names", "tags", "description", "annotations", "base_model")


def create_search_tables(db: Database) -> None:
    """Create the search table, its FTS5 index and the triggers that keep them in step."""
    db.table("search").create(
        {"artifact_id": str, **{column: str for column in SEARCH_COLUMNS}}, pk="artifact_id"
    )
    # sqlite-utils' enable_fts runs executescript, which commits the migration's transaction
    # halfway, so the FTS table and its triggers are created with plain statements.
    columns = ", ".join(SEARCH_COLUMNS)
    old = ", ".join(f"old.{column}" for column in SEARCH_COLUMNS)
    new = ", ".join(f"new.{column}" for column in SEARCH_COLUMNS)
    db.execute(f"CREATE VIRTUAL TABLE search_fts USING fts5({columns}, content='search')")
    db.execute(
        f"CREATE TRIGGER search_ai AFTER INSERT ON search BEGIN "
        f"INSERT INTO search_fts (rowid, {columns}) VALUES (new.rowid, {new}); END"
    )
    db.execute(
        f"CREATE TRIGGER search_ad AFTER DELETE ON search BEGIN "
        f"INSERT INTO search_fts (search_fts, rowid, {columns}) "
        f"VALUES ('delete', old.rowid, {old}); END"
    )
    db.execute(
        f"CREATE TRIGGER search_au AFTER UPDATE ON search BEGIN "
        f"INSERT INTO search_fts (search_fts, rowid, {columns}) "
        f"VALUES ('delete', old.rowid, {old}); "
        f"INSERT INTO search_fts (rowid, {columns}) VALUES (new.rowid, {new}); END"
    )


def search_query(text: str) -> str | None:
    """Turn free text into an FTS5 query, or return None when it has no word to search for.

    Every word must match, as a prefix of a word in a reference name, tag, description,
    annotation or base model, case-insensitively: ``task lo`` matches "org/task-lora".
    Quoting each word keeps FTS5 operators such as AND, NOT and ``*`` literal.
    """
    words = re.findall(r"\w+", text)
    if not words:
        return None
    return " ".join(f'"{word}"*' for word in words)


def refresh_search(conn: sqlite3.Connection, artifact_ids: Iterable[str] | None) -> None:
    """Recompute the search rows of ``artifact_ids`` (of every artifact for None)."""
    select = (
        "SELECT id, base_model, description, annotations, "
        "(SELECT group_concat(name, ' ') FROM (SELECT DISTINCT name FROM refs "
        "WHERE artifact_id = artifacts.id ORDER BY name)), "
        "(SELECT group_concat(tag, ' ') FROM (SELECT DISTINCT tag FROM refs "
        "WHERE artifact_id = artifacts.id ORDER BY tag)) "
        "FROM artifacts"
    )
    if artifact_ids is None:
        conn.execute("DELETE FROM search")
        rows = conn.execute(select).fetchall()
    else:
        ids = sorted(set(artifact_ids))
        conn.executemany("DELETE FROM search WHERE artifact_id = ?", [[item] for item in ids])
        rows = [
            row
            for item in ids
            for row in conn.execute(select + " WHERE id = ?", [item]).fetchall()
        ]
    conn.executemany(
        f"INSERT INTO search (artifact_id, {', '.join(SEARCH_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?)",
        [_search_row(*row) for row in rows],
    )


def _search_row(
    artifact_id: str,
    base_model: str | None,
    description: str | None,
    annotations_text: str | None,
    names: str | None,
    tags: str | None,
) -> tuple[str | None, ...]:
    annotations = json.loads(annotations_text) if annotations_text else {}
    described = annotations.get("description") or description
    others = " ".join(
        f"{key} {value}" for key, value in sorted(annotations.items()) if key != "description"
    )
    return (artifact_id, names, tags, described, others or None, base_model)


def list_query(**filters: Any) -> tuple[str, list[Any]] | None:
    """Build the SELECT and its parameters for ``Index.list_artifacts`` and its filters.

    Returns None when ``search`` contains no word, because such a search matches nothing.
    """
    conditions, parameters = _filter_conditions(**filters)
    joins = ""
    order = "artifacts.created, artifacts.id"
    if filters["search"] is not None:
        query = search_query(filters["search"])
        if query is None:
            return None
        joins = (
            " JOIN search ON search.artifact_id = artifacts.id"
            " JOIN search_fts ON search_fts.rowid = search.rowid"
        )
        conditions.insert(0, "search_fts MATCH ?")
        parameters.insert(0, query)
        order = "bm25(search_fts), " + order
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"SELECT {_LIST_COLUMNS} FROM artifacts{joins}{where} ORDER BY {order}", parameters


_LIST_COLUMNS = (
    "artifacts.*, "
    "(SELECT json_group_array(json_array(name, tag)) FROM refs "
    "WHERE refs.artifact_id = artifacts.id) AS _refs, "
    "(SELECT json_group_array(json_array(position, parent)) FROM lineage "
    "WHERE lineage.child = artifacts.id) AS _parents"
)


def _filter_conditions(**filters: Any) -> tuple[list[str], list[Any]]:
    conditions: list[str] = []
    parameters: list[Any] = []
    for column in ("kind", "base_model", "peft_type"):
        if filters[column] is not None:
            conditions.append(f"artifacts.{column} = ?")
            parameters.append(filters[column])
    if filters["min_rank"] is not None:
        conditions.append("artifacts.rank >= ?")
        parameters.append(filters["min_rank"])
    if filters["max_rank"] is not None:
        conditions.append("artifacts.rank <= ?")
        parameters.append(filters["max_rank"])
    if filters["target_module"] is not None:
        conditions.append(
            "EXISTS (SELECT 1 FROM json_each(artifacts.target_modules) WHERE value = ?)"
        )
        parameters.append(filters["target_module"])
    if filters["created_after"] is not None:
        conditions.append("artifacts.created > ?")
        parameters.append(_created_text(filters["created_after"]))

    ref_conditions = ["refs.artifact_id = artifacts.id"]
    for column in ("name", "tag"):
        if filters[column] is not None:
            ref_conditions.append(f"refs.{column} = ?")
            parameters.append(filters[column])
    if len(ref_conditions) > 1:
        conditions.append(f"EXISTS (SELECT 1 FROM refs WHERE {' AND '.join(ref_conditions)})")
    return conditions, parameters


def _created_text(moment: datetime) -> str:
    """Format ``moment`` like the created column: ISO-8601 UTC with microseconds."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


def decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """Decode one row of ``list_query``: JSON columns to values, plus ``refs`` and ``parents``."""
    decoded = dict(row)
    decoded["metadata"] = json.loads(row["metadata"]) if row["metadata"] is not None else {}
    decoded["annotations"] = json.loads(row["annotations"]) if row["annotations"] else {}
    if row["target_modules"] is not None:
        decoded["target_modules"] = json.loads(row["target_modules"])
    refs = sorted(tuple(pair) for pair in json.loads(decoded.pop("_refs")))
    parents = sorted(tuple(pair) for pair in json.loads(decoded.pop("_parents")))
    decoded["refs"] = [f"{name}:{tag}" for name, tag in refs]
    decoded["parents"] = [parent for _, parent in parents]
    return decoded


