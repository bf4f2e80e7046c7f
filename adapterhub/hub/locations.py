"""Where an adapter lives on the Hub: ``OWNER/REPO[@REVISION]`` and ``hf://`` references.

A reference ``hf://OWNER/REPO[@REVISION]`` names the same adapter as the ``OWNER/REPO[@REVISION]``
argument of ``adapterhub pull``. The revision is a branch, tag or commit id and defaults to
``main``. Repo ids follow huggingface_hub's rules: each part has 1 to 96 letters, digits, ``-``,
``_`` or ``.``, without ``--`` or ``..``, and the name does not end in ``.git``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from adapterhub.errors import InvalidOptionError, UnsafeRemotePathError

HF_SCHEME = "hf://"
DEFAULT_REVISION = "main"

_REPO_PART = re.compile(r"[\w\-.]{1,96}")
_COMMIT_ID = re.compile(r"[0-9a-f]{40}")
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")
SYNTAX = "OWNER/REPO[@REVISION], such as someone/style-lora or someone/style-lora@v1"


@dataclass(frozen=True)
class HubLocation:
    """A repo on the Hub and the revision (branch, tag or commit id) to read or write."""

    repo_id: str
    revision: str = DEFAULT_REVISION

    @property
    def is_commit(self) -> bool:
        """Whether the revision is a full commit id, which never moves."""
        return bool(_COMMIT_ID.fullmatch(self.revision))

    @property
    def uri(self) -> str:
        """The ``hf://`` reference to this location; the default revision is left out."""
        suffix = "" if self.revision == DEFAULT_REVISION else f"@{self.revision}"
        return f"{HF_SCHEME}{self.repo_id}{suffix}"

    def __str__(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def is_hub_reference(text: str) -> bool:
    """Return whether ``text`` is an ``hf://`` reference rather than a store reference or path."""
    return isinstance(text, str) and text.startswith(HF_SCHEME)


def parse_location(text: str) -> HubLocation:
    """Parse ``OWNER/REPO[@REVISION]``, with or without the ``hf://`` prefix.

    Raises :class:`InvalidOptionError` naming the text and the expected syntax.
    """
    body = text[len(HF_SCHEME):] if is_hub_reference(text) else text
    repo_id, at, revision = body.partition("@")
    problem = repo_id_problem(repo_id)
    if problem is None and at and not revision.strip():
        problem = "the revision after '@' is empty"
    if problem is None and at and any(char.isspace() for char in revision):
        problem = f"the revision {revision!r} contains whitespace"
    if problem is not None:
        raise InvalidOptionError(f"invalid Hub repo {text!r}: {problem}; expected {SYNTAX}")
    return HubLocation(repo_id, revision if at else DEFAULT_REVISION)


def repo_id_problem(repo_id: str) -> str | None:
    """Return why ``repo_id`` is not a valid ``OWNER/REPO`` id, or None when it is."""
    parts = repo_id.split("/")
    if len(parts) != 2:
        return "a repo id has exactly one '/' between owner and name"
    for part in parts:
        if not _REPO_PART.fullmatch(part):
            return f"{part!r} must be 1 to 96 letters, digits, '-', '_' or '.'"
        if "--" in part or ".." in part:
            return f"{part!r} must not contain '--' or '..'"
    if repo_id.endswith(".git"):
        return "a repo name must not end in '.git'"
    return None


def normalize_subfolder(subfolder: str | None) -> str:
    """Return ``subfolder`` as a relative POSIX path without a trailing slash ('' for none).

    Raises :class:`InvalidOptionError` for an absolute path or one with ``..`` segments.
    """
    if not subfolder:
        return ""
    cleaned = subfolder if subfolder.startswith("/") else subfolder.rstrip("/")
    problem = path_problem(cleaned)
    if problem is not None:
        raise InvalidOptionError(
            f"invalid --subfolder {subfolder!r}: {problem}; give a folder inside the repo, "
            "such as adapters/style"
        )
    return cleaned


def path_problem(path: str) -> str | None:
    """Return why a repo path would leave its folder when joined to it, or None when it is safe."""
    if path.startswith("/") or "\\" in path or _WINDOWS_DRIVE.match(path):
        return "it is an absolute path"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "it has an empty, '.' or '..' segment"
    return None


def check_remote_paths(location: HubLocation, paths: list[str]) -> None:
    """Raise :class:`UnsafeRemotePathError` listing every path of a repo listing that is unsafe.

    A listing is checked whole, before anything is downloaded, so a repo that names even one
    file outside its folder is never read.
    """
    unsafe = [f"{path!r} ({problem})" for path in paths
              if (problem := path_problem(path)) is not None]
    if unsafe:
        raise UnsafeRemotePathError(
            f"{location} lists files whose paths would leave the download folder: "
            f"{', '.join(unsafe)}; nothing was downloaded. Report the repo to its owner and pull "
            "another revision"
        )


def join_subfolder(subfolder: str, name: str) -> str:
    """Return the repo path of ``name`` inside ``subfolder``."""
    return str(PurePosixPath(subfolder) / name) if subfolder else name
