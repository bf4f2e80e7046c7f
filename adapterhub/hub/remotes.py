"""Remote records: what this store last saw at each Hub location it pulled from or pushed to.

One JSON file per location (endpoint, repo, revision, subfolder) under ``<store home>/remotes/``,
named by the sha256 of those four values and written atomically. The files live beside the
index rather than in it, so ``reindex`` never loses them, and outside the artifact manifests,
so recording a remote never changes an artifact id. A record contains no token.

A record's ``commit`` is the commit the location pointed to when this store last pulled or
pushed it: a push names it as the parent commit, so the Hub rejects the push when the
branch moved meanwhile. ``reference`` is the local ``name:tag`` kept in step with the
location; ``sync`` compares both sides against the record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from store.atomic import write_atomic

from adapterhub.hub.locations import HubLocation

if TYPE_CHECKING:
    from adapterhub.library import Library

logger = logging.getLogger(__name__)

RECORD_VERSION = 1
FOLDER_NAME = "remotes"


@dataclass(frozen=True)
class RemoteFile:
    """One recorded file: its sha256, size and, when known, git blob id of the content."""

    sha256: str
    size: int
    git_blob: str | None = None


@dataclass(frozen=True)
class RemoteRecord:
    """The state of one Hub location as this store last saw it."""

    endpoint: str
    repo_id: str
    revision: str
    subfolder: str
    commit: str
    artifact_id: str
    reference: str | None
    action: str
    files: dict[str, RemoteFile] = field(default_factory=dict)
    card: str | None = None
    time: str = ""

    @property
    def location(self) -> HubLocation:
        return HubLocation(self.repo_id, self.revision)

    @property
    def label(self) -> str:
        """``OWNER/REPO@REVISION``, with the subfolder when there is one."""
        suffix = f" ({self.subfolder}/)" if self.subfolder else ""
        return f"{self.location}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> RemoteRecord:
        """Build a record from its JSON form; raises ValueError or KeyError when it is malformed."""
        if value.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported record version {value.get('version')!r}, expected {RECORD_VERSION}")
        files = {path: RemoteFile(**entry) for path, entry in value["files"].items()}
        fields = {key: value[key] for key in (
            "endpoint", "repo_id", "revision", "subfolder", "commit", "artifact_id", "reference",
            "action", "card", "time",
        )}
        return cls(files=files, **fields)


def records_of(library: Library) -> RemoteRecords:
    """Return the remote records of the library's store."""
    return RemoteRecords(library.store.home, library.store.blobs.tmp_dir)


def now() -> str:
    """Return the current UTC time as an ISO 8601 string, for a record's ``time``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RemoteRecords:
    """The remote records of one store home."""

    def __init__(self, home: Path, tmp_dir: Path) -> None:
        self.folder = Path(home) / FOLDER_NAME
        self.tmp_dir = Path(tmp_dir)

    def path(self, endpoint: str, repo_id: str, revision: str, subfolder: str = "") -> Path:
        key = f"{endpoint}\n{repo_id}\n{revision}\n{subfolder}".encode()
        return self.folder / f"{hashlib.sha256(key).hexdigest()}.json"

    def get(self, endpoint: str, location: HubLocation, subfolder: str = "") -> RemoteRecord | None:
        """Return the record of a location, or None when this store never saw it."""
        path = self.path(endpoint, location.repo_id, location.revision, subfolder)
        return self._read(path) if path.is_file() else None

    def put(self, record: RemoteRecord) -> None:
        """Write ``record`` atomically, replacing the earlier record of its location."""
        path = self.path(record.endpoint, record.repo_id, record.revision, record.subfolder)
        data = json.dumps(record.to_dict(), indent=2, sort_keys=True).encode("utf-8") + b"\n"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, self.tmp_dir)
        logger.info("Recorded %s %s at commit %s", record.action, record.label, record.commit)

    def all(self) -> list[RemoteRecord]:
        """Return every readable record, sorted by repo, revision and subfolder.

        A file that cannot be read or parsed is skipped with a warning, so one damaged record
        never hides the others.
        """
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return []
        records = [self._read(self.folder / name) for name in names if name.endswith(".json")]
        found = [record for record in records if record is not None]
        return sorted(found, key=lambda r: (r.endpoint, r.repo_id, r.revision, r.subfolder))

    def known_blobs(self) -> dict[str, RemoteFile]:
        """Return recorded files by the git blob id of their content, from every record."""
        return {entry.git_blob: entry for record in self.all()
                for entry in record.files.values() if entry.git_blob}

    def card_for_blob(self, git_blob: str) -> str | None:
        """Return a recorded README whose git blob id is ``git_blob``, or None."""
        for record in self.all():
            for path, entry in record.files.items():
                if _is_card(path) and entry.git_blob == git_blob and record.card is not None:
                    return record.card
        return None

    def _read(self, path: Path) -> RemoteRecord | None:
        try:
            return RemoteRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("Skipping the unreadable remote record %s: %s", path, exc)
            return None


def _is_card(path: str) -> bool:
    return path.rsplit("/", 1)[-1] == "README.md"
