"""Push: commit a stored adapter to a Hub repo as a PEFT folder plus its README.md card.

One commit adds ``adapter_config.json``, ``adapter_model.safetensors`` and ``README.md``. The
commit names as its parent the commit this store last saw on the branch, so the Hub rejects
it when someone else pushed meanwhile. Before that, the push rejects a branch that moved since
this store last pulled or pushed it, and a branch containing an adapter this store never saw,
unless ``force`` is set. The card is rendered with the Hub's current README as the existing
card, so its author's prose survives, and validated before anything is uploaded.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from store.refs import NamedRef, parse_ref

from adapterhub.errors import NotAnAdapterError, RemoteMovedError
from adapterhub.formats import peft
from adapterhub.hub.client import README_NAME, HubClient
from adapterhub.hub.locations import DEFAULT_REVISION, HubLocation, is_hub_reference
from adapterhub.hub.options import PushOptions
from adapterhub.hub.pull import git_blob_id
from adapterhub.hub.remotes import RemoteFile, RemoteRecord, RemoteRecords, now, records_of

if TYPE_CHECKING:
    from adapterhub.library import Library

logger = logging.getLogger(__name__)

ADAPTER_NAMES = (peft.CONFIG_NAME, peft.WEIGHTS_NAME, peft.PICKLE_WEIGHTS_NAME)
PAST_TENSE = {"pull": "pulled", "push": "pushed"}


@dataclass(frozen=True)
class PushResult:
    """The commit a push made, and the pull request it opened when asked to.

    ``changed`` is False when the remote already had the same files and card, so the Hub made
    no commit and ``commit`` is the existing head.
    """

    location: HubLocation
    artifact_id: str
    commit: str
    commit_url: str
    pull_request_url: str | None
    changed: bool


def push(library: Library, reference: str, options: PushOptions) -> PushResult:
    """Push the stored adapter ``reference`` to ``options.repo_id`` in one commit.

    Raises :class:`HubAuthError` without a token that can write, :class:`RemoteMovedError`
    when the branch moved (or contains an adapter this store never saw) and ``force`` is off,
    :class:`CardError` when the card would be rejected, and other :class:`HubError` leaves
    when the Hub fails. Nothing is uploaded when any check fails.
    """
    from adapterhub.cards import render_card, validate_card

    artifact_id = library.resolve(reference)
    client = HubClient()
    client.require_online(f"push to {options.repo_id}")
    location = HubLocation(options.repo_id, options.branch)
    client.require_write_token(options.repo_id)
    files = upload_files(library, reference, artifact_id)

    records = records_of(library)
    head = client.head_commit(location)
    check_remote(client, records, location, head, options)
    existing = client.read_text(options.repo_id, head, README_NAME) if head else None
    if existing is None:
        existing = recorded_card(records, artifact_id)
    card = render_card(library, artifact_id, existing=existing, repo_id=options.repo_id)
    validate_card(card)

    head = head or _create_target(client, location, options.private)
    message = options.message or f"Upload {_label(reference, artifact_id)} with adapterhub"
    outcome = client.commit(location, {**files, README_NAME: card.encode("utf-8")}, message,
                            parent_commit=None if options.create_pr else head,
                            create_pr=options.create_pr)
    revision = outcome.pull_request_revision or options.branch
    records.put(RemoteRecord(
        client.endpoint, options.repo_id, revision, "", outcome.commit, artifact_id,
        _tracked_reference(reference), "push", _recorded_files(library, files, card), card, now(),
    ))
    changed = outcome.pull_request_url is not None if options.create_pr else outcome.commit != head
    return PushResult(HubLocation(options.repo_id, revision), artifact_id, outcome.commit,
                      outcome.url, outcome.pull_request_url, changed)


def upload_files(library: Library, reference: str, artifact_id: str) -> dict[str, Path | bytes]:
    """Return the PEFT files of an artifact: its stored blobs, or a conversion to PEFT.

    A PEFT adapter with safetensors weights is uploaded byte for byte. A ``.lora`` file, or
    PEFT weights in ``adapter_model.bin``, is converted, so it pulls back as a new artifact.
    Raises :class:`NotAnAdapterError` for an artifact that is not an adapter.
    """
    from adapterhub.library import ADAPTER_KIND

    manifest = library.store.manifest(artifact_id)
    if manifest.kind != ADAPTER_KIND:
        raise NotAnAdapterError(
            f"{reference} is a {manifest.kind} artifact; push takes one adapter, so push each "
            "component, or materialize the stack into one adapter first"
        )
    paths = {entry.path: entry.sha256 for entry in manifest.files}
    if manifest.metadata.get("format", "peft") == "peft" and {peft.CONFIG_NAME, peft.WEIGHTS_NAME} <= set(paths):
        return {name: library.store.blobs.path(paths[name]) for name in (peft.CONFIG_NAME, peft.WEIGHTS_NAME)}
    logger.info("Converting %s to PEFT files for the upload", reference)
    return dict(peft.to_files(library.load(artifact_id)))


def recorded_card(records: RemoteRecords, artifact_id: str) -> str | None:
    """Return the latest card this store pulled or pushed with ``artifact_id``, or None.

    An adapter pulled from one repo and pushed to another keeps its author's card this way,
    since a pulled artifact stores no README.md of its own.
    """
    cards = sorted((record.time, record.card) for record in records.all()
                   if record.artifact_id == artifact_id and record.card)
    return cards[-1][1] if cards else None


def check_remote(client: HubClient, records: RemoteRecords, location: HubLocation,
                 head: str | None, options: PushOptions) -> None:
    """Raise :class:`RemoteMovedError` when pushing would overwrite commits this store never saw."""
    if options.create_pr or options.force or head is None:
        return
    record = records.get(client.endpoint, location)
    retry = f"`adapterhub pull {_pull_argument(location)}` to take the remote version, or push again with --force"
    if record is not None:
        if record.commit == head:
            return
        raise RemoteMovedError(
            f"{location} moved since this store last saw it: it was at commit {record.commit[:12]} "
            f"when this store {PAST_TENSE.get(record.action, record.action)} it, and is now at "
            f"{head[:12]}; run `adapterhub sync --status` to compare, {retry} to overwrite it"
        )
    remote_files = client.snapshot(HubLocation(location.repo_id, head)).files
    found = sorted(path for path in remote_files if path.rsplit("/", 1)[-1] in ADAPTER_NAMES)
    if found:
        raise RemoteMovedError(
            f"{location} already contains adapter files ({', '.join(found)}) that this store never "
            f"pulled or pushed; run {retry} to replace them"
        )


def _create_target(client: HubClient, location: HubLocation, private: bool) -> str:
    client.create_repo(location.repo_id, private)
    if location.revision != DEFAULT_REVISION:
        client.create_branch(location.repo_id, location.revision)
    head = client.head_commit(location)
    logger.info("Created %s at commit %s", location, head)
    return head


def _recorded_files(library: Library, files: dict[str, Path | bytes], card: str) -> dict[str, RemoteFile]:
    recorded = {}
    for path, content in {**files, README_NAME: card.encode("utf-8")}.items():
        if isinstance(content, Path):
            digest = library.store.blobs.digest_of_path(content)
            # The weights go through LFS, whose listing carries the sha256 itself.
            git_blob = git_blob_id(content.read_bytes()) if path == peft.CONFIG_NAME else None
            recorded[path] = RemoteFile(digest, content.stat().st_size, git_blob)
        else:
            git_blob = None if path.endswith((".safetensors", ".bin")) else git_blob_id(content)
            recorded[path] = RemoteFile(hashlib.sha256(content).hexdigest(), len(content), git_blob)
    return recorded


def _tracked_reference(reference: str) -> str | None:
    """Return the ``name:tag`` a push keeps in step with the remote, when it was pushed by name."""
    if is_hub_reference(reference):
        return None
    parsed = parse_ref(reference)
    return str(parsed) if isinstance(parsed, NamedRef) else None


def _label(reference: str, artifact_id: str) -> str:
    tracked = _tracked_reference(reference)
    return f"{tracked} ({artifact_id[:12]})" if tracked else artifact_id[:12]


def _pull_argument(location: HubLocation) -> str:
    return location.repo_id if location.revision == DEFAULT_REVISION else str(location)
