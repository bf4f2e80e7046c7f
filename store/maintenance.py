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
involved, so a concurrent writer's blobs are fresh. ``gc`` never deletes a fresh blob.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from store.artifacts import artifact_closure, iter_manifests
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
"""Seconds without modification after which gc deletes a staging file in tmp/."""


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
    blobs: BlobStore, ref_files: RefFiles, index: Index, *, dry_run: bool, grace: float
) -> GcReport:
    """Delete unreachable blobs that are not fresh, their index rows and stale tmp/ files.

    With ``dry_run`` nothing is deleted and the report lists what would be. An index row is
    removed only once its manifest blob is gone. See the module docstring for what counts
    as reachable and fresh.

    NOTE: a blob is checked for freshness again just before it is deleted, but a writer
    that re-adds it between that check and the deletion still loses it. Such a writer's
    next ``verify`` reports the blob missing, and adding the files again restores it.
    """
    now = time.time()
    digests = list(blobs.iter_digests())
    reachable, kept = _find_reachable(blobs, ref_files, digests, now, grace)
    deleted, freed_bytes, kept_fresh = _delete_unreachable(blobs, digests, kept, grace, dry_run)

    removed = sorted(
        artifact_id
        for artifact_id in index.artifact_ids()
        if artifact_id not in reachable and (artifact_id in deleted or not blobs.has(artifact_id))
    )
    if not dry_run:
        index.remove_artifacts(removed)
    tmp_files = _clean_tmp(blobs.tmp_dir, now, dry_run)
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
    )


def verify_blobs(blobs: BlobStore, ref_files: RefFiles) -> VerifyReport:
    """Re-hash every blob and find blobs that manifests or ref files need but that are missing.

    A blob needed by a corrupt manifest cannot be found out, so fix corrupt blobs first.
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
    return VerifyReport(len(digests), tuple(corrupt), tuple(missing), tuple(problems))


def rebuild_index(blobs: BlobStore, ref_files: RefFiles, index: Index) -> ReindexReport:
    """Replace the index contents with the manifest blobs and ref files, in one transaction.

    Each artifact's ``created`` time is its manifest blob's mtime, so rebuilding gives the
    same rows as indexing the artifacts when they were added. Invalid manifest blobs and
    ref files are skipped and listed in the report's problems.
    """
    problems: list[str] = []
    artifacts = [
        (artifact_id, manifest, blobs.created(artifact_id))
        for artifact_id, manifest in iter_manifests(blobs, problems)
    ]
    refs, ref_problems = ref_files.scan()
    problems.extend(ref_problems)
    index.rebuild(artifacts, refs)
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


def _delete_unreachable(
    blobs: BlobStore, digests: list[str], kept: set[str], grace: float, dry_run: bool
) -> tuple[set[str], int, int]:
    """Delete the blobs outside ``kept`` that are not fresh.

    Returns the deleted digests, the bytes freed and how many blobs were kept as fresh.
    """
    deleted: set[str] = set()
    freed_bytes = 0
    kept_fresh = 0
    for digest in digests:
        if digest in kept:
            continue
        # Check freshness again now, because a writer may have re-added the blob meanwhile.
        if _is_fresh(blobs, digest, time.time(), grace):
            kept_fresh += 1
            continue
        size = _blob_size(blobs, digest)
        if size is None or (not dry_run and not blobs.delete(digest)):
            continue
        deleted.add(digest)
        freed_bytes += size
    return deleted, freed_bytes, kept_fresh


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


def _clean_tmp(tmp_dir: Path, now: float, dry_run: bool) -> int:
    """Delete files in tmp/ not modified for STALE_TMP_AGE_S seconds and return how many."""
    count = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise store_io_error("list the folder", tmp_dir, exc) from exc

    for entry in entries:
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime < STALE_TMP_AGE_S:
                continue
            if not dry_run:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise store_io_error("delete the staging file", entry.path, exc) from exc
        count += 1
    return count
