"""Pull: import a PEFT adapter from a Hub repo, downloading only the files the store lacks.

The repo listing gives each file's size and git blob id, and for LFS files the sha256 of the
content, which is also the name of a store blob. A file whose blob the store already has is
taken from the store and never downloaded. Regular files (the config and the card) have no
sha256 in the listing, so they are matched by git blob id against earlier remote records.
Everything downloaded is checked against the listing before the adapter is added through
:meth:`Library.add`, which validates it before it writes anything.

A pulled artifact contains the adapter files only. The card (README.md) is kept in the remote
record, so the same adapter pushed from one store and pulled into another has the same id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from store.errors import InvalidReferenceError
from store.refs import DEFAULT_TAG, NamedRef, validate_name, validate_tag

from adapterhub.errors import (
    AdapterFormatError,
    AdapterHubError,
    DownloadError,
    InvalidOptionError,
    NotAnAdapterError,
    OfflineError,
)
from adapterhub.formats import peft
from adapterhub.hub.client import README_NAME, HubClient, RemoteSnapshot
from adapterhub.hub.client import RemoteFile as ListedFile
from adapterhub.hub.locations import (
    DEFAULT_REVISION,
    HubLocation,
    check_remote_paths,
    is_hub_reference,
    join_subfolder,
    normalize_subfolder,
    parse_location,
)
from adapterhub.hub.remotes import RemoteFile, RemoteRecord, RemoteRecords, now, records_of

if TYPE_CHECKING:
    from adapterhub.library import Library

logger = logging.getLogger(__name__)

# How many levels of composed parents a pull follows through their hf:// labels.
MAX_PARENT_DEPTH = 8


@dataclass(frozen=True)
class PullResult:
    """The outcome of a pull: what it stored and how many bytes it downloaded.

    ``checked`` is False when offline mode is on and the store's earlier copy was used without
    asking the Hub. ``missing_parents`` lists lineage parents that are not in the store, so the
    artifact is stored without a link to them.
    """

    location: HubLocation
    subfolder: str
    commit: str
    artifact_id: str
    reference: str | None
    created: bool
    downloaded: tuple[str, ...]
    reused: tuple[str, ...]
    downloaded_bytes: int
    missing_parents: tuple[str, ...] = ()
    checked: bool = True


@dataclass(frozen=True)
class _Selection:
    config: ListedFile
    weights: ListedFile
    card: ListedFile | None


@dataclass
class _Fetched:
    files: dict[str, RemoteFile]
    downloaded: list[str]
    reused: list[str]
    downloaded_bytes: int = 0
    card: str | None = None


def pull(library: Library, location: HubLocation, name: str | None = None,
         subfolder: str | None = None, _visiting: frozenset[HubLocation] = frozenset()) -> PullResult:
    """Import the adapter at ``location`` (in ``subfolder`` of the repo) and name it.

    ``name`` defaults to ``OWNER/REPO``, with the revision as tag when it is not main. Raises
    a :class:`HubError` leaf when the Hub cannot be read, the repo contains no PEFT adapter, a
    listed path is unsafe, a download fails or offline mode is on and the store has no copy.
    When anything fails the store is unchanged, apart from lineage parents already pulled.
    """
    subfolder = normalize_subfolder(subfolder)
    target = _target_name(name, location, subfolder)
    client = HubClient()
    records = records_of(library)
    if client.offline():
        return _stored_copy(library, records, client.endpoint, location, subfolder, target)

    snapshot = client.snapshot(location)
    check_remote_paths(location, list(snapshot.files))
    selection = select_files(snapshot, subfolder)
    with tempfile.TemporaryDirectory(prefix="pull-", dir=library.store.blobs.tmp_dir) as folder:
        fetched = _fetch(library, client, records, snapshot, selection, Path(folder))
        missing = _pull_parents(library, Path(folder) / selection.weights.path.rsplit("/", 1)[-1],
                                _visiting | {location})
        added = _add(library, Path(folder), target, snapshot, subfolder)

    records.put(RemoteRecord(
        client.endpoint, location.repo_id, location.revision, subfolder, snapshot.commit,
        added.artifact_id, added.reference, "pull", fetched.files, fetched.card, now(),
    ))
    return PullResult(location, subfolder, snapshot.commit, added.artifact_id, added.reference,
                      added.created, tuple(fetched.downloaded), tuple(fetched.reused),
                      fetched.downloaded_bytes, tuple(missing))


def select_files(snapshot: RemoteSnapshot, subfolder: str) -> _Selection:
    """Pick the config, weights and card of the adapter in ``subfolder``.

    Raises :class:`NotAnAdapterError` naming the files found, and the folders that contain an
    adapter config, when the folder has no PEFT config or no weights.
    """
    files = snapshot.files
    config = files.get(join_subfolder(subfolder, peft.CONFIG_NAME))
    weights = next((files[path] for name in (peft.WEIGHTS_NAME, peft.PICKLE_WEIGHTS_NAME)
                    if (path := join_subfolder(subfolder, name)) in files), None)
    if config is not None and weights is not None:
        card = files.get(join_subfolder(subfolder, README_NAME)) or files.get(README_NAME)
        return _Selection(config, weights, card)

    where = f"{snapshot.location} in {subfolder}/" if subfolder else str(snapshot.location)
    missing = peft.CONFIG_NAME if config is None else f"{peft.WEIGHTS_NAME} or {peft.PICKLE_WEIGHTS_NAME}"
    folders = sorted(path.rsplit("/", 1)[0] for path in files
                     if path.endswith("/" + peft.CONFIG_NAME))
    hint = (f"; adapter configs lie in: {', '.join(folders)}, pass one with --subfolder" if folders
            else "; pull a repo saved with PEFT's save_pretrained or push_to_hub")
    listing = ", ".join(sorted(files)) or "no files"
    raise NotAnAdapterError(f"{where} is not a PEFT adapter: it has no {missing} (files: {listing}){hint}")


def _target_name(name: str | None, location: HubLocation, subfolder: str) -> NamedRef:
    from adapterhub.library import parse_name

    if name:
        return parse_name(name)
    default = join_subfolder(location.repo_id, subfolder)
    tag = DEFAULT_TAG if location.revision == DEFAULT_REVISION else location.revision.replace("/", "-")
    try:
        return NamedRef(validate_name(default), validate_tag(tag))
    except InvalidReferenceError as exc:
        raise InvalidOptionError(
            f"cannot name the pulled adapter {default}:{tag} ({exc}); pass --name NAME[:TAG]"
        ) from exc


def _stored_copy(library: Library, records: RemoteRecords, endpoint: str, location: HubLocation,
                 subfolder: str, target: NamedRef) -> PullResult:
    record = records.get(endpoint, location, subfolder)
    if record is None or not library.store.has_artifact(record.artifact_id):
        raise OfflineError(
            f"cannot pull {location}: HF_HUB_OFFLINE is set, so huggingface_hub makes no network "
            "requests, and this store has no copy of it; unset HF_HUB_OFFLINE (or set it to 0) "
            "and run the command again"
        )
    library.store.set_ref(target.name, target.tag, record.artifact_id)
    logger.info("Offline: using the copy of %s pulled at commit %s", location, record.commit)
    return PullResult(location, subfolder, record.commit, record.artifact_id, str(target), False,
                      (), tuple(record.files), 0, checked=False)


def _fetch(library: Library, client: HubClient, records: RemoteRecords, snapshot: RemoteSnapshot,
           selection: _Selection, folder: Path) -> _Fetched:
    """Put the adapter files into ``folder``, from store blobs where possible, and read the card."""
    known = records.known_blobs()
    fetched = _Fetched({}, [], [])
    for listed in (selection.config, selection.weights):
        destination = folder / listed.path.rsplit("/", 1)[-1]
        sha256 = listed.sha256 or (known[listed.git_oid].sha256 if listed.git_oid in known else None)
        if sha256 is not None and library.store.blobs.has(sha256):
            _link(library.store.blobs.path(sha256), destination)
            fetched.files[listed.path] = RemoteFile(sha256, listed.size, None if listed.sha256 else listed.git_oid)
            fetched.reused.append(listed.path)
            continue
        downloaded = client.download(snapshot.location.repo_id, snapshot.commit, listed.path)
        fetched.files[listed.path] = verify_download(downloaded, listed, snapshot)
        shutil.copyfile(downloaded, destination)
        fetched.downloaded.append(listed.path)
        fetched.downloaded_bytes += listed.size
    if selection.card is not None:
        _fetch_card(client, records, snapshot, selection.card, fetched)
    return fetched


def _fetch_card(client: HubClient, records: RemoteRecords, snapshot: RemoteSnapshot,
                listed: ListedFile, fetched: _Fetched) -> None:
    card = records.card_for_blob(listed.git_oid) if listed.sha256 is None and listed.git_oid else None
    if card is not None and git_blob_id(card.encode("utf-8")) == listed.git_oid:
        fetched.reused.append(listed.path)
        data = card.encode("utf-8")
    else:
        downloaded = client.download(snapshot.location.repo_id, snapshot.commit, listed.path)
        verify_download(downloaded, listed, snapshot)
        data = downloaded.read_bytes()
        fetched.downloaded.append(listed.path)
        fetched.downloaded_bytes += listed.size
    fetched.files[listed.path] = RemoteFile(hashlib.sha256(data).hexdigest(), len(data),
                                            listed.git_oid if listed.sha256 is None else None)
    try:
        fetched.card = data.decode("utf-8")
    except UnicodeDecodeError:
        logger.warning("%s in %s is not UTF-8 text; its card is not recorded", listed.path, snapshot.location)


def verify_download(path: Path, listed: ListedFile, snapshot: RemoteSnapshot) -> RemoteFile:
    """Check a downloaded file against the listing; return its record entry.

    LFS files are checked by sha256, regular files by git blob id; both by size. Raises
    :class:`DownloadError` on a mismatch.
    """
    sha256, git_blob, size = _hash_file(path)
    expected = listed.sha256 or listed.git_oid
    actual = sha256 if listed.sha256 else git_blob
    if size != listed.size or (expected is not None and actual != expected):
        _discard_cached(path)
        raise DownloadError(
            f"{listed.path} downloaded from {snapshot.location.repo_id}@{snapshot.commit[:12]} has "
            f"{size} bytes with hash {actual}, but the Hub lists {listed.size} bytes with hash "
            f"{expected}; nothing was stored and the file was removed from the HF cache. Pull "
            "again, and if this repeats, report the repo: its file differs from its listing"
        )
    return RemoteFile(sha256, size, None if listed.sha256 else git_blob)


def _discard_cached(path: Path) -> None:
    """Remove a bad download from the HF cache, so that the next pull downloads it again.

    The cache names a blob after the ETag the Hub sent, which for an LFS file is the expected
    sha256, so a bad blob left there would be reused by every later download.
    """
    for target in (path.resolve(), path):
        try:
            target.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("Cannot remove the bad download %s from the HF cache: %s", target, exc)


def git_blob_id(data: bytes) -> str:
    """Return the git blob id of ``data``: the sha1 of ``blob <size>\\0`` and the bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hash_file(path: Path) -> tuple[str, str, int]:
    size = path.stat().st_size
    sha256, sha1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest(), size


