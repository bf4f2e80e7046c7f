"""References: the syntax of ``name[:tag]`` and ``sha256:<prefix>``, and the ref files.

A reference is one of

- ``name`` or ``name:tag``: a named reference, with tag ``latest`` when none is given;
- ``sha256:<prefix>``: an artifact id prefix of at least ``MIN_PREFIX_LENGTH`` hex digits;
- 64 hex digits: a full artifact id.

Named references live in ref files, ``refs/<name>/<tag>``, each containing an artifact id and a
newline. A ``/`` in a name becomes a subfolder. Ref files are the source of truth for
references: the index copies them and can be rebuilt from them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from store.atomic import StagedFile, list_files, write_atomic
from store.errors import (
    CorruptReferenceError,
    InvalidReferenceError,
    ReferenceConflictError,
    store_io_error,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TAG",
    "MIN_PREFIX_LENGTH",
    "IdRef",
    "NamedRef",
    "Ref",
    "RefEntry",
    "RefFiles",
    "parse_ref",
    "validate_name",
    "validate_tag",
]

DEFAULT_TAG = "latest"
MIN_PREFIX_LENGTH = 8
"""Minimum number of hex digits in ``sha256:<prefix>``, because shorter prefixes often match
several artifacts."""

MAX_NAME_LENGTH = 200
MAX_TAG_LENGTH = 128

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+/-]*")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HEX = re.compile(r"[0-9a-fA-F]+")
_ARTIFACT_ID = re.compile(r"[0-9a-f]{64}")
_ID_SCHEME = "sha256:"

NAME_SYNTAX = (
    "A name starts with a letter or digit, contains only letters, digits and the characters "
    f". _ + / -, has no empty, '.' or '..' segment between slashes, and has at most "
    f"{MAX_NAME_LENGTH} characters, such as 'org/task-lora'."
)
TAG_SYNTAX = (
    "A tag starts with a letter or digit, contains only letters, digits and the characters "
    f". _ -, and has at most {MAX_TAG_LENGTH} characters, such as 'latest' or 'v2'."
)


@dataclass(frozen=True)
class NamedRef:
    """A ``name:tag`` reference."""

    name: str
    tag: str = DEFAULT_TAG

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


@dataclass(frozen=True)
class IdRef:
    """An artifact id or id prefix, in lowercase hex."""

    prefix: str

    @property
    def is_full_id(self) -> bool:
        """Whether the prefix is a whole 64-digit artifact id."""
        return len(self.prefix) == 64

    def __str__(self) -> str:
        return self.prefix if self.is_full_id else f"{_ID_SCHEME}{self.prefix}"


Ref = NamedRef | IdRef


@dataclass(frozen=True)
class RefEntry:
    """A stored named reference: ``name:tag`` points at ``artifact_id``."""

    name: str
    tag: str
    artifact_id: str

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


def parse_ref(text: str) -> Ref:
    """Parse a reference string into a NamedRef or an IdRef.

    Exactly 64 hex digits always parse as an artifact id, which is why ``validate_name``
    rejects such names. Raises InvalidReferenceError, naming the allowed syntax, for
    anything else that is not a valid reference.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidReferenceError(
            f"Invalid reference {text!r}: expected 'name[:tag]', 'sha256:<hex prefix>' or a "
            "64-digit artifact id."
        )
    if text[: len(_ID_SCHEME)].lower() == _ID_SCHEME:
        return IdRef(_validate_prefix(text[len(_ID_SCHEME) :], text))
    if len(text) == 64 and _HEX.fullmatch(text):
        return IdRef(text.lower())

    name, separator, tag = text.partition(":")
    if separator and not tag:
        raise InvalidReferenceError(
            f"Invalid reference {text!r}: the tag after ':' is empty. Write 'name' for the "
            f"'{DEFAULT_TAG}' tag, or 'name:tag'."
        )
    return NamedRef(validate_name(name), validate_tag(tag) if separator else DEFAULT_TAG)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid reference name, else raise InvalidReferenceError."""
    problem = _name_problem(name)
    if problem:
        raise InvalidReferenceError(f"Invalid reference name {name!r}: {problem}. {NAME_SYNTAX}")
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag, else raise InvalidReferenceError."""
    if not isinstance(tag, str) or len(tag) > MAX_TAG_LENGTH or not _TAG.fullmatch(tag):
        raise InvalidReferenceError(f"Invalid tag {tag!r}. {TAG_SYNTAX}")
    return tag


