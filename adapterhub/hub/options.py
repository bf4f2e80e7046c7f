"""The options of a push, shared by the CLI and the Python API.

:class:`PushOptions` validates itself on construction; the help text of each option sits beside
its field and the CLI builds its ``--help`` from it. This module imports no huggingface_hub, so
building the CLI stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from adapterhub.errors import InvalidOptionError
from adapterhub.hub.locations import DEFAULT_REVISION, repo_id_problem


def _option(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class PushOptions:
    """The target repo and settings of a push, validated on construction."""

    repo_id: str = _option("", "target repo, OWNER/REPO; created if it does not exist")
    branch: str = _option(DEFAULT_REVISION, "branch to commit to; created from main if missing")
    private: bool = _option(False, "create the repo as private; an existing repo keeps its visibility")
    create_pr: bool = _option(False, "open a pull request instead of committing to the branch")
    message: str | None = _option(None, "commit message; default: Upload <reference> with adapterhub")
    force: bool = _option(False, "push even when the branch moved since this store last saw it")

    def __post_init__(self) -> None:
        problem = repo_id_problem(self.repo_id)
        if problem is not None:
            raise InvalidOptionError(f"invalid Hub repo {self.repo_id!r}: {problem}; expected OWNER/REPO")
        if not self.branch or any(char.isspace() for char in self.branch) or ".." in self.branch:
            raise InvalidOptionError(
                f"invalid branch {self.branch!r}: expected a branch name such as main or dev"
            )


def help_text(name: str) -> str:
    """Return the help text of the :class:`PushOptions` field ``name``."""
    return next(option.metadata["help"] for option in fields(PushOptions) if option.name == name)
