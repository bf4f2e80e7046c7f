"""Resolving id prefixes, and the errors for references that match nothing or too much."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from store.artifacts import read_manifest
from store.blobs import BlobStore
from store.errors import (
    AmbiguousReferenceError,
    ArtifactNotFoundError,
    ReferenceNotFoundError,
    store_io_error,
)
from store.index import Index
from store.refs import IdRef, NamedRef, RefFiles

__all__ = ["named_ref_not_found", "resolve_prefix"]


def resolve_prefix(home: Path, blobs: BlobStore, index: Index, ref: IdRef) -> str:
    """Return the one artifact id that starts with ``ref.prefix``.

    The index is asked first, then the manifest blobs, so an unindexed artifact is found
    too. Raises ReferenceNotFoundError or AmbiguousReferenceError listing every candidate.
    """
    candidates = index.ids_with_prefix(ref.prefix)
    if not candidates:
        candidates = _manifest_blobs_with_prefix(blobs, ref.prefix)
    if not candidates:
        raise ReferenceNotFoundError(
            f"No artifact id starts with '{ref.prefix}' in the store '{home}'. "
            "List the artifacts to find the right id.",
            reference=str(ref),
        )
    if len(candidates) > 1:
        raise _ambiguous_prefix(index, ref, candidates)
    return candidates[0]


def named_ref_not_found(home: Path, ref_files: RefFiles, ref: NamedRef) -> ReferenceNotFoundError:
    """Build the error for a missing ``name:tag``, with the closest existing references."""
    # Suggest the other tags of the same name first, then the tags of similar names.
    entries = ref_files.entries()
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
        f"Reference '{ref}' not found in the store '{home}'. {advice}",
        reference=str(ref),
        close_matches=matches,
    )


def _manifest_blobs_with_prefix(blobs: BlobStore, prefix: str) -> list[str]:
    folder = blobs.root / prefix[:2]
    try:
        names = sorted(name for name in os.listdir(folder) if name.startswith(prefix[2:]))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise store_io_error("list the folder", folder, exc) from exc
    return [prefix[:2] + name for name in names if _is_artifact(blobs, prefix[:2] + name)]


def _is_artifact(blobs: BlobStore, digest: str) -> bool:
    try:
        read_manifest(blobs, digest)
    except ArtifactNotFoundError:
        return False
    return True


def _ambiguous_prefix(index: Index, ref: IdRef, candidates: list[str]) -> AmbiguousReferenceError:
    refs = index.refs_by_artifact()
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