def _name_problem(name: object) -> str | None:
    """Describe why ``name`` is not a valid reference name, or return None if it is valid."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a string"
    if not name:
        return "it is empty"
    if not _NAME.match(name[0]):
        return f"it starts with {name[0]!r}"
    if not _NAME.fullmatch(name):
        offending = next(c for c in name if not _NAME.fullmatch("a" + c))
        return f"it contains {offending!r}"
    if len(name) > MAX_NAME_LENGTH:
        return f"it has {len(name)} characters"
    segments = name.split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return "it has an empty, '.' or '..' segment"
    if len(name) == 64 and _HEX.fullmatch(name):
        return "64 hex digits would be read as an artifact id"
    if name.lower() == _ID_SCHEME[:-1]:
        return f"'{name}' is reserved for id prefixes such as 'sha256:1a2b3c4d'"
    return None


def _validate_prefix(prefix: str, text: str) -> str:
    if not _HEX.fullmatch(prefix):
        raise InvalidReferenceError(
            f"Invalid reference {text!r}: the id prefix {prefix!r} must contain only hex digits "
            "(0-9, a-f). Copy the prefix from the artifact id."
        )
    if len(prefix) < MIN_PREFIX_LENGTH:
        raise InvalidReferenceError(
            f"Invalid reference {text!r}: the id prefix has {len(prefix)} hex digits, but at least "
            f"{MIN_PREFIX_LENGTH} are needed. Use more digits of the artifact id."
        )
    if len(prefix) > 64:
        raise InvalidReferenceError(
            f"Invalid reference {text!r}: the id prefix has {len(prefix)} hex digits, but an "
            "artifact id has 64. Copy the artifact id again."
        )
    return prefix.lower()


class RefFiles:
    """The ref files under ``<home>/refs``, written atomically through ``<home>/tmp``.

    NOTE: on case-insensitive file systems (macOS and Windows defaults), names that differ
    only in case share one ref file.
    """

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = Path(tmp_dir)

    def path(self, name: str, tag: str) -> Path:
        """Return the ref file path of ``name:tag``; raise InvalidReferenceError if invalid.

        Validation keeps the path inside refs/. A symlinked folder that leads outside is
        also rejected.
        """
        path = self.root.joinpath(*validate_name(name).split("/"), validate_tag(tag))
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise InvalidReferenceError(
                f"Reference '{name}:{tag}' resolves to '{os.path.realpath(path)}', outside "
                f"'{root}'. Remove the symlink under '{self.root}'."
            )
        return path

    def read(self, name: str, tag: str) -> str | None:
        """Return the artifact id that ``name:tag`` points at, or None when there is no ref file.

        Raises CorruptReferenceError when the file does not contain an artifact id.
        """
        path = self.path(name, tag)
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise store_io_error("read the ref file", path, exc) from exc
        return _parse_ref_file(text, path)

    def write(self, name: str, tag: str, artifact_id: str) -> None:
        """Point ``name:tag`` at ``artifact_id``, replacing any earlier target atomically.

        Raises ReferenceConflictError when the name or tag is in use as a folder by other
        references, or runs through another reference's file.
        """
        path = self.path(name, tag)
        self._check_conflicts(name, tag, path)
        write_atomic(path, f"{artifact_id}\n".encode("ascii"), self.tmp_dir)
        logger.debug("Reference %s:%s now points at %s", name, tag, artifact_id)

    def stage(self, name: str, tag: str, artifact_id: str) -> StagedFile:
        """Stage the ref file of ``name:tag`` in tmp/; its ``commit`` points the reference.

        Raises the errors of ``write`` before anything is staged, and StoreIOError when
        tmp/ cannot be written.
        """
        path = self.path(name, tag)
        self._check_conflicts(name, tag, path)
        return StagedFile.write(path, f"{artifact_id}\n".encode("ascii"), self.tmp_dir)

    def delete(self, name: str, tag: str) -> bool:
        """Delete the ref file of ``name:tag`` and return whether it existed.

        Folders left empty under refs/ are removed too.
        """
        path = self.path(name, tag)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return False
        except OSError as exc:
            raise store_io_error("delete the ref file", path, exc) from exc

        folder = path.parent
        while folder != self.root:
            # Another process may have just added a reference here, so a full folder is fine.
            with contextlib.suppress(OSError):
                folder.rmdir()
            folder = folder.parent
        return True

    def scan(self) -> tuple[list[RefEntry], list[str]]:
        """Read every ref file; return the references sorted by name and tag, and the problems.

        A problem is a message about a file under refs/ that is not a valid reference, such
        as an editor backup or a file without an artifact id. Such files are skipped.
        """
        entries: list[RefEntry] = []
        problems: list[str] = []
        for path in self._iter_files():
            relative = PurePosixPath(path.relative_to(self.root).as_posix())
            name, tag = str(relative.parent), relative.name
            if _name_problem(name) or not _TAG.fullmatch(tag) or len(tag) > MAX_TAG_LENGTH:
                problems.append(
                    f"File '{path}' is not a ref file: '{relative}' is not a valid name/tag path. "
                    "Move it out of the refs folder."
                )
                continue
            try:
                artifact_id = self.read(name, tag)
            except CorruptReferenceError as exc:
                problems.append(str(exc))
                continue
            if artifact_id is not None:
                entries.append(RefEntry(name, tag, artifact_id))
        entries.sort(key=lambda entry: (entry.name, entry.tag))
        return entries, problems

    def entries(self) -> list[RefEntry]:
        """Return every valid reference sorted by name and tag; invalid files are logged."""
        entries, problems = self.scan()
        for problem in problems:
            logger.warning("%s", problem)
        return entries

    def _iter_files(self) -> list[Path]:
        return list_files(self.root)

    def _check_conflicts(self, name: str, tag: str, path: Path) -> None:
        if path.is_dir():
            raise ReferenceConflictError(
                f"Cannot store reference '{name}:{tag}': references named '{name}/{tag}/...' "
                f"use '{path}' as a folder. Choose another tag or name."
            )
        segments = name.split("/")
        for count in range(2, len(segments) + 1):
            ancestor = self.root.joinpath(*segments[:count])
            if ancestor.is_file():
                other = f"{'/'.join(segments[: count - 1])}:{segments[count - 1]}"
                raise ReferenceConflictError(
                    f"Cannot store reference '{name}:{tag}': the ref file of '{other}' is at "
                    f"'{ancestor}', where this name needs a folder. Choose another name."
                )


def _parse_ref_file(text: str, path: Path) -> str:
    artifact_id = text[:-1] if text.endswith("\n") else text
    if not _ARTIFACT_ID.fullmatch(artifact_id):
        raise CorruptReferenceError(
            f"Ref file '{path}' contains {text[:80]!r}, expected a 64-digit lowercase hex "
            "artifact id and a newline. Set the reference again or delete the file."
        )
    return artifact_id
