"""The Store facade: one store home with its blobs, ref files and index.

Layout of a store home (format version 1)::

    VERSION                 "1\\n": the store format version, checked on open
    blobs/sha256/ab/cdef... immutable, read-only blobs named by the sha256 of their bytes
    tmp/                    staging files on the same file system
    refs/<name>/<tag>       ref files: an artifact id and a newline
    index.db                SQLite index of artifacts, files, refs and lineage (derived data)

Blobs and ref files are the source of truth; ``reindex`` rebuilds index.db from them. Several
processes may use one store at once: blobs are written by idempotent renames, ref files by
atomic replacement, and index writes are short transactions.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from store.artifacts import read_manifest
from store.atomic import write_atomic
from store.blobs import BlobStore
from store.errors import (
    AmbiguousReferenceError,
    ArtifactNotFoundError,
    BlobNotFoundError,
    ManifestError,
    ReferenceNotFoundError,
    StoreNotFoundError,
    StoreVersionError,
    store_io_error,
)
from store.index import Index
from store.maintenance import (
    DEFAULT_GRACE_S,
    GcReport,
    ReindexReport,
    VerifyReport,
    collect_garbage,
    rebuild_index,
    verify_blobs,
)
from store.manifest import FileEntry, Manifest
from store.refs import IdRef, NamedRef, RefEntry, RefFiles, parse_ref, validate_name, validate_tag

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "Removal", "Store", "home_default"]

FORMAT_VERSION = 1
"""The store format version that new stores get."""

SUPPORTED_FORMAT_VERSIONS = (1,)
"""Store format versions that this code opens."""

_PLACEHOLDER_DIGEST = "0" * 64


def home_default() -> Path:
    """Return the default store home.

    That is ``$ADAPTERHUB_HOME`` if set, else ``$XDG_DATA_HOME/adapterhub``, else
    ``~/.local/share/adapterhub``. Empty variables count as unset.
    """
    if os.environ.get("ADAPTERHUB_HOME"):
        return Path(os.environ["ADAPTERHUB_HOME"]).expanduser()
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]).expanduser() / "adapterhub"
    return Path.home() / ".local" / "share" / "adapterhub"


@dataclass(frozen=True)
class Removal:
    """The result of ``Store.remove``: the deleted references and whether the index row went."""

    artifact_id: str
    removed_refs: tuple[str, ...]
    removed_from_index: bool


class Store:
    """A content-addressed artifact store rooted at ``home``.

    Opening checks the VERSION file. With ``create`` (the default) a missing store is
    created. Raises StoreNotFoundError when it is missing and ``create`` is False,
    StoreVersionError for an unsupported format version, StoreIOError when the disk fails
    and IndexDatabaseError when index.db cannot be opened.

    Each Store has its own SQLite connection, so use an instance from one thread only.
    Close it with ``close`` or by using it as a context manager.
    """

    def __init__(self, home: str | os.PathLike[str], *, create: bool = True) -> None:
        self.home = Path(home).expanduser()
        self.blobs = BlobStore(self.home)
        self.ref_files = RefFiles(self.home / "refs", self.blobs.tmp_dir)
        self._open_layout(create)
        self.index = Index(self.home / "index.db")

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, *, create: bool = True) -> Store:
        """Open the store at ``home``, or at ``home_default()`` when ``home`` is None."""
        return cls(home_default() if home is None else home, create=create)

    def close(self) -> None:
        """Close the index connection."""
        self.index.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def put_file(self, source: str | os.PathLike[str]) -> tuple[str, int]:
        """Store the file ``source`` as a blob and return ``(digest, size)``.

        See ``add_manifest`` for turning stored blobs into an artifact.
        """
        return self.blobs.put_file(Path(source))

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob and return its digest; see ``add_manifest``."""
        return self.blobs.put_bytes(data)

    def add_artifact(
        self,
        kind: str,
        files: Sequence[tuple[str, str | os.PathLike[str]]],
        metadata: dict[str, Any] | None = None,
        parents: Iterable[str] = (),
    ) -> str:
        """Store ``files`` (relative path, source file) as an artifact and return its id.

        The manifest is validated before any file is stored, so an invalid path, kind or
        metadata value raises ManifestError without writing anything. Adding the same
        content again returns the same id, stores nothing new and keeps the index row with
        its original ``created`` time. Also raises StoreIOError when a source cannot be
        read and ArtifactNotFoundError when a parent is not in the store.
        """
        metadata = {} if metadata is None else metadata
        parents = tuple(parents)
        Manifest(
            kind=kind,
            files=tuple(FileEntry(path, _PLACEHOLDER_DIGEST, 0) for path, _ in files),
            metadata=metadata,
            parents=parents,
        )
        entries = []
        for path, source in files:
            digest, size = self.blobs.put_file(Path(source))
            entries.append(FileEntry(path, digest, size))
        return self.add_manifest(Manifest(kind, tuple(entries), metadata, parents))

    def add_manifest(self, manifest: Manifest) -> str:
        """Store and index a manifest whose file blobs are already stored; return the artifact id.

        Use this after writing blobs with ``put_file`` or ``put_bytes``, for example when a
        composition writes its output files itself. Raises BlobNotFoundError listing every
        file whose blob is missing, ManifestError when a blob's size differs from its
        entry, and ArtifactNotFoundError listing every parent that is not in the store.
        """
        self._check_files_stored(manifest)
        missing_parents = [parent for parent in manifest.parents if not self.has_artifact(parent)]
        if missing_parents:
            raise ArtifactNotFoundError(
                f"Cannot add the {manifest.kind} artifact: its parents "
                f"{', '.join(missing_parents)} are not in the store. "
                "Add the parent artifacts first."
            )

        artifact_id = self.blobs.put_bytes(manifest.to_bytes())
        if self.index.add_artifact(artifact_id, manifest, self.blobs.created(artifact_id)):
            logger.info("Added %s artifact %s", manifest.kind, artifact_id)
        else:
            logger.info("%s artifact %s is already stored", manifest.kind.capitalize(), artifact_id)
        return artifact_id

    def manifest(self, artifact_id: str) -> Manifest:
        """Return the manifest of ``artifact_id``, read and verified from its blob.

        Raises InvalidDigestError, ArtifactNotFoundError, CorruptBlobError or ManifestError.
        """
        return read_manifest(self.blobs, artifact_id)

    def has_artifact(self, artifact_id: str) -> bool:
        """Return whether the store has a manifest blob for ``artifact_id``.

        Raises CorruptBlobError or ManifestError when the blob exists but is damaged.
        """
        try:
            self.manifest(artifact_id)
        except ArtifactNotFoundError:
            return False
        return True

    def resolve(self, ref_text: str) -> str:
        """Return the artifact id that a reference names.

        ``name[:tag]`` is read from its ref file. ``sha256:<prefix>`` and a 64-digit id are
        looked up in the index, then among the manifest blobs when the index has no match.
        Raises InvalidReferenceError for bad syntax, ReferenceNotFoundError (with close
        matches) when nothing matches, and AmbiguousReferenceError listing every candidate
        with its references when a prefix matches several artifacts.
        """
        ref = parse_ref(ref_text)
        if isinstance(ref, NamedRef):
            artifact_id = self.ref_files.read(ref.name, ref.tag)
            if artifact_id is None:
                raise self._named_ref_not_found(ref)
            return artifact_id
        return self._resolve_prefix(ref)

    def set_ref(self, name: str, tag: str, artifact_id: str) -> None:
        """Point ``name:tag`` at ``artifact_id``, replacing its earlier target.

        The artifact's manifest must be in the store. If its index row was removed, it is
        indexed again. Raises InvalidReferenceError, ReferenceConflictError,
        ArtifactNotFoundError or StoreIOError.
        """
        validate_name(name)
        validate_tag(tag)
        manifest = self.manifest(artifact_id)
        self._touch_artifact(artifact_id, manifest)
        if not self.index.has_artifact(artifact_id):
            self.index.add_artifact(artifact_id, manifest, self.blobs.created(artifact_id))

        self.ref_files.write(name, tag, artifact_id)
        self.index.set_ref(name, tag, artifact_id)
        logger.info("Set reference %s:%s to %s", name, tag, artifact_id)

    def remove_ref(self, name: str, tag: str) -> str:
        """Delete the reference ``name:tag`` and return the artifact id it pointed at.

        No blob and no index row of the artifact is deleted. Raises ReferenceNotFoundError
        with close matches when the reference does not exist.
        """
        artifact_id = self.ref_files.read(name, tag)
        if artifact_id is None or not self.ref_files.delete(name, tag):
            raise self._named_ref_not_found(NamedRef(name, tag))
        self.index.remove_ref(name, tag)
        logger.info("Removed reference %s:%s", name, tag)
        return artifact_id

    def refs(self, artifact_id: str | None = None) -> list[RefEntry]:
        """Return the references sorted by name and tag, only those to ``artifact_id`` if given."""
        entries = self.ref_files.entries()
        if artifact_id is None:
            return entries
        return [entry for entry in entries if entry.artifact_id == artifact_id]

    def remove(self, ref_text: str) -> Removal:
        """Remove what a reference names, without deleting any bytes.

        - ``name[:tag]`` deletes that one reference. The artifact stays indexed.
        - ``sha256:<prefix>`` or a full id deletes every reference to the artifact and its
          index rows (artifacts, files and its own lineage rows).

        The blobs stay until ``gc`` finds them unreachable, and until then ``reindex`` lists
        an unindexed artifact again. Raises the errors of ``resolve``.
        """
        ref = parse_ref(ref_text)
        if isinstance(ref, NamedRef):
            artifact_id = self.remove_ref(ref.name, ref.tag)
            return Removal(artifact_id, (str(ref),), removed_from_index=False)

        artifact_id = self._resolve_prefix(ref)
        was_indexed = self.index.has_artifact(artifact_id)
        removed = []
        for entry in self.refs(artifact_id):
            if self.ref_files.delete(entry.name, entry.tag):
                removed.append(str(entry))
            self.index.remove_ref(entry.name, entry.tag)
        self.index.remove_artifacts([artifact_id])
        logger.info("Removed artifact %s and %d references to it", artifact_id, len(removed))
        return Removal(artifact_id, tuple(removed), removed_from_index=was_indexed)

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
        """Return the indexed artifacts that match every given filter.

        The rows are ordered by created time, then id. See ``Index.list_artifacts`` for the
        filters and the keys of each row, which include ``refs`` and ``parents``.
        """
        return self.index.list_artifacts(
            kind=kind,
            base_model=base_model,
            peft_type=peft_type,
            min_rank=min_rank,
            max_rank=max_rank,
            target_module=target_module,
            tag=tag,
            name=name,
        )

    def gc(self, dry_run: bool = False, grace: float = DEFAULT_GRACE_S) -> GcReport:
        """Delete unreachable blobs older than ``grace`` seconds; see ``store.maintenance``.

        References, lineage parents of reachable artifacts and fresh blobs keep blobs alive,
        so a process adding an artifact concurrently is safe. Unreachable artifacts leave
        the index, and staging files untouched for an hour leave tmp/.
        """
        return collect_garbage(self.blobs, self.ref_files, self.index, dry_run=dry_run, grace=grace)

    def verify(self) -> VerifyReport:
        """Re-hash every blob and report corrupt ones and missing ones that something needs."""
        return verify_blobs(self.blobs, self.ref_files)

    def reindex(self) -> ReindexReport:
        """Rebuild index.db from the manifest blobs and ref files."""
        return rebuild_index(self.blobs, self.ref_files, self.index)

    def _open_layout(self, create: bool) -> None:
        version_file = self.home / "VERSION"
        try:
            text = version_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            if not create:
                raise StoreNotFoundError(
                    f"No store at '{self.home}': '{version_file}' is missing. Open it with "
                    "create=True to create a store there, or set ADAPTERHUB_HOME to an existing "
                    "store."
                ) from None
            self._create_layout(version_file)
            return
        except OSError as exc:
            raise store_io_error("read", version_file, exc) from exc

        _check_format_version(text, version_file)
        self._create_folders()

    def _create_layout(self, version_file: Path) -> None:
        self._create_folders()
        write_atomic(version_file, f"{FORMAT_VERSION}\n".encode("ascii"), self.blobs.tmp_dir)
        logger.info("Created store at %s", self.home)

    def _create_folders(self) -> None:
        self.blobs.create_folders()
        try:
            self.ref_files.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_io_error("create the folder", self.ref_files.root, exc) from exc

    def _check_files_stored(self, manifest: Manifest) -> None:
        missing = []
        wrong_size = []
        for entry in manifest.files:
            try:
                size = self.blobs.stat(entry.sha256).st_size
            except BlobNotFoundError:
                missing.append(f"'{entry.path}' ({entry.sha256})")
                continue
            if size != entry.size:
                wrong_size.append(
                    f"'{entry.path}' is listed with {entry.size} bytes, but its blob has {size}"
                )
        if missing:
            raise BlobNotFoundError(
                f"Cannot add the {manifest.kind} artifact: no blob for the files "
                f"{', '.join(missing)}. Store each file with put_file before adding the manifest."
            )
        if wrong_size:
            raise ManifestError(
                f"Invalid manifest: {'; '.join(wrong_size)}. Use the size that put_file returned."
            )

    def _touch_artifact(self, artifact_id: str, manifest: Manifest) -> None:
        """Refresh the ctime of an artifact's blobs so that a concurrent gc keeps them."""
        self.blobs.touch(artifact_id)
        for entry in manifest.files:
            self.blobs.touch(entry.sha256)

    def _resolve_prefix(self, ref: IdRef) -> str:
        candidates = self.index.ids_with_prefix(ref.prefix)
        if not candidates:
            candidates = self._manifest_blobs_with_prefix(ref.prefix)
        if not candidates:
            raise ReferenceNotFoundError(
                f"No artifact id starts with '{ref.prefix}' in the store '{self.home}'. "
                "List the artifacts to find the right id.",
                reference=str(ref),
            )
        if len(candidates) > 1:
            raise self._ambiguous_prefix(ref, candidates)
        return candidates[0]

    def _manifest_blobs_with_prefix(self, prefix: str) -> list[str]:
        folder = self.blobs.root / prefix[:2]
        try:
            names = sorted(name for name in os.listdir(folder) if name.startswith(prefix[2:]))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise store_io_error("list the folder", folder, exc) from exc
        return [prefix[:2] + name for name in names if self.has_artifact(prefix[:2] + name)]

    def _ambiguous_prefix(self, ref: IdRef, candidates: list[str]) -> AmbiguousReferenceError:
        refs = self.index.refs_by_artifact()
        lines = [
            f"  {candidate} ({', '.join(refs.get(candidate, [])) or 'no references'})"
            for candidate in candidates
        ]
        return AmbiguousReferenceError(
            f"Reference '{ref}' is ambiguous: {len(candidates)} artifacts have ids starting with "
            f"'{ref.prefix}':\n" + "\n".join(lines) + "\nUse more hex digits of the id.",
            reference=str(ref),
            candidates=tuple(candidates),
        )

    def _named_ref_not_found(self, ref: NamedRef) -> ReferenceNotFoundError:
        # Suggest the other tags of the same name first, then the tags of similar names.
        entries = self.ref_files.entries()
        names = sorted({entry.name for entry in entries})
        similar_names = [ref.name, *difflib.get_close_matches(ref.name, names, n=3)]
        suggestions = [
            str(entry) for name in similar_names for entry in entries if entry.name == name
        ]
        matches = tuple(dict.fromkeys(suggestions))
        if matches:
            advice = f"Close matches: {', '.join(matches)}."
        else:
            advice = "List the references to see the valid names."
        return ReferenceNotFoundError(
            f"Reference '{ref}' not found in the store '{self.home}'. {advice}",
            reference=str(ref),
            close_matches=matches,
        )


def _check_format_version(text: str, version_file: Path) -> None:
    found = text.strip()
    if found.isdigit() and int(found) in SUPPORTED_FORMAT_VERSIONS:
        return
    supported = ", ".join(str(version) for version in SUPPORTED_FORMAT_VERSIONS)
    raise StoreVersionError(
        f"Unsupported store format version {found!r} in '{version_file}'. This code supports "
        f"store format versions: {supported}. Upgrade adapterhub to open this store, or set "
        "ADAPTERHUB_HOME to another store.",
        found=found,
        supported=SUPPORTED_FORMAT_VERSIONS,
    )
