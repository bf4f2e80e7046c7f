"""Artifact manifests and their canonical bytes.

A manifest names an artifact's kind, its files (relative path, sha256, size), its parents
(the artifact ids it was made from) and free-form JSON metadata that the store does not
interpret. Its canonical form is JSON with sorted keys, no spaces and UTF-8 text::

    {"files":[{"path":"a.bin","sha256":"...","size":3}],"kind":"adapter","metadata":{},
     "parents":[],"store":"adapterhub-manifest","version":1}

The manifest is stored as a blob, and the sha256 of its canonical bytes is the artifact id, so
the same content always gets the same id. The top-level ``"store"`` key marks a blob as a
manifest. Because keys are sorted, every canonical manifest starts with ``MANIFEST_PREFIX``,
which lets a scan over all blobs skip other files after reading a few bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from store.errors import ManifestError

__all__ = [
    "MANIFEST_MARKER",
    "MANIFEST_PREFIX",
    "MANIFEST_VERSIONS",
    "FileEntry",
    "Manifest",
    "canonical_json",
    "parse_manifest_blob",
    "path_problem",
]

MANIFEST_VERSIONS = (1,)
"""Manifest format versions that this code reads and writes."""

MANIFEST_MARKER = "adapterhub-manifest"
"""Value of the top-level "store" key that marks a JSON blob as a manifest."""

MANIFEST_PREFIX = b'{"files":['
"""The first bytes of every canonical manifest, because "files" sorts first among its keys."""

_TOP_LEVEL_KEYS = ("files", "kind", "metadata", "parents", "store", "version")
_FILE_KEYS = ("path", "sha256", "size")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")
_PATH_ADVICE = "Use relative paths with '/' between folders, such as 'adapter/config.json'."


def canonical_json(value: Any) -> bytes:
    """Return the canonical JSON bytes of ``value``: sorted keys, no spaces, UTF-8.

    Raises ValueError for NaN or infinite floats and TypeError for values that JSON cannot
    represent. ``Manifest`` turns both into ManifestError.
    """
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return text.encode("utf-8")


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: its relative POSIX path, sha256 hex digest and size in bytes."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """The description of one artifact; its ``digest()`` is the artifact id.

    Construction normalizes the fields: ``files`` is sorted by path, ``parents`` becomes a
    tuple and ``metadata`` is replaced by its JSON round trip, so tuples become lists. It
    raises ManifestError listing every invalid field, file path and metadata value at once.
    """

    kind: str
    files: tuple[FileEntry, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    parents: tuple[str, ...] = ()
    version: int = 1

    def __post_init__(self) -> None:
        problems = _field_problems(self.kind, self.files, self.metadata, self.parents, self.version)
        if problems:
            raise _manifest_error("Invalid manifest", problems)

        object.__setattr__(self, "files", tuple(sorted(self.files, key=lambda entry: entry.path)))
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "metadata", json.loads(canonical_json(self.metadata)))

    @property
    def size(self) -> int:
        """Total size of the artifact's files in bytes."""
        return sum(entry.size for entry in self.files)

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as the JSON object that ``to_bytes`` encodes."""
        return {
            "files": [entry.to_dict() for entry in self.files],
            "kind": self.kind,
            "metadata": self.metadata,
            "parents": list(self.parents),
            "store": MANIFEST_MARKER,
            "version": self.version,
        }

    def to_bytes(self) -> bytes:
        """Return the canonical bytes; equal manifests always give equal bytes."""
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        """Return the sha256 hex digest of the canonical bytes, which is the artifact id."""
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str | None = None) -> Manifest:
        """Parse and validate manifest bytes; they need not be canonical.

        ``source``, if given, names where the bytes came from (such as "blob <digest>")
        in error messages. Raises ManifestError for invalid JSON, a missing "store" marker, an
        unsupported version, missing or unknown keys and every invalid field.
        """
        try:
            value = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(
                f"{_heading(source)}: not UTF-8 JSON ({exc}). "
                "Check that the bytes are a manifest written by the store."
            ) from exc
        return cls.from_dict(value, source=source)

    @classmethod
    def from_dict(cls, value: Any, *, source: str | None = None) -> Manifest:
        """Validate a decoded manifest object and build the Manifest; see ``from_bytes``."""
        if not isinstance(value, dict):
            raise ManifestError(
                f"{_heading(source)}: expected a JSON object, got "
                f"{type(value).__name__}. Check that the bytes are a manifest written by the store."
            )
        if "version" in value:
            _check_version(value["version"], source)

        problems = _structure_problems(value)
        if problems:
            raise _manifest_error(_heading(source), problems)

        fields = {
            "kind": value["kind"],
            "files": tuple(FileEntry(**entry) for entry in value["files"]),
            "metadata": value["metadata"],
            "parents": tuple(value["parents"]),
            "version": value["version"],
        }
        problems = _field_problems(**fields)
        if problems:
            raise _manifest_error(_heading(source), problems)
        return cls(**fields)


def parse_manifest_blob(data: bytes, *, source: str) -> Manifest | None:
    """Return the manifest stored in a blob's bytes, or None when the blob is another file.

    A blob is a manifest when it starts with ``MANIFEST_PREFIX`` and is a JSON object whose
    "store" key is ``MANIFEST_MARKER``. Raises ManifestError when such a blob is invalid or
    not in canonical form, because its digest then cannot be the id of its manifest.
    """
    if not data.startswith(MANIFEST_PREFIX):
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict) or value.get("store") != MANIFEST_MARKER:
        return None

    manifest = Manifest.from_dict(value, source=source)
    if manifest.to_bytes() != data:
        raise ManifestError(
            f"{_heading(source)}: the bytes are not in canonical form (sorted keys, "
            "no spaces, files sorted by path), so the blob digest is not the artifact id. "
            "Add the artifact again to store its canonical manifest."
        )
    return manifest


def _heading(source: str | None) -> str:
    return f"Invalid manifest in {source}" if source else "Invalid manifest"


def _is_supported_version(version: Any) -> bool:
    is_integer = isinstance(version, int) and not isinstance(version, bool)
    return is_integer and version in MANIFEST_VERSIONS


def _check_version(version: Any, source: str | None) -> None:
    if _is_supported_version(version):
        return
    supported = ", ".join(str(number) for number in MANIFEST_VERSIONS)
    raise ManifestError(
        f"{_heading(source)}: unsupported manifest version {version!r}. "
        f"Supported versions: {supported}. Upgrade adapterhub to read newer manifests."
    )


def _structure_problems(value: dict[str, Any]) -> list[str]:
    """List missing and unknown keys at the top level and in each file entry."""
    problems = _key_problems(value, _TOP_LEVEL_KEYS, "manifest")
    if value.get("store", MANIFEST_MARKER) != MANIFEST_MARKER:
        problems.append(f"key 'store' is {value['store']!r}, expected {MANIFEST_MARKER!r}")

    files = value.get("files", [])
    if not isinstance(files, list):
        problems.append(f"'files' is {type(files).__name__}, expected a list")
        return problems
    for position, entry in enumerate(files):
        if isinstance(entry, dict):
            problems.extend(_key_problems(entry, _FILE_KEYS, f"files[{position}]"))
        else:
            problems.append(f"files[{position}] is {type(entry).__name__}, expected an object")

    parents = value.get("parents", [])
    if not isinstance(parents, list):
        problems.append(f"'parents' is {type(parents).__name__}, expected a list")
    return problems


def _key_problems(value: dict[str, Any], expected: tuple[str, ...], where: str) -> list[str]:
    missing = [key for key in expected if key not in value]
    unknown = sorted(str(key) for key in value if key not in expected)
    problems = []
    if missing:
        problems.append(f"{where} is missing the keys {', '.join(missing)}")
    if unknown:
        problems.append(f"{where} has unknown keys {', '.join(unknown)}")
    return problems


def _field_problems(
    kind: Any, files: Any, metadata: Any, parents: Any, version: Any
) -> list[str]:
    """List every invalid field value of a manifest."""
    problems: list[str] = []
    if not isinstance(kind, str) or not kind:
        problems.append(f"kind {kind!r} is not a non-empty string")
    if not _is_supported_version(version):
        supported = ", ".join(str(number) for number in MANIFEST_VERSIONS)
        problems.append(f"version {version!r} is not a supported version ({supported})")

    problems.extend(_file_problems(files))

    for parent in parents:
        if not isinstance(parent, str) or not _SHA256.fullmatch(parent):
            problems.append(f"parent {parent!r} is not an artifact id of 64 lowercase hex digits")

    if not isinstance(metadata, dict):
        problems.append(f"metadata is {type(metadata).__name__}, expected a dict")
    else:
        problems.extend(_json_problems(metadata, "metadata"))
    return problems


def _file_problems(files: Any) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for entry in files:
        if not isinstance(entry, FileEntry):
            problems.append(f"file {entry!r} is not a FileEntry")
            continue
        problem = path_problem(entry.path)
        if problem:
            problems.append(problem)
        elif entry.path in seen:
            problems.append(f"file path {entry.path!r} appears more than once")
        seen.add(entry.path)

        if not isinstance(entry.sha256, str) or not _SHA256.fullmatch(entry.sha256):
            problems.append(
                f"sha256 {entry.sha256!r} of {entry.path!r} is not 64 lowercase hex digits"
            )
        if not isinstance(entry.size, int) or isinstance(entry.size, bool) or entry.size < 0:
            problems.append(f"size {entry.size!r} of {entry.path!r} is not a non-negative integer")
    return problems


def path_problem(path: Any) -> str | None:
    """Describe why ``path`` is not a safe relative POSIX file path, or return None if it is.

    A safe path is relative, uses '/' between folders, and has no empty, '.' or '..'
    segment, so that joining it to any folder stays inside that folder.
    """
    if not isinstance(path, str):
        return f"file path {path!r} is not a string"
    if not path:
        return "file path '' is empty"
    if "\\" in path:
        return f"file path {path!r} contains a backslash"
    if path.startswith("/") or _WINDOWS_DRIVE.match(path):
        return f"file path {path!r} is absolute"
    if any(ord(character) < 32 for character in path):
        return f"file path {path!r} contains a control character"

    segments = path.split("/")
    if ".." in segments:
        return f"file path {path!r} contains a '..' segment"
    if "" in segments:
        return f"file path {path!r} contains an empty segment"
    if "." in segments:
        return f"file path {path!r} contains a '.' segment"
    return None


def _json_problems(value: Any, where: str) -> list[str]:
    """List values inside ``value`` that have no exact JSON representation."""
    if value is None or isinstance(value, (bool, int, str)):
        return []
    if isinstance(value, float):
        if math.isfinite(value):
            return []
        return [f"{where} is {value!r}, which JSON cannot represent"]
    if isinstance(value, (list, tuple)):
        problems: list[str] = []
        for position, item in enumerate(value):
            problems.extend(_json_problems(item, f"{where}[{position}]"))
        return problems
    if isinstance(value, dict):
        problems = []
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{where} has the key {key!r}, but JSON keys must be strings")
                continue
            problems.extend(_json_problems(item, f"{where}[{key!r}]"))
        return problems
    return [f"{where} is of type {type(value).__name__}, which JSON cannot represent"]


def _manifest_error(heading: str, problems: list[str]) -> ManifestError:
    lines = "\n".join(f"  - {problem}" for problem in problems)
    advice = "Fix the listed values and build the manifest again."
    if any(problem.startswith("file path") for problem in problems):
        advice += " " + _PATH_ADVICE
    return ManifestError(f"{heading}:\n{lines}\n{advice}")
