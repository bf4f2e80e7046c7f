"""The adapterhub Python API: adapters in a store, with names, composition and export.

:class:`Library` gives the generic artifact store of :mod:`store` its adapter meaning. Every
CLI command is one call into this class. Torch is imported only by the methods that read
tensors (``add``, ``load``, ``export`` to another format, ``compose``), so listing and
managing the store stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from store import Store
from store.errors import InvalidReferenceError, ReferenceNotFoundError
from store.manifest import FileEntry, Manifest
from store.refs import NamedRef, parse_ref

from adapterhub.errors import AdapterFormatError, ExportError, InvalidOptionError

if TYPE_CHECKING:
    from adapterhub.adapter import LoraAdapter
    from adapterhub.compose.compare import Comparison
    from adapterhub.compose.options import ComposeOptions
    from adapterhub.compose.stack import StackOutcome
    from adapterhub.hub.pull import PullResult
    from adapterhub.hub.options import PushOptions
    from adapterhub.hub.push import PushResult
    from adapterhub.hub.sync import SyncEntry

logger = logging.getLogger(__name__)

ADAPTER_KIND = "adapter"


@dataclass(frozen=True)
class AddResult:
    """The outcome of adding an adapter: its id, whether it was new, the reference set."""

    artifact_id: str
    created: bool
    reference: str | None
    replaced: str | None = None  # the id the reference pointed at before, if it moved


@dataclass(frozen=True)
class ComposeOutcome:
    """A composed adapter: its id when stored, its files when written, and its recipe."""

    artifact_id: str
    reference: str | None
    written: tuple[Path, ...]
    lineage: dict[str, Any]
    replaced: str | None = None  # the id the reference pointed at before, if it moved


class Library:
    """Adapters in a content-addressed store."""

    def __init__(self, home: Path | str | None = None, create: bool = True) -> None:
        self.home = Path(home) if home is not None else None
        self.create = create
        self._store: Store | None = None

    @classmethod
    def open(cls, home: Path | str | None = None, create: bool = True) -> Library:
        """Use the store at ``home`` (default: ``$ADAPTERHUB_HOME`` or the XDG data folder).

        The store is opened on first use, so composing files to files never creates one.
        ``create=False`` makes that first use raise :class:`store.StoreNotFoundError` when
        there is no store.
        """
        return cls(home, create)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.home, create=self.create)
        return self._store

    def close(self) -> None:
        """Close the store's index connection if the store was opened; it reopens on next use."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def add(self, path: Path, name: str | None = None, source: str | None = None,
            meta: dict[str, str | None] | None = None, allow_nonfinite: bool = False) -> AddResult:
        """Import the adapter at ``path`` and optionally point ``name[:tag]`` at it.

        The files are stored as they are, so adding the same adapter twice stores nothing
        new. ``meta`` (a description, say) is merged into the adapter's annotations, which
        live beside it in the store and so never change its id. An empty value removes a key.
        Raises :class:`AdapterFormatError` (or a subclass) before anything is written when
        the files are not a readable adapter, hold NaN or infinite values (unless
        ``allow_nonfinite``), or are symbolic links leading out of the adapter folder.
        """
        from adapterhub import formats
        from adapterhub.adapter import check_finite
        from adapterhub.formats.tensorfile import check_folder_files

        path = Path(path)
        module = formats.detect(path)
        files = module.source_files(path)
        if path.is_dir():
            check_folder_files(path, files)
        adapter = module.load(path)
        if not allow_nonfinite:
            check_finite(adapter, str(path))
        target = parse_name(name) if name else None

        metadata = adapter_metadata(adapter, module.NAME)
        existed = self._known(files, metadata)
        # A composed adapter names its parents. The store links only stored artifacts, so an
        # adapter whose parents are not in this store is stored without that link.
        parents = tuple(p for p in _parent_ids(metadata) if self.store.has_artifact(p))
        previous = self._ref_target(target)
        artifact_id = self.store.add_artifact(ADAPTER_KIND, files, metadata, parents=parents,
                                              ref=target, annotations=meta)
        replaced = previous if previous not in (None, artifact_id) else None
        return AddResult(artifact_id, not existed, str(target) if target else None, replaced)

    def tag(self, reference: str, name: str) -> tuple[str, str]:
        """Point ``name[:tag]`` at the adapter ``reference`` names; return its id and the reference."""
        target = parse_name(name)
        artifact_id = self.resolve(reference)
        self.store.set_ref(target.name, target.tag, artifact_id)
        return artifact_id, str(target)

    def annotate(self, reference: str, meta: dict[str, str | None]) -> dict[str, str]:
        """Merge ``meta`` into an adapter's annotations and return them; see :meth:`add`."""
        return self.store.annotate(self.resolve(reference), meta)

    def reindex(self):
        """Rebuild the index from the store's files; see :meth:`store.Store.reindex`."""
        return self.store.reindex()

    def resolve(self, reference: str) -> str:
        """Return the artifact id a reference names: any store reference, or ``hf://OWNER/REPO[@REV]``.

        An ``hf://`` reference is pulled on first use and read from the store afterwards; see
        :meth:`pull`. Raises the store's reference errors, or a :class:`HubError` leaf when
        the pull fails.
        """
        if reference.startswith("hf://"):
            from adapterhub.hub.references import resolve_reference

            return resolve_reference(self, reference)
        try:
            return self.store.resolve(reference)
        except (InvalidReferenceError, ReferenceNotFoundError) as exc:
            if _looks_like_path(reference):
                raise AdapterFormatError(
                    f"{reference}: no such file or folder, and no stored adapter has that name; "
                    "check the path, or run adapterhub ls to see the stored names"
                ) from exc
            if not (isinstance(exc, ReferenceNotFoundError) and _HEX_PREFIX.fullmatch(reference)):
                raise
        # The id column of ``ls`` shows a bare prefix; accept it as ``sha256:<prefix>``.
        return self.store.resolve(f"sha256:{reference}")

    def pull(self, repo: str, name: str | None = None, subfolder: str | None = None) -> PullResult:
        """Import the PEFT adapter of Hub repo ``OWNER/REPO[@REVISION]``; see :mod:`adapterhub.hub.pull`.

        Only files whose content the store lacks are downloaded. ``name`` defaults to
        ``OWNER/REPO`` (tagged with the revision when it is not main).
        """
        from adapterhub.hub.locations import parse_location
        from adapterhub.hub.pull import pull

        return pull(self, parse_location(repo), name=name, subfolder=subfolder)

    def push(self, reference: str, options: PushOptions) -> PushResult:
        """Commit a stored adapter to the Hub as a PEFT folder with its card; see :mod:`adapterhub.hub.push`."""
        from adapterhub.hub.push import push

        return push(self, reference, options)

    def sync(self, references: Sequence[str] = (), status_only: bool = False) -> list[SyncEntry]:
        """Compare recorded Hub locations with the store, and pull or push what can move safely.

        See :mod:`adapterhub.hub.sync` for the states; ``status_only`` only reports them.
        """
        from adapterhub.hub.sync import sync

        return sync(self, references, status_only=status_only)

    def search_hub(self, query: str | None = None, base_model: str | None = None,
                   limit: int = 20) -> list[dict[str, Any]]:
        """List PEFT adapters on the Hub; see :func:`adapterhub.hub.search.search_hub`."""
        from adapterhub.hub.search import search_hub

        return search_hub(query, base_model=base_model, limit=limit)

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        """Return the stored adapters as dicts, filtered by the store's index columns.

        The filters are those of :meth:`store.Store.list_artifacts`; ``created_after`` may
        also be ISO-8601 text. Raises :class:`InvalidOptionError` for a malformed date, a
        rank below 1, a rank range that is empty, or search text without a word.
        """
        return self.store.list_artifacts(**check_list_filters(filters))

    def show(self, reference: str) -> dict[str, Any]:
        """Return everything the store records about one adapter: manifest, files, refs, lineage."""
        artifact_id = self.resolve(reference)
        manifest = self.store.manifest(artifact_id)
        return {
            "id": artifact_id,
            "kind": manifest.kind,
            "refs": [str(entry) for entry in self.store.refs(artifact_id)],
            "files": [entry.to_dict() for entry in manifest.files],
            "metadata": manifest.metadata,
            "annotations": self.store.annotations(artifact_id),
            "parents": list(manifest.parents),
        }

    def load(self, reference: str) -> LoraAdapter:
        """Read a stored adapter into memory; a stack raises AdapterFormatError."""
        return self._load_artifact(self.resolve(reference), reference)

    def _load_artifact(self, artifact_id: str, reference: str) -> LoraAdapter:
        from adapterhub import formats

        manifest = self.store.manifest(artifact_id)
        if manifest.kind == "stack":
            raise AdapterFormatError(
                f"{reference} is a stack of {len(manifest.parents)} adapters, not one adapter; "
                f"compose it into one (adapterhub compose {reference}) or export its components"
            )
        module = formats.get(manifest.metadata.get("format", "peft"))
        files = {entry.path: self.store.blobs.path(entry.sha256) for entry in manifest.files}
        return module.load_files(files, f"{reference} ({artifact_id[:12]})")

    def export(self, reference: str, destination: Path, fmt: str = "peft",
               overwrite: bool = False) -> list[Path]:
        """Write a stored adapter to ``destination`` in format ``fmt``; return the files written.

        In its own format the stored bytes are copied unchanged; another format is converted.
        A stack is written as ``stack.json`` plus one PEFT folder per component. Raises
        :class:`ExportError` when a file exists there and ``overwrite`` is false, or when a
        stack is asked for in another format than ``peft``.
        """
        artifact_id = self.resolve(reference)
        manifest = self.store.manifest(artifact_id)
        if manifest.kind == "stack":
            from adapterhub.compose.stack import stack_contents

            if fmt != "peft":
                raise ExportError(
                    f"{reference} is a stack, which exports as PEFT folders only; drop --format "
                    f"{fmt}, or materialize it first (adapterhub compose {reference} --name NAME)"
                )
            contents = stack_contents(self, manifest, reference)
        else:
            contents = self._export_contents(artifact_id, fmt)
        return write_files(contents, destination, fmt, overwrite)

    def _export_contents(self, artifact_id: str, fmt: str) -> dict[str, bytes]:
        from adapterhub import formats

        module = formats.get(fmt)
        manifest = self.store.manifest(artifact_id)
        if manifest.metadata.get("format", "peft") == fmt:
            # read_bytes re-hashes each blob and raises CorruptBlobError, so a corrupt blob is not exported.
            return {e.path: self.store.blobs.read_bytes(e.sha256) for e in manifest.files}
        return module.to_files(self.load(artifact_id))

    def compose(
        self,
        references: Sequence[str],
        options: ComposeOptions,
        name: str | None = None,
        output: Path | None = None,
        fmt: str = "peft",
        progress: Callable[[int, int], None] | None = None,
    ) -> ComposeOutcome:
        """Compose adapters given by store reference or path.

        With ``output`` the result is written there; with ``name`` (or without ``output``) it
        is stored and, with ``name``, referenced. Nothing is written when composition fails.
        A stack among the references stands for its components, each weighted by its weight
        in the stack times the stack's weight.
        """
        from adapterhub.compose.engine import compose
        from adapterhub.compose.stack import expand_stacks

        entries, options = expand_stacks(self, references, options)
        resolved = [self._compose_input(reference, label) for reference, label in entries]
        result = compose([item for item, _ in resolved], options, progress=progress)
        store_result = name is not None or output is None
        if store_result:
            # Inputs given as paths join the store, so the result's lineage reaches them.
            for _, path in resolved:
                if path is not None:
                    self.add(path)
        return self._record(result, name, output, fmt, store_result)

    def stack(self, references: Sequence[str], weights: Sequence[float] | None = None,
              name: str | None = None, materialize: bool = False,
              allow_base_mismatch: bool = False, keep_head: str | None = None) -> StackOutcome:
        """Store adapters as a stack that keeps them apart; see :mod:`adapterhub.compose.stack`.

        With ``materialize`` the exact ``cat`` adapter is stored instead. Components given
        as paths are added to the store. ``allow_base_mismatch`` and ``keep_head`` act as in
        :class:`ComposeOptions`; the stack is checked as if it were composed.
        """
        from adapterhub.compose.stack import create_stack

        return create_stack(self, references, weights, name, materialize,
                            allow_base_mismatch=allow_base_mismatch, keep_head=keep_head)

    def inspect(self, first: str, second: str) -> Comparison:
        """Compare two adapters module by module; see :mod:`adapterhub.compose.compare`."""
        from adapterhub.compose.compare import compare

        return compare(self._compose_input(first)[0], self._compose_input(second)[0])

    def remove(self, reference: str):
        """Remove a reference (or every reference of an id); bytes stay until ``gc``.

        See :meth:`store.Store.remove` for the exact rules.
        """
        return self.store.remove(reference)

    def gc(self, dry_run: bool = False):
        """Delete blobs that no referenced artifact reaches; see :meth:`store.Store.gc`."""
        return self.store.gc(dry_run=dry_run)

    def verify(self):
        """Re-hash every blob and report each corrupt or missing one."""
        return self.store.verify()

    def card(self, reference: str, template: Path | str | None = None,
             overrides: dict[str, Any] | None = None, existing: str | None = None) -> str:
        """Render the README.md model card of a stored adapter or stack and return its text.

        See :func:`adapterhub.cards.render_card` for the arguments; raises
        :class:`CardError` for template errors and metadata the Hub would reject.
        """
        from adapterhub.cards import render_card

        return render_card(self, reference, template=template, overrides=overrides,
                           existing=existing)

    def _compose_input(self, reference: str, label: str | None = None):
        from adapterhub import formats
        from adapterhub.compose.engine import ComposeInput

        label = reference if label is None else label
        path = Path(reference)
        if path.exists():
            module = formats.detect(path)
            adapter = module.load(path)
            artifact_id = artifact_id_for(module.source_files(path), adapter_metadata(adapter, module.NAME))
            return ComposeInput(adapter, label, artifact_id), path
        artifact_id = self.resolve(reference)
        return ComposeInput(self._load_artifact(artifact_id, reference), label, artifact_id), None

    def _record(self, result, name: str | None, output: Path | None, fmt: str,
                store_result: bool) -> ComposeOutcome:
        from adapterhub import formats

        module = formats.get(fmt)
        contents = module.to_files(result.adapter)
        written: list[Path] = []
        if output is not None:
            written = write_files(contents, Path(output), fmt, overwrite=False)

        metadata = adapter_metadata(result.adapter, fmt)
        artifact_id = artifact_id_for_contents(contents, metadata)
        reference = replaced = None
        if store_result:
            target = parse_name(name) if name else None
            previous = self._ref_target(target)
            with tempfile.TemporaryDirectory(prefix="adapterhub-compose-") as folder:
                files = _stage(contents, Path(folder))
                artifact_id = self.store.add_artifact(
                    ADAPTER_KIND, files, metadata, parents=_parent_ids(metadata), ref=target
                )
            reference = str(target) if target else None
            replaced = previous if previous not in (None, artifact_id) else None
        return ComposeOutcome(artifact_id, reference, tuple(written), result.lineage, replaced)

    def _ref_target(self, target: NamedRef | None) -> str | None:
        """Return the id ``target`` names now, or None when it names nothing yet."""
        if target is None:
            return None
        try:
            return self.store.resolve(str(target))
        except ReferenceNotFoundError:
            return None

    def _known(self, files: list[tuple[str, Path]], metadata: dict[str, Any]) -> bool:
        return self.store.has_artifact(artifact_id_for(files, metadata))


