"""The Store facade: one store home with its blobs, ref files and index.

Layout of a store home (format version 1)::

    VERSION                 "1\\n": the store format version, checked on open
    blobs/sha256/ab/cdef... immutable, read-only blobs named by the sha256 of their bytes
    tmp/                    staging files on the same file system
    refs/<name>/<tag>       ref files: an artifact id and a newline
    annotations/ab/cdef...json  user annotations of an artifact (see store.annotations)
    locks/store, locks/gate the store lock (see store.locking)
    index.db                SQLite index of artifacts, files, refs, lineage and search (derived)

Blobs, ref files and annotation files are the source of truth; ``reindex`` rebuilds index.db
from them. docs/store-format.md specifies the format. Several processes may use one store at
once: blobs are written by idempotent renames, ref files by atomic replacement, index writes
are short transactions, and gc holds the store lock exclusively while writers share it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from store.annotations import AnnotationFiles, validate_annotations
from store.artifacts import read_manifest
from store.atomic import StagedFile
from store.blobs import BlobStore
from store.errors import ArtifactNotFoundError, StoreError
from store.index import Index
from store.layout import (
    FORMAT_VERSION,
    SUPPORTED_FORMAT_VERSIONS,
    home_default,
    open_layout,
)
from store.locking import LOCKS_AVAILABLE, StoreLock
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
from store.refs import (
    NamedRef,
    RefEntry,
    RefFiles,
    parse_ref,
    validate_name,
    validate_tag,
)
from store.resolve import named_ref_not_found, resolve_prefix
from store.writes import Publication, check_files_stored, unneeded_blobs

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_VERSION", "SUPPORTED_FORMAT_VERSIONS", "Removal", "Store", "home_default"]

ROLLBACK_LOCK_TIMEOUT_S = 30.0
"""How long a failed write waits for the exclusive lock to delete the blobs it created."""

_PLACEHOLDER_DIGEST = "0" * 64


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

    Each Store has its own SQLite connection and lock state, so use an instance from one
    thread only. Close it with ``close`` or by using it as a context manager.
    """

    def __init__(self, home: str | os.PathLike[str], *, create: bool = True) -> None:
        self.home = Path(home).expanduser()
        self.blobs = BlobStore(self.home)
        self.ref_files = RefFiles(self.home / "refs", self.blobs.tmp_dir)
        self.annotation_files = AnnotationFiles(self.home / "annotations", self.blobs.tmp_dir)
        self.lock = StoreLock(self.home / "locks")
        self._new_blobs: list[str] = []
        open_layout(self.home, self.blobs, self.ref_files, self.lock, create=create)
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

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the store lock shared for a block of writes, so gc waits until it ends.

        Every write method takes the lock itself. Wrap several calls in one block when a
        later call relies on blobs that an earlier one stored (``put_file`` and then
        ``add_manifest``). If the block raises, the blobs that it stored for the first time
        are deleted again, unless something else in the store needs them by then.
        """
        if self.lock.held is not None:
            yield
            return
        self._new_blobs = []
        try:
            with self.lock.shared():
                yield
        except BaseException:
            self._discard_new_blobs()
            raise
        finally:
            self._new_blobs = []

    def put_file(self, source: str | os.PathLike[str]) -> tuple[str, int]:
        """Store the file ``source`` as a blob and return ``(digest, size)``.

        See ``add_manifest`` for turning stored blobs into an artifact.
        """
        with self.writing():
            return self.blobs.put_file(Path(source))

    def put_bytes(self, data: bytes) -> str:
        """Store ``data`` as a blob and return its digest; see ``add_manifest``."""
        with self.writing():
            return self.blobs.put_bytes(data)

    def add_artifact(
        self,
        kind: str,
        files: Sequence[tuple[str, str | os.PathLike[str]]],
        metadata: dict[str, Any] | None = None,
        parents: Iterable[str] = (),
        *,
        ref: NamedRef | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> str:
        """Store ``files`` (relative path, source file) as an artifact and return its id.

        ``ref`` is pointed at the artifact and ``annotations`` are merged into its
        annotations (see ``annotate``) as part of the same write. The manifest, reference
        and annotations are validated before any file is read, and every byte is staged in
        tmp/ before anything becomes visible, so a failure (a full disk included) leaves the
        store as it was. Adding the same content again returns the same id, stores nothing
        new and keeps the index row with its original ``created`` time.

        Raises ManifestError, InvalidReferenceError, ReferenceConflictError or
        InvalidAnnotationError for invalid arguments, StoreIOError when a source cannot be
        read or the disk fails, and ArtifactNotFoundError when a parent is not in the store.
        """
        metadata = {} if metadata is None else metadata
        parents = tuple(parents)
        Manifest(
            kind=kind,
            files=tuple(FileEntry(path, _PLACEHOLDER_DIGEST, 0) for path, _ in files),
            metadata=metadata,
            parents=parents,
        )
        self._check_ref_and_annotations(ref, annotations)
        with self.writing(), Publication(self.blobs, self._new_blobs) as publication:
            self._check_parents(kind, parents)
            entries = []
            for path, source in files:
                staged = publication.stage_file(Path(source))
                entries.append(FileEntry(path, staged.digest, staged.size))
            manifest = Manifest(kind, tuple(entries), metadata, parents)
            return self._publish(publication, manifest, ref, annotations)

    def add_manifest(
        self,
        manifest: Manifest,
        *,
        ref: NamedRef | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> str:
        """Store and index a manifest whose file blobs are already stored; return the artifact id.

        Use this after writing blobs with ``put_file`` or ``put_bytes``, for example when a
        composition writes its output files itself. Make both calls inside one ``writing()``
        block, or within the gc grace period, so that gc keeps the blobs in between. Raises BlobNotFoundError listing every file
        whose blob is missing, ManifestError when a blob's size differs from its entry, and
        ArtifactNotFoundError listing every parent that is not in the store.
        """
        self._check_ref_and_annotations(ref, annotations)
        with self.writing(), Publication(self.blobs, self._new_blobs) as publication:
            check_files_stored(self.blobs, manifest)
            self._check_parents(manifest.kind, manifest.parents)
            return self._publish(publication, manifest, ref, annotations)

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
                raise named_ref_not_found(self.home, self.ref_files, ref)
            return artifact_id
        return resolve_prefix(self.home, self.blobs, self.index, ref)

    def set_ref(self, name: str, tag: str, artifact_id: str) -> None:
        """Point ``name:tag`` at ``artifact_id``, replacing its earlier target.

        The artifact's manifest must be in the store. If its index row was removed, it is
        indexed again. Raises InvalidReferenceError, ReferenceConflictError,
        ArtifactNotFoundError or StoreIOError; on failure the reference is unchanged.
        """
        validate_name(name)
        validate_tag(tag)
        with self.writing():
            manifest = self.manifest(artifact_id)
            staged = self.ref_files.stage(name, tag, artifact_id)
            self._touch_artifact(artifact_id, manifest)
            self._commit_and_index(staged, artifact_id, manifest, NamedRef(name, tag))
        logger.info("Set reference %s:%s to %s", name, tag, artifact_id)

    def remove_ref(self, name: str, tag: str) -> str:
        """Delete the reference ``name:tag`` and return the artifact id it pointed at.

        No blob and no index row of the artifact is deleted. Raises ReferenceNotFoundError
        with close matches when the reference does not exist.
        """
        artifact_id = self.ref_files.read(name, tag)
        if artifact_id is None or not self.ref_files.delete(name, tag):
            raise named_ref_not_found(self.home, self.ref_files, NamedRef(name, tag))
        self._sync_ref_row(name, tag)
        logger.info("Removed reference %s:%s", name, tag)
        return artifact_id

    def refs(self, artifact_id: str | None = None) -> list[RefEntry]:
        """Return the references sorted by name and tag, only those to ``artifact_id`` if given."""
        entries = self.ref_files.entries()
        if artifact_id is None:
            return entries
        return [entry for entry in entries if entry.artifact_id == artifact_id]

    def annotations(self, artifact_id: str) -> dict[str, str]:
        """Return the user annotations of ``artifact_id`` (empty when it has none)."""
        return self.annotation_files.read(artifact_id)

    def annotate(self, artifact_id: str, updates: Mapping[str, str | None]) -> dict[str, str]:
        """Merge ``updates`` into the annotations of ``artifact_id`` and return the result.

        A None or empty value removes its key. The artifact id does not change, because
        annotations are kept beside the manifest. Raises InvalidAnnotationError,
        ArtifactNotFoundError or StoreIOError; on failure the annotations are unchanged.
        """
        validate_annotations(updates)
        with self.writing():
            manifest = self.manifest(artifact_id)
            staged, merged = self.annotation_files.stage(artifact_id, updates)
            self._commit_and_index(staged, artifact_id, manifest, None)
        logger.info("Annotated artifact %s with %s", artifact_id, ", ".join(sorted(updates)))
        return merged

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

        artifact_id = resolve_prefix(self.home, self.blobs, self.index, ref)
        was_indexed = self.index.has_artifact(artifact_id)
        removed = []
        for entry in self.refs(artifact_id):
            if self.ref_files.delete(entry.name, entry.tag):
                removed.append(str(entry))
            self._sync_ref_row(entry.name, entry.tag)
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
        created_after: datetime | None = None,
        search: str | None = None,
    ) -> list[dict[str, Any]]:
        """Return the indexed artifacts that match every given filter.

        The rows are ordered by created time, then id, or best match first with ``search``.
        See ``Index.list_artifacts`` for the filters and the keys of each row, which include
        ``refs``, ``parents`` and ``annotations``.
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
            created_after=created_after,
            search=search,
        )

    def gc(self, dry_run: bool = False, grace: float = DEFAULT_GRACE_S) -> GcReport:
        """Delete unreachable blobs older than ``grace`` seconds; see ``store.maintenance``.

        gc holds the store lock exclusively, so it waits for writers in progress and they
        wait for it. References, lineage parents of reachable artifacts and fresh blobs keep
        blobs alive. Unreachable artifacts leave the index with their annotations, and
        staging files left by crashed writers leave tmp/. Raises LockTimeoutError when
        writers hold the lock for longer than ``store.locking.LOCK_TIMEOUT_S``.
        """
        with self.lock.exclusive():
            return collect_garbage(
                self.blobs, self.ref_files, self.annotation_files, self.index,
                dry_run=dry_run, grace=grace, check_owners=LOCKS_AVAILABLE,
            )

    def verify(self) -> VerifyReport:
        """Re-hash every blob and report corrupt ones and missing ones that something needs."""
        return verify_blobs(self.blobs, self.ref_files, self.annotation_files)

    def reindex(self) -> ReindexReport:
        """Rebuild index.db from the manifest blobs, ref files and annotation files.

        Holds the store lock exclusively, so no artifact added meanwhile is left out.
        """
        with self.lock.exclusive():
            return rebuild_index(self.blobs, self.ref_files, self.annotation_files, self.index)

    def _publish(
        self,
        publication: Publication,
        manifest: Manifest,
        ref: NamedRef | None,
        annotations: Mapping[str, str | None] | None,
    ) -> str:
        """Stage the manifest, ref and annotations; publish everything; index it last."""
        artifact_id = publication.stage_bytes(manifest.to_bytes()).digest
        if ref is not None:
            publication.stage(self.ref_files.stage(ref.name, ref.tag, artifact_id))
        if annotations:
            publication.stage(self.annotation_files.stage(artifact_id, annotations)[0])

        try:
            publication.publish_blobs()
            self._touch_artifact(artifact_id, manifest)
            publication.commit_files()
            added = self._index_artifact(artifact_id, manifest, ref)
        except BaseException:
            publication.restore_files()
            raise
        state = "Added" if added else "Found already stored"
        logger.info("%s %s artifact %s", state, manifest.kind, artifact_id)
        return artifact_id

    def _commit_and_index(
        self, staged: StagedFile, artifact_id: str, manifest: Manifest, ref: NamedRef | None
    ) -> None:
        """Commit one staged ref or annotation file, then update the index from the files."""
        try:
            staged.commit()
            self._index_artifact(artifact_id, manifest, ref)
        except BaseException:
            staged.restore()
            raise
        finally:
            staged.discard()

    def _index_artifact(self, artifact_id: str, manifest: Manifest, ref: NamedRef | None) -> bool:
        """Index the artifact if needed and copy its annotations and ``ref`` from their files.

        Reading the files inside the transaction keeps the index in step with them when
        several processes write the same reference at once: the last commit wins in both.
        """
        with self.index.transaction("index artifact " + artifact_id):
            annotations = self.annotation_files.read(artifact_id)
            created = self.blobs.created(artifact_id)
            added = self.index.add_artifact(artifact_id, manifest, created, annotations)
            if not added:
                self.index.set_annotations(artifact_id, annotations)
            if ref is not None:
                self.index.sync_ref(ref.name, ref.tag, self.ref_files.read(ref.name, ref.tag))
        return added

    def _sync_ref_row(self, name: str, tag: str) -> None:
        self.index.sync_ref(name, tag, self.ref_files.read(name, tag))

    def _discard_new_blobs(self) -> None:
        """Delete the blobs that a failed write block stored for the first time.

        This waits for the exclusive lock, so that no other writer is about to reference one
        of them; see ``unneeded_blobs``. If that fails, the blobs stay for gc to delete.
        """
        candidates = set(self._new_blobs)
        if not candidates:
            return
        try:
            with self.lock.exclusive(timeout=ROLLBACK_LOCK_TIMEOUT_S):
                unneeded = unneeded_blobs(self.blobs, self.ref_files, self.index, candidates)
                for digest in sorted(unneeded):
                    self.blobs.delete(digest)
        except StoreError as exc:
            logger.warning("Could not delete the blobs of a failed write; gc will: %s", exc)
            return
        logger.info("Deleted %d blobs stored by a failed write", len(unneeded))

    def _check_ref_and_annotations(
        self, ref: NamedRef | None, annotations: Mapping[str, str | None] | None
    ) -> None:
        if ref is not None:
            validate_name(ref.name)
            validate_tag(ref.tag)
        if annotations:
            validate_annotations(annotations)

    def _check_parents(self, kind: str, parents: Sequence[str]) -> None:
        missing_parents = [parent for parent in parents if not self.has_artifact(parent)]
        if missing_parents:
            raise ArtifactNotFoundError(
                f"Cannot add the {kind} artifact: its parents "
                f"{', '.join(missing_parents)} are not in the store. "
                "Add the parent artifacts first."
            )

    def _touch_artifact(self, artifact_id: str, manifest: Manifest) -> None:
        """Refresh the ctime of an artifact's blobs so that gc counts them as fresh."""
        self.blobs.touch(artifact_id)
        for entry in manifest.files:
            self.blobs.touch(entry.sha256)
