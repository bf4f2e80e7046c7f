"""Sync: compare every recorded Hub location with the store and move what can move safely.

Each remote record names a commit and the artifact that went with it. Against it:

- the Hub side moved when the location now points to another commit;
- the store side moved when the record's ``name:tag`` now points to another artifact.

Only the Hub moved: ``behind``, and sync pulls. Only the store moved: ``ahead``, and sync pushes
(with the recorded commit as parent). Both: ``diverged``, and nothing moves. Neither:
``up to date``. A location pinned to a commit id never moves on the Hub and is never pushed to.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from store.errors import ReferenceNotFoundError, StoreError
from store.refs import NamedRef, parse_ref

from adapterhub.errors import AdapterHubError, HubError
from adapterhub.hub.client import HubClient
from adapterhub.hub.locations import HubLocation, is_hub_reference, parse_location
from adapterhub.hub.options import PushOptions
from adapterhub.hub.remotes import RemoteRecord, records_of

if TYPE_CHECKING:
    from adapterhub.library import Library

logger = logging.getLogger(__name__)

UP_TO_DATE = "up to date"
BEHIND = "behind"
AHEAD = "ahead"
DIVERGED = "diverged"
ERROR = "error"


@dataclass(frozen=True)
class SyncEntry:
    """One recorded location: its state, and what sync did about it (``action``: none, pulled,
    pushed or failed)."""

    location: HubLocation
    subfolder: str
    reference: str | None
    state: str
    recorded_commit: str
    remote_commit: str | None
    recorded_artifact: str
    local_artifact: str | None
    action: str = "none"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.state == ERROR or self.action == "failed"

    def to_dict(self) -> dict:
        return {"repo_id": self.location.repo_id, "revision": self.location.revision,
                "subfolder": self.subfolder, "reference": self.reference, "state": self.state,
                "recorded_commit": self.recorded_commit, "remote_commit": self.remote_commit,
                "recorded_artifact": self.recorded_artifact, "local_artifact": self.local_artifact,
                "action": self.action, "detail": self.detail}


def sync(library: Library, references: Iterable[str] = (), status_only: bool = False) -> list[SyncEntry]:
    """Report (and unless ``status_only``, pull or push) every recorded location of ``references``.

    With no references, every location recorded for the current endpoint is handled. A
    reference is a store reference or ``hf://OWNER/REPO[@REVISION]``; one without a record
    raises :class:`HubError`. Failures of single locations are reported in their entries.
    """
    client = HubClient()
    client.require_online("compare the store with the Hub")
    records = _select(library, records_of(library).all(), list(references), client.endpoint)
    entries = []
    for record in records:
        entry = status_of(library, client, record)
        if not status_only:
            entry = _move(library, entry)
        entries.append(entry)
    return entries


def status_of(library: Library, client: HubClient, record: RemoteRecord) -> SyncEntry:
    """Compare one record with the Hub and the store."""
    local = _local_artifact(library, record)
    entry = SyncEntry(record.location, record.subfolder, record.reference, UP_TO_DATE,
                      record.commit, None, record.artifact_id, local)
    try:
        remote = record.commit if record.location.is_commit else client.head_commit(record.location)
    except HubError as exc:
        return replace(entry, state=ERROR, detail=str(exc))
    if remote is None:
        return replace(entry, state=ERROR, detail=f"{record.location} no longer exists on the Hub; "
                       "push again to recreate it")
    remote_moved = remote != record.commit
    local_moved = local is not None and local != record.artifact_id
    state = {(True, True): DIVERGED, (True, False): BEHIND, (False, True): AHEAD}.get(
        (remote_moved, local_moved), UP_TO_DATE)
    detail = ""
    if state == DIVERGED:
        detail = (f"both changed since commit {record.commit[:12]}; pull with --name to keep both "
                  "versions, or push with --force to replace the Hub's")
    return replace(entry, state=state, remote_commit=remote, detail=detail)


def _move(library: Library, entry: SyncEntry) -> SyncEntry:
    from adapterhub.hub.pull import pull

    try:
        if entry.state == BEHIND:
            pulled = pull(library, entry.location, name=entry.reference, subfolder=entry.subfolder)
            return replace(entry, action="pulled", local_artifact=pulled.artifact_id,
                           detail=f"now {pulled.artifact_id[:12]} at commit {pulled.commit[:12]}")
        if entry.state == AHEAD:
            return _push(library, entry)
    except (AdapterHubError, StoreError) as exc:
        return replace(entry, action="failed", detail=str(exc))
    return entry


def _push(library: Library, entry: SyncEntry) -> SyncEntry:
    if entry.location.is_commit or entry.subfolder or entry.reference is None:
        return replace(entry, detail="pinned to a commit or a subfolder; push it with adapterhub push")

    from adapterhub.hub.push import push

    pushed = push(library, entry.reference, PushOptions(entry.location.repo_id, entry.location.revision))
    return replace(entry, action="pushed", remote_commit=pushed.commit,
                   detail=f"pushed {pushed.artifact_id[:12]} as commit {pushed.commit[:12]}")


def _local_artifact(library: Library, record: RemoteRecord) -> str | None:
    if record.reference is None:
        return record.artifact_id
    try:
        return library.store.resolve(record.reference)
    except ReferenceNotFoundError:
        return None


def _select(library: Library, records: list[RemoteRecord], references: list[str],
            endpoint: str) -> list[RemoteRecord]:
    records = [record for record in records if record.endpoint == endpoint]
    if not references:
        return records
    selected: dict[int, RemoteRecord] = {}
    for text in references:
        matches = [record for record in records if _matches(library, record, text)]
        if not matches:
            raise HubError(
                f"{text} has no Hub remote in this store; push it with adapterhub push {text} "
                "OWNER/REPO, or pull it first"
            )
        selected.update({id(record): record for record in matches})
    return [record for record in records if id(record) in selected]


def _matches(library: Library, record: RemoteRecord, text: str) -> bool:
    if is_hub_reference(text):
        location = parse_location(text)
        return record.location == location
    parsed = parse_ref(text)
    if isinstance(parsed, NamedRef) and record.reference == str(parsed):
        return True
    return record.artifact_id == library.store.resolve(text)
