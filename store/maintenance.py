"""Store maintenance: garbage collection, verification and rebuilding the index.

Reachability, which decides what ``gc`` keeps:

- every artifact that a ref file points at is reachable;
- every artifact whose manifest blob is fresh (see below) is reachable, so an artifact that
  another process is adding right now survives before its reference exists;
- the parents of a reachable artifact are reachable, so a composed artifact's recipe can
  always be shown and reproduced;
- the manifest and file blobs of reachable artifacts are kept.

A blob is fresh while less than ``grace`` seconds have passed since its mtime or ctime.
Storing a blob that already exists, and setting a reference, update the ctime of the blobs
involved. ``gc`` never deletes a fresh blob.

``gc`` and ``reindex`` run while the caller holds the store lock exclusively (see
``store.locking``), so no writer is between storing its blobs and publishing its manifest and
reference meanwhile. The grace period still protects what the lock cannot: an artifact added
without a reference, and blobs stored by one call (``put_file``) for a manifest that a later
call adds.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from store.annotations import AnnotationFiles
from store.artifacts import artifact_closure, iter_manifests
from store.atomic import staging_owner
from store.blobs import BlobStore
from store.errors import BlobNotFoundError, StoreError, store_io_error
from store.index import Index
from store.manifest import MANIFEST_PREFIX, parse_manifest_blob
from store.refs import RefFiles

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GRACE_S",
    "STALE_TMP_AGE_S",
    "GcReport",
    "MissingBlob",
    "ReindexReport",
    "VerifyReport",
    "collect_garbage",
    "rebuild_index",
    "verify_blobs",
]

DEFAULT_GRACE_S = 3600.0
"""Seconds after a blob was written or re-added during which gc keeps it unconditionally."""

STALE_TMP_AGE_S = 3600.0
"""Seconds without modification after which gc deletes any file or folder in tmp/."""


@dataclass(frozen=True)
class GcReport:
    """Counts of the blobs, index rows and tmp/ files that ``gc`` deleted (sizes in bytes).

    With ``dry_run`` the counts are of what ``gc`` would delete.
    """

    dry_run: bool
    deleted_blobs: int
    freed_bytes: int
    kept_fresh_blobs: int
    removed_artifacts: tuple[str, ...]
    deleted_tmp_files: int
    reachable_artifacts: int
    deleted_annotations: int = 0


@dataclass(frozen=True)
class MissingBlob:
    """A blob that a manifest or reference needs but the store lacks."""

    digest: str
    needed_by: str


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of re-hashing every blob and checking every reference to a blob."""

    checked_blobs: int
    corrupt: tuple[str, ...]
    missing: tuple[MissingBlob, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether no blob is corrupt or missing and no manifest or ref file is invalid."""
        return not (self.corrupt or self.missing or self.problems)


@dataclass(frozen=True)
class ReindexReport:
    """Counts of the rows written by ``reindex`` and the blobs and ref files it skipped."""

    artifacts: int
    refs: int
    problems: tuple[str, ...]


def collect_garbage(
    blobs: BlobStore,
    ref_files: RefFiles,
    annotation_files: AnnotationFiles,
    index: Index,
    *,
    dry_run: bool,
    grace: float,
    check_owners: bool,
) -> GcReport:
    """Delete unreachable blobs that are not fresh, their index rows and annotations, and tmp/ files.

    With ``dry_run`` nothing is deleted and the report lists what would be. Index rows go
    first, so a process killed halfway never leaves a listed artifact without its blobs.
    Leftovers of crashed writers leave tmp/ (see ``_clean_tmp``); pass ``check_owners``
    only on POSIX. See the module docstring for what counts as reachable and fresh.
    """
    now = time.time()
    digests = list(blobs.iter_digests())
    reachable, kept = _find_reachable(blobs, ref_files, digests, now, grace)
    doomed, kept_fresh = _unreachable_blobs(blobs, digests, kept, now, grace)

    removed = sorted(
        artifact_id
        for artifact_id in index.artifact_ids()
        if artifact_id not in reachable and (artifact_id in doomed or not blobs.has(artifact_id))
    )
    deleted = doomed
    annotations = 0
    if not dry_run:
        index.remove_artifacts(removed)
        deleted = _delete_blobs(blobs, doomed, grace)
        annotations = _delete_orphan_annotations(blobs, annotation_files)
    tmp_files = _clean_tmp(blobs.tmp_dir, now, dry_run, check_owners)
    freed_bytes = sum(deleted.values())
    logger.info(
        "gc deleted %d blobs (%d bytes) and %d index rows", len(deleted), freed_bytes, len(removed)
    )
    return GcReport(
        dry_run=dry_run,
        deleted_blobs=len(deleted),
        freed_bytes=freed_bytes,
        kept_fresh_blobs=kept_fresh,
        removed_artifacts=tuple(removed),
        deleted_tmp_files=tmp_files,
        reachable_artifacts=len(reachable),
        deleted_annotations=annotations,
    )


def verify_blobs(
    blobs: BlobStore, ref_files: RefFiles, annotation_files: AnnotationFiles
) -> VerifyReport:
    """Re-hash every blob and find blobs that manifests or ref files need but that are missing.

    Invalid ref and annotation files are reported as problems. A blob needed by a corrupt
    manifest cannot be found out, so fix corrupt blobs first.
    """
    digests = list(blobs.iter_digests())
    corrupt = []
    for digest in digests:
        try:
            if not blobs.verify(digest):
                corrupt.append(digest)
        except BlobNotFoundError:
            logger.debug("Blob %s disappeared during verify", digest)

    present = set(digests)
    problems: list[str] = []
    missing: list[MissingBlob] = []
    for artifact_id, manifest in iter_manifests(blobs, problems):
        for entry in manifest.files:
            if entry.sha256 not in present:
                needed_by = f"file '{entry.path}' of artifact {artifact_id}"
                missing.append(MissingBlob(entry.sha256, needed_by))
        for parent in manifest.parents:
            if parent not in present:
                missing.append(MissingBlob(parent, f"parent of artifact {artifact_id}"))

    refs, ref_problems = ref_files.scan()
    problems.extend(ref_problems)
    for ref in refs:
        if ref.artifact_id not in present:
            missing.append(MissingBlob(ref.artifact_id, f"reference {ref}"))
    problems.extend(annotation_files.scan()[1])
    return VerifyReport(len(digests), tuple(corrupt), tuple(missing), tuple(problems))


def rebuild_index(
    blobs: BlobStore, ref_files: RefFiles, annotation_files: AnnotationFiles, index: Index
) -> ReindexReport:
    """Replace the index contents with the manifests, ref files and annotations, in one transaction.

    Each artifact's ``created`` time is its manifest blob's mtime, so rebuilding gives the
    same rows as indexing the artifacts when they were added. Invalid manifest blobs, ref
    files and annotation files are skipped and listed in the report's problems.
    """
    problems: list[str] = []
    artifacts = [
        (artifact_id, manifest, blobs.created(artifact_id))
        for artifact_id, manifest in iter_manifests(blobs, problems)
    ]
    refs, ref_problems = ref_files.scan()
    problems.extend(ref_problems)
    annotations, annotation_problems = annotation_files.scan()
    problems.extend(annotation_problems)
    index.rebuild(artifacts, refs, annotations)
    logger.info("Rebuilt the index: %d artifacts, %d references", len(artifacts), len(refs))
    return ReindexReport(len(artifacts), len(refs), tuple(problems))


def _find_reachable(
    blobs: BlobStore, ref_files: RefFiles, digests: list[str], now: float, grace: float
) -> tuple[set[str], set[str]]:
    """Return the reachable artifact ids and the digests of the blobs they keep alive."""
    roots = {ref.artifact_id for ref in ref_files.entries()}
    roots.update(
        digest
        for digest in digests
        if _is_fresh(blobs, digest, now, grace) and _is_manifest(blobs, digest)
    )
    return artifact_closure(blobs, roots)


def _unreachable_blobs(
    blobs: BlobStore, digests: list[str], kept: set[str], now: float, grace: float
) -> tuple[dict[str, int], int]:
    """Return the sizes of the blobs outside ``kept`` that are not fresh, and how many are."""
    doomed: dict[str, int] = {}
    kept_fresh = 0
    for digest in digests:
        if digest in kept:
            continue
        if _is_fresh(blobs, digest, now, grace):
            kept_fresh += 1
            continue
        size = _blob_size(blobs, digest)
        if size is not None:
            doomed[digest] = size
    return doomed, kept_fresh


def _delete_blobs(blobs: BlobStore, doomed: dict[str, int], grace: float) -> dict[str, int]:
    """Delete the ``doomed`` blobs and return the sizes of those that were deleted."""
    deleted: dict[str, int] = {}
    for digest, size in doomed.items():
        # Without the store lock (Windows) a writer may have re-added the blob meanwhile.
        if _is_fresh(blobs, digest, time.time(), grace):
            continue
        if blobs.delete(digest):
            deleted[digest] = size
    return deleted


def _delete_orphan_annotations(blobs: BlobStore, annotation_files: AnnotationFiles) -> int:
    """Delete the annotation files of artifacts whose manifest blob is gone; return how many."""
    count = 0
    for artifact_id in annotation_files.artifact_ids():
        if not blobs.has(artifact_id) and annotation_files.delete(artifact_id):
            count += 1
    return count


def _is_fresh(blobs: BlobStore, digest: str, now: float, grace: float) -> bool:
    try:
        status = blobs.stat(digest)
    except BlobNotFoundError:
        return False
    # NOTE: on Windows st_ctime is the creation time, so re-adding an old blob does not
    # refresh it there.
    return now - max(status.st_mtime, status.st_ctime) < grace


def _is_manifest(blobs: BlobStore, digest: str) -> bool:
    try:
        if not blobs.read_head(digest, len(MANIFEST_PREFIX)).startswith(MANIFEST_PREFIX):
            return False
        return parse_manifest_blob(blobs.read_bytes(digest), source=f"blob {digest}") is not None
    except StoreError as exc:
        # A blob that cannot be read as a manifest is no root. verify reports it.
        logger.debug("Blob %s is not a readable manifest: %s", digest, exc)
        return False


def _blob_size(blobs: BlobStore, digest: str) -> int | None:
    try:
        return blobs.stat(digest).st_size
    except BlobNotFoundError:
        return None


def _clean_tmp(tmp_dir: Path, now: float, dry_run: bool, check_owners: bool) -> int:
    """Delete the leftovers in tmp/ and return how many there were.

    A leftover is an entry untouched for STALE_TMP_AGE_S seconds or, with ``check_owners``,
    a staging file whose name carries the id of a process that has exited (see
    ``store.atomic.staging_prefix``). Folders (a pull stages its downloads in one, outside
    the store lock) go by age only.
    """
    count = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise store_io_error("list the folder", tmp_dir, exc) from exc

    for entry in entries:
        try:
            if not _is_leftover(entry, now, check_owners):
                continue
            if not dry_run:
                _delete_entry(entry)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise store_io_error("delete the staging file", entry.path, exc) from exc
        count += 1
    return count


def _is_leftover(entry: os.DirEntry[str], now: float, check_owners: bool) -> bool:
    if now - entry.stat(follow_symlinks=False).st_mtime >= STALE_TMP_AGE_S:
        return True
    if not check_owners or not entry.is_file(follow_symlinks=False):
        return False
    owner = staging_owner(entry.name)
    return owner is not None and not _process_exists(owner)


def _process_exists(pid: int) -> bool:
    """Return whether a process with id ``pid`` exists on this host (POSIX only)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        # EPERM: it exists but belongs to another user.
        return True
    return True


def _delete_entry(entry: os.DirEntry[str]) -> None:
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
    else:
        os.unlink(entry.path)
