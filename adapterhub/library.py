"""The adapterhub Python API: adapters in a store, with names, composition and export.

:class:`Library` gives the generic artifact store of :mod:`store` its adapter meaning. Every
CLI command is one call into this class. Torch is imported only by the methods that read
tensors (``add``, ``load``, ``export`` to another format, ``compose``), so listing and
managing the store stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from store import Store
from store.errors import InvalidReferenceError
from store.manifest import FileEntry, Manifest
from store.refs import NamedRef, parse_ref

from adapterhub.errors import ExportError

if TYPE_CHECKING:
    from adapterhub.adapter import LoraAdapter
    from adapterhub.compose.options import ComposeOptions

logger = logging.getLogger(__name__)

ADAPTER_KIND = "adapter"


@dataclass(frozen=True)
class AddResult:
    """The outcome of adding an adapter: its id, whether it was new, the reference set."""

    artifact_id: str
    created: bool
    reference: str | None


@dataclass(frozen=True)
class ComposeOutcome:
    """A composed adapter: its id when stored, its files when written, and its recipe."""

    artifact_id: str
    reference: str | None
    written: tuple[Path, ...]
    lineage: dict[str, Any]


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

    def add(self, path: Path, name: str | None = None, source: str | None = None) -> AddResult:
        """Import the adapter at ``path`` and optionally point ``name[:tag]`` at it.

        The files are stored as they are, so adding the same adapter twice stores nothing
        new. Raises :class:`AdapterFormatError` (or a subclass) before anything is written
        when the files are not a readable adapter.
        """
        from adapterhub import formats

        path = Path(path)
        module = formats.detect(path)
        adapter = module.load(path)
        files = module.source_files(path)
        target = parse_name(name) if name else None

        metadata = adapter_metadata(adapter, module.NAME)
        existed = self._known(files, metadata)
        # A composed adapter names its parents; the store keeps lineage only among stored
        # artifacts, so an adapter whose parents are elsewhere is stored without that link.
        parents = tuple(p for p in _parent_ids(metadata) if self.store.has_artifact(p))
        artifact_id = self.store.add_artifact(ADAPTER_KIND, files, metadata, parents=parents)
        if target:
            self.store.set_ref(target.name, target.tag, artifact_id)
        return AddResult(artifact_id, not existed, str(target) if target else None)

    def list(self, **filters: Any) -> list[dict[str, Any]]:
        """Return the stored adapters as dicts, filtered by the store's index columns."""
        return self.store.list_artifacts(**filters)

    def show(self, reference: str) -> dict[str, Any]:
        """Return everything the store holds about one adapter: manifest, files, refs, lineage."""
        artifact_id = self.store.resolve(reference)
        manifest = self.store.manifest(artifact_id)
        return {
            "id": artifact_id,
            "kind": manifest.kind,
            "refs": [str(entry) for entry in self.store.refs(artifact_id)],
            "files": [entry.to_dict() for entry in manifest.files],
            "metadata": manifest.metadata,
            "parents": list(manifest.parents),
        }

    def load(self, reference: str) -> LoraAdapter:
        """Read a stored adapter into memory."""
        from adapterhub import formats

        artifact_id = self.store.resolve(reference)
        manifest = self.store.manifest(artifact_id)
        module = formats.get(manifest.metadata.get("format", "peft"))
        files = {entry.path: self.store.blobs.path(entry.sha256) for entry in manifest.files}
        return module.load_files(files, f"{reference} ({artifact_id[:12]})")

    def export(self, reference: str, destination: Path, fmt: str = "peft",
               overwrite: bool = False) -> list[Path]:
        """Write a stored adapter to ``destination`` in format ``fmt``; return the files written.

        In its own format the stored bytes are copied unchanged; another format is converted.
        Raises :class:`ExportError` when a file exists there and ``overwrite`` is false.
        """
        from adapterhub import formats

        module = formats.get(fmt)
        artifact_id = self.store.resolve(reference)
        manifest = self.store.manifest(artifact_id)
        if manifest.metadata.get("format", "peft") == fmt:
            contents = {e.path: self.store.blobs.path(e.sha256).read_bytes() for e in manifest.files}
        else:
            contents = module.to_files(self.load(artifact_id))
        return write_files(contents, destination, fmt, overwrite)

    def compose(
        self,
        references: Sequence[str],
        options: ComposeOptions,
        name: str | None = None,
        output: Path | None = None,
        fmt: str = "peft",
        progress: Callable[[int], None] | None = None,
    ) -> ComposeOutcome:
        """Compose adapters given by store reference or path.

        With ``output`` the result is written there; with ``name`` (or without ``output``) it
        is stored and, with ``name``, referenced. Nothing is written when composition fails.
        """
        from adapterhub.compose.engine import compose

        resolved = [self._compose_input(reference) for reference in references]
        result = compose([item for item, _ in resolved], options, progress=progress)
        store_result = name is not None or output is None
        if store_result:
            # Inputs given as paths join the store, so the result's lineage reaches them.
            for _, path in resolved:
                if path is not None:
                    self.add(path)
        return self._record(result, name, output, fmt, store_result)

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

    def _compose_input(self, reference: str):
        from adapterhub import formats
        from adapterhub.compose.engine import ComposeInput

        path = Path(reference)
        if path.exists():
            module = formats.detect(path)
            adapter = module.load(path)
            artifact_id = artifact_id_for(module.source_files(path), adapter_metadata(adapter, module.NAME))
            return ComposeInput(adapter, reference, artifact_id), path
        artifact_id = self.store.resolve(reference)
        return ComposeInput(self.load(artifact_id), reference, artifact_id), None

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
        reference = None
        if store_result:
            target = parse_name(name) if name else None
            with tempfile.TemporaryDirectory(prefix="adapterhub-compose-") as folder:
                files = _stage(contents, Path(folder))
                artifact_id = self.store.add_artifact(
                    ADAPTER_KIND, files, metadata, parents=_parent_ids(metadata)
                )
            if target:
                self.store.set_ref(target.name, target.tag, artifact_id)
                reference = str(target)
        return ComposeOutcome(artifact_id, reference, tuple(written), result.lineage)

    def _known(self, files: list[tuple[str, Path]], metadata: dict[str, Any]) -> bool:
        return self.store.has_artifact(artifact_id_for(files, metadata))


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
    """Write exported files under ``destination``: a folder for PEFT, a file for ``.lora``.

    Each file is written whole under a temporary name and renamed into place. Raises
    :class:`ExportError` before writing anything when a file exists and ``overwrite`` is false.
    """
    from adapterhub.formats.tensorfile import write_atomic

    if fmt == "peft":
        if destination.exists() and not destination.is_dir():
            raise ExportError(f"{destination} is a file; a PEFT adapter is a folder, choose a new path")
        targets = {destination / relpath: data for relpath, data in contents.items()}
    else:
        (data,) = contents.values()
        target = destination / "adapter.lora" if destination.is_dir() else destination
        targets = {target: data}

    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise ExportError(
            f"{', '.join(existing)} already exist; choose an empty destination or pass --force"
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
