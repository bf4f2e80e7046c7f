"""One write to the store in two phases: stage every byte in tmp/, then publish by renaming.

Staging writes and fsyncs all new bytes (file blobs, the manifest, a ref file, an annotation
file) under tmp/. A full disk therefore fails while staging, and discarding the staged files
leaves the store as it was. Publishing renames the blobs into blobs/ (file blobs before the
manifest, so a manifest is never visible before its files), then the ref and annotation
files. Each rename is atomic, so a process killed at any point leaves whole files only.

``Store.add_artifact`` drives a Publication inside the store lock and updates the index last.
If the index update fails, the ref and annotation files are restored and the store deletes the
blobs this write created (see ``Store.writing``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType

from store.artifacts import iter_manifests
from store.atomic import StagedFile
from store.blobs import BlobStore, StagedBlob
from store.errors import BlobNotFoundError, ManifestError
from store.index import Index
from store.manifest import Manifest
from store.refs import RefFiles

logger = logging.getLogger(__name__)

__all__ = ["Publication", "check_files_stored", "unneeded_blobs"]


class Publication:
    """The staged blobs and files of one write, published together.

    Use it as a context manager: leaving the block deletes whatever is still staged in tmp/,
    whether the write succeeded or not. ``created`` receives the digest of every blob that
    ``publish_blobs`` stored for the first time, as soon as it is stored.
    """

    def __init__(self, blobs: BlobStore, created: list[str]) -> None:
        self.blobs = blobs
        self.created = created
        self._blobs: list[StagedBlob] = []
        self._files: list[StagedFile] = []

    def __enter__(self) -> Publication:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for staged_blob in self._blobs:
            self.blobs.discard(staged_blob)
        for staged_file in self._files:
            staged_file.discard()

    def stage_file(self, source: Path) -> StagedBlob:
        """Copy ``source`` into tmp/ as a future blob; raise StoreIOError on a disk error."""
        staged = self.blobs.stage_file(source)
        self._blobs.append(staged)
        return staged

    def stage_bytes(self, data: bytes) -> StagedBlob:
        """Write ``data`` into tmp/ as a future blob; see ``stage_file``."""
        staged = self.blobs.stage_bytes(data)
        self._blobs.append(staged)
        return staged

    def stage(self, staged_file: StagedFile) -> None:
        """Add a staged ref or annotation file, committed by ``commit_files``."""
        self._files.append(staged_file)

    def publish_blobs(self) -> None:
        """Rename the staged blobs into place, in the order they were staged."""
        for staged in self._blobs:
            if self.blobs.publish(staged):
                self.created.append(staged.digest)

    def commit_files(self) -> None:
        """Rename the staged ref and annotation files into place, keeping backups for ``restore``."""
        for staged in self._files:
            staged.commit()

    def restore_files(self) -> None:
        """Put back the ref and annotation files that ``commit_files`` replaced."""
        for staged in reversed(self._files):
            staged.restore()


def unneeded_blobs(
    blobs: BlobStore, ref_files: RefFiles, index: Index, candidates: set[str]
) -> set[str]:
    """Return the ``candidates`` that nothing else in the store needs.

    A candidate is needed when a manifest outside the candidates lists it as a file or
    parent, a ref file points at it, or the index has an artifact row for it. Call this
    under the exclusive store lock, so that no writer is about to reference a candidate.
    """
    needed: set[str] = set()
    for artifact_id, manifest in iter_manifests(blobs, []):
        if artifact_id in candidates:
            continue
        needed.update(entry.sha256 for entry in manifest.files)
        needed.update(manifest.parents)
    needed.update(ref.artifact_id for ref in ref_files.entries())
    needed.update(digest for digest in candidates if index.has_artifact(digest))
    return candidates - needed


def check_files_stored(blobs: BlobStore, manifest: Manifest) -> None:
    """Raise BlobNotFoundError or ManifestError unless every file of ``manifest`` is stored."""
    missing = []
    wrong_size = []
    for entry in manifest.files:
        try:
            size = blobs.stat(entry.sha256).st_size
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