def _link(source: Path, destination: Path) -> None:
    # A hard link costs no copy; the store's tmp/ folder lies on the blobs' file system.
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _pull_parents(library: Library, weights: Path, visiting: frozenset[HubLocation]) -> list[str]:
    """Pull the lineage parents of a composed adapter that came from the Hub; return those missing.

    A parent composed from an ``hf://`` reference has that reference as its label, so it can
    be fetched. Parents that cannot be fetched, or whose pulled id differs (the revision
    moved), stay missing, and the adapter is stored without the link to them.
    """
    from adapterhub.formats.tensorfile import read_safetensors_metadata

    if weights.suffix != ".safetensors" or len(visiting) > MAX_PARENT_DEPTH:
        return []
    try:
        lineage = _lineage(read_safetensors_metadata(weights))
    except AdapterFormatError:
        return []  # Library.add reports the malformed file.
    missing = []
    for parent in lineage.get("parents", ()):
        parent_id, label = parent.get("id"), str(parent.get("label", ""))
        if not isinstance(parent_id, str) or library.store.has_artifact(parent_id):
            continue
        if is_hub_reference(label) and _pull_parent(library, label, parent_id, visiting):
            continue
        missing.append(parent_id)
    return missing


def _pull_parent(library: Library, label: str, parent_id: str, visiting: frozenset[HubLocation]) -> bool:
    try:
        location = parse_location(label)
        if location in visiting:
            return False
        pulled = pull(library, location, _visiting=visiting)
    except AdapterHubError as exc:
        logger.warning("Cannot pull the parent %s (%s): %s", parent_id[:12], label, exc)
        return False
    if pulled.artifact_id != parent_id:
        logger.warning("%s now contains %s, not the parent %s; it has moved since the composition",
                       label, pulled.artifact_id[:12], parent_id[:12])
        return False
    return True


def _lineage(metadata: dict[str, str]) -> dict:
    text = metadata.get("adapterhub.lineage")
    try:
        lineage = json.loads(text) if text else {}
    except ValueError:
        return {}
    return lineage if isinstance(lineage, dict) else {}


def _add(library: Library, folder: Path, target: NamedRef, snapshot: RemoteSnapshot, subfolder: str):
    where = f"{snapshot.location.repo_id}@{snapshot.commit[:12]}" + (f"/{subfolder}" if subfolder else "")
    try:
        return library.add(folder, name=str(target), source=snapshot.location.uri)
    except AdapterFormatError as exc:
        raise NotAnAdapterError(
            f"{str(exc).replace(str(folder), where)}; the repo contains no adapter that adapterhub can read"
        ) from exc
