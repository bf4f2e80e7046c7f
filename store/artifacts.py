"""Reading artifacts from blobs: one manifest by id, every manifest in the store, lineage closure.

These functions read blobs only, never the index, so they still work when index.db is stale
or missing. ``gc``, ``verify`` and ``reindex`` rely on that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from store.blobs import BlobStore, validate_digest
from store.errors import (
    ArtifactNotFoundError,
    BlobNotFoundError,
    CorruptBlobError,
    ManifestError,
)
from store.manifest import MANIFEST_PREFIX, Manifest, parse_manifest_blob

logger = logging.getLogger(__name__)

__all__ = ["artifact_closure", "iter_manifests", "read_manifest"]


def read_manifest(blobs: BlobStore, artifact_id: str) -> Manifest:
    """Read, verify and parse the manifest blob of ``artifact_id``.

    Raises InvalidDigestError for a malformed id, ArtifactNotFoundError when no blob has
    that id or the blob is a file rather than a manifest, CorruptBlobError when the bytes no
    longer match the id, and ManifestError when the manifest is invalid.
    """
    validate_digest(artifact_id)
    try:
        data = blobs.read_bytes(artifact_id)
    except BlobNotFoundError as exc:
        raise ArtifactNotFoundError(
            f"Artifact {artifact_id} not found: the store has no manifest blob with that id. "
            "List the artifacts to find a valid id."
        ) from exc

    manifest = parse_manifest_blob(data, source=f"blob {artifact_id}")
    if manifest is None:
        raise ArtifactNotFoundError(
            f"Artifact {artifact_id} not found: the blob with that id is a stored file, not an "
            "artifact manifest. Pass the id of the artifact that contains the file."
        )
    return manifest


def iter_manifests(blobs: BlobStore, problems: list[str]) -> Iterator[tuple[str, Manifest]]:
    """Yield ``(artifact_id, manifest)`` for every manifest blob, in digest order.

    Only blobs that start with ``MANIFEST_PREFIX`` are read in full, so a scan costs one
    small read per file blob. Corrupt or invalid manifest blobs are skipped, and a message
    for each is appended to ``problems``.
    """
    for digest in blobs.iter_digests():
        try:
            if not blobs.read_head(digest, len(MANIFEST_PREFIX)).startswith(MANIFEST_PREFIX):
                continue
            manifest = parse_manifest_blob(blobs.read_bytes(digest), source=f"blob {digest}")
        except BlobNotFoundError:
            # Deleted by a concurrent gc after the folder was listed.
            continue
        except (CorruptBlobError, ManifestError) as exc:
            problems.append(str(exc))
            continue
        if manifest is not None:
            yield digest, manifest


def artifact_closure(blobs: BlobStore, roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """Follow lineage from ``roots`` and return ``(artifact ids, blob digests)`` they reach.

    The artifact ids are the roots and all their ancestors through ``parents``. The blob
    digests are those artifacts' manifests and files. An artifact whose manifest is
    missing, corrupt or invalid still counts as reached (so its blob is kept if present),
    but its files and parents cannot be followed, and a warning is logged.
    """
    artifacts: set[str] = set()
    digests: set[str] = set()
    pending = list(roots)
    while pending:
        artifact_id = pending.pop()
        if artifact_id in artifacts:
            continue
        artifacts.add(artifact_id)
        digests.add(artifact_id)
        try:
            manifest = read_manifest(blobs, artifact_id)
        except (ArtifactNotFoundError, CorruptBlobError, ManifestError) as exc:
            logger.warning("Cannot follow artifact %s: %s", artifact_id, exc)
            continue
        digests.update(entry.sha256 for entry in manifest.files)
        pending.extend(manifest.parents)
    return artifacts, digests
