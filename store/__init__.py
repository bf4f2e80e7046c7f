"""A content-addressed store for artifacts: blobs, manifests, references, an index and gc.

The store imports neither torch nor adapterhub. It keeps files as sha256-named blobs and
describes each artifact by a manifest whose digest is the artifact id; adapterhub gives the
artifacts their meaning. Start with ``Store.open()``; errors derive from ``StoreError``.
"""

from store.errors import (
    AmbiguousReferenceError,
    ArtifactNotFoundError,
    BlobNotFoundError,
    CorruptBlobError,
    CorruptReferenceError,
    IndexDatabaseError,
    InvalidAnnotationError,
    InvalidDigestError,
    InvalidReferenceError,
    LockTimeoutError,
    ManifestError,
    ReferenceConflictError,
    ReferenceNotFoundError,
    StoreError,
    StoreIOError,
    StoreNotFoundError,
    StoreVersionError,
)
from store.maintenance import GcReport, MissingBlob, ReindexReport, VerifyReport
from store.manifest import FileEntry, Manifest, canonical_json
from store.refs import IdRef, NamedRef, Ref, RefEntry, parse_ref
from store.store import Removal, Store, home_default

__all__ = [
    "AmbiguousReferenceError",
    "ArtifactNotFoundError",
    "BlobNotFoundError",
    "CorruptBlobError",
    "CorruptReferenceError",
    "FileEntry",
    "GcReport",
    "IdRef",
    "IndexDatabaseError",
    "InvalidAnnotationError",
    "InvalidDigestError",
    "InvalidReferenceError",
    "LockTimeoutError",
    "Manifest",
    "ManifestError",
    "MissingBlob",
    "NamedRef",
    "Ref",
    "RefEntry",
    "ReferenceConflictError",
    "ReferenceNotFoundError",
    "ReindexReport",
    "Removal",
    "Store",
    "StoreError",
    "StoreIOError",
    "StoreNotFoundError",
    "StoreVersionError",
    "VerifyReport",
    "canonical_json",
    "home_default",
    "parse_ref",
]