def check_list_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Validate and convert the filters of :meth:`Library.list`; see there for the errors."""
    filters = dict(filters)
    created_after = filters.get("created_after")
    if isinstance(created_after, str):
        try:
            filters["created_after"] = datetime.fromisoformat(created_after)
        except ValueError:
            raise InvalidOptionError(
                f"created-after date {created_after!r} is not ISO-8601; write e.g. 2025-06-01 "
                "or 2025-06-01T12:00:00+02:00 (UTC unless an offset is given)"
            ) from None
    low, high = filters.get("min_rank"), filters.get("max_rank")
    for label, rank in (("min-rank", low), ("max-rank", high)):
        if rank is not None and rank < 1:
            raise InvalidOptionError(f"{label} {rank} is invalid; expected a positive integer")
    if low is not None and high is not None and low > high:
        raise InvalidOptionError(f"min-rank {low} is above max-rank {high}, so nothing can match")
    search = filters.get("search")
    if search is not None and not re.search(r"\w", search):
        raise InvalidOptionError(
            f"search text {search!r} has no letters or digits; search for words such as a "
            "name, tag or description"
        )
    return filters


_HEX_PREFIX = re.compile(r"[0-9a-f]{8,64}")
_PATH_SUFFIXES = (".lora", ".safetensors", ".bin", ".json")


def _looks_like_path(text: str) -> bool:
    """Return whether a reference that resolved to nothing was probably meant as a path."""
    parent = Path(text).parent
    return (text.startswith((".", "/", "~")) or text.endswith(_PATH_SUFFIXES)
            or (parent != Path(".") and parent.is_dir()))


def parse_name(text: str) -> NamedRef:
    """Parse ``NAME[:TAG]`` for naming an adapter; ids and prefixes are not names."""
    ref = parse_ref(text)
    if not isinstance(ref, NamedRef):
        raise InvalidReferenceError(
            f"{text!r} looks like an artifact id; a name must not be one, choose a name such as "
            "task-adapter or task-adapter:v1"
        )
    return ref


def adapter_metadata(adapter: LoraAdapter, fmt: str) -> dict[str, Any]:
    """Return the manifest metadata of an adapter: the facts derived from its files."""
    return {"format": fmt, **adapter.describe()}


def artifact_id_for(files: list[tuple[str, Path]], metadata: dict[str, Any]) -> str:
    """Return the id an adapter would have in any store, without storing it."""
    entries = [FileEntry(relpath, _sha256_file(path), path.stat().st_size) for relpath, path in files]
    return Manifest(kind=ADAPTER_KIND, files=tuple(sorted(entries, key=lambda e: e.path)),
                    metadata=metadata, parents=_parent_ids(metadata)).digest()


def artifact_id_for_contents(contents: dict[str, bytes], metadata: dict[str, Any]) -> str:
    """Return the id of an adapter given as file contents in memory."""
    entries = [FileEntry(relpath, hashlib.sha256(data).hexdigest(), len(data))
               for relpath, data in sorted(contents.items())]
    return Manifest(kind=ADAPTER_KIND, files=tuple(entries), metadata=metadata,
                    parents=_parent_ids(metadata)).digest()


def write_files(contents: dict[str, bytes], destination: Path, fmt: str, overwrite: bool) -> list[Path]:
    """Write exported files under ``destination``: a folder for PEFT, a file for the others.

    A single-file format written into an existing folder takes its name in the store
    (``adapter.lora``, ``lora.safetensors``, ``pytorch_lora_weights.safetensors``).

    Each file is written whole under a temporary name and renamed into place. Raises
    :class:`ExportError` before writing anything when a file exists and ``overwrite`` is false.
    """
    from adapterhub.formats.tensorfile import write_atomic

    if fmt == "peft":
        if destination.exists() and not destination.is_dir():
            raise ExportError(f"{destination} is a file; a PEFT adapter is a folder, choose a new path")
        targets = {destination / relpath: data for relpath, data in contents.items()}
    else:
        ((relpath, data),) = contents.items()
        target = destination / relpath if destination.is_dir() else destination
        targets = {target: data}

    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{', '.join(existing)} already {'exists' if len(existing) == 1 else 'exist'}; "
            "choose an empty destination or pass --force"
        )
    for path, data in targets.items():
        write_atomic(path, data)
    return sorted(targets)


def _stage(contents: dict[str, bytes], folder: Path) -> list[tuple[str, Path]]:
    files = []
    for relpath, data in sorted(contents.items()):
        path = folder / relpath
        path.write_bytes(data)
        files.append((relpath, path))
    return files


def _parent_ids(metadata: dict[str, Any]) -> tuple[str, ...]:
    lineage = metadata.get("lineage") or {}
    return tuple(parent["id"] for parent in lineage.get("parents", ()))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
