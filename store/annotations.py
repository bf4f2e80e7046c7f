"""Annotations: key-value metadata that users attach to an artifact without changing its id.

An artifact id is the digest of its manifest, so a description written after the fact cannot
go into the manifest. Annotations live beside the manifest instead, one file per artifact::

    annotations/ab/cdef....json   canonical JSON: an object of string keys and string values

Like ref files, annotation files are the source of truth: ``reindex`` copies them into the
index (where full-text search finds them), and ``gc`` deletes the file of an artifact whose
manifest it deletes. Keys start with a letter and contain letters, digits and ``_ . -``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

from store.atomic import StagedFile, list_files
from store.blobs import validate_digest
from store.errors import InvalidAnnotationError, store_io_error
from store.manifest import canonical_json

logger = logging.getLogger(__name__)

__all__ = ["MAX_KEY_LENGTH", "MAX_VALUE_LENGTH", "AnnotationFiles", "validate_annotations"]

MAX_KEY_LENGTH = 64
MAX_VALUE_LENGTH = 4096
"""Maximum length of an annotation value in characters: a description is a paragraph, not a document."""

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SUFFIX = ".json"
KEY_SYNTAX = (
    f"A key starts with a letter, contains only letters, digits and the characters _ . -, "
    f"and has at most {MAX_KEY_LENGTH} characters, such as 'description'."
)


def validate_annotations(updates: Mapping[str, str | None]) -> dict[str, str | None]:
    """Return ``updates`` as a dict if every key and value is valid; None values mean removal.

    Raises InvalidAnnotationError listing every invalid key and value at once.
    """
    problems = []
    for key, value in updates.items():
        if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
            problems.append(f"key {key!r} is invalid")
        if value is None:
            continue
        if not isinstance(value, str):
            problems.append(f"the value of {key!r} is a {type(value).__name__}, expected a string")
        elif len(value) > MAX_VALUE_LENGTH:
            problems.append(
                f"the value of {key!r} has {len(value)} characters, more than the maximum of "
                f"{MAX_VALUE_LENGTH}"
            )
    if problems:
        syntax = f" {KEY_SYNTAX}" if any(problem.startswith("key ") for problem in problems) else ""
        raise InvalidAnnotationError(f"Invalid annotations: {'; '.join(problems)}.{syntax}")
    return dict(updates)


class AnnotationFiles:
    """The annotation files under ``<home>/annotations``, written atomically through tmp/."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = Path(tmp_dir)

    def path(self, artifact_id: str) -> Path:
        """Return the annotation file path of ``artifact_id``, which need not exist."""
        validate_digest(artifact_id)
        return self.root / artifact_id[:2] / (artifact_id[2:] + _SUFFIX)

    def read(self, artifact_id: str) -> dict[str, str]:
        """Return the annotations of ``artifact_id``, empty when it has none.

        Raises InvalidAnnotationError when the file is not a JSON object of strings.
        """
        path = self.path(artifact_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise store_io_error("read the annotation file", path, exc) from exc
        return _parse(data, path)

    def stage(self, artifact_id: str, updates: Mapping[str, str | None]) -> tuple[StagedFile, dict]:
        """Stage the annotations of ``artifact_id`` with ``updates`` applied.

        A None or empty value removes its key. Returns the staged write, which deletes the
        file when no key is left, and the resulting annotations.
        """
        merged = self.read(artifact_id)
        for key, value in validate_annotations(updates).items():
            if value:
                merged[key] = value
            else:
                merged.pop(key, None)

        target = self.path(artifact_id)
        if not merged:
            return StagedFile.removal(target, self.tmp_dir), merged
        return StagedFile.write(target, canonical_json(merged), self.tmp_dir), merged

    def delete(self, artifact_id: str) -> bool:
        """Delete the annotation file of ``artifact_id`` and return whether it existed."""
        path = self.path(artifact_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise store_io_error("delete the annotation file", path, exc) from exc
        return True

    def artifact_ids(self) -> list[str]:
        """Return the ids of the artifacts that have an annotation file, without reading them."""
        ids = []
        for path in self._iter_files():
            artifact_id = path.parent.name + path.name.removesuffix(_SUFFIX)
            if path.name.endswith(_SUFFIX) and _DIGEST.fullmatch(artifact_id):
                ids.append(artifact_id)
        return ids

    def scan(self) -> tuple[dict[str, dict[str, str]], list[str]]:
        """Read every annotation file; return the annotations by artifact id, and the problems.

        A problem is a message about a file under annotations/ that is not named by an
        artifact id or does not contain a JSON object of strings. Such files are skipped.
        """
        found: dict[str, dict[str, str]] = {}
        problems: list[str] = []
        for path in self._iter_files():
            artifact_id = path.parent.name + path.name.removesuffix(_SUFFIX)
            if not path.name.endswith(_SUFFIX) or not _DIGEST.fullmatch(artifact_id):
                problems.append(
                    f"File '{path}' is not an annotation file: its name is not an artifact id "
                    f"followed by {_SUFFIX}. Move it out of the annotations folder."
                )
                continue
            try:
                found[artifact_id] = self.read(artifact_id)
            except InvalidAnnotationError as exc:
                problems.append(str(exc))
        return found, problems

    def _iter_files(self) -> list[Path]:
        return list_files(self.root)


def _parse(data: bytes, path: Path) -> dict[str, str]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise InvalidAnnotationError(
            f"Annotation file '{path}' does not contain a JSON object of string keys and string "
            "values. Delete the file, then annotate the artifact again."
        )
    return value
