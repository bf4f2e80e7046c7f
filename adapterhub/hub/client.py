"""The one module of adapterhub that calls huggingface_hub: listings, downloads, commits, search.

Every request goes through huggingface_hub's ``HfApi`` with no endpoint, token or cache passed
explicitly, so HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME / HF_HUB_CACHE and the proxy
variables apply as they do for any huggingface_hub program. Errors of huggingface_hub and of
its HTTP library (httpx2) are translated here into leaves of :class:`adapterhub.errors.HubError`
whose messages name the fix. The token is never logged, stored or put into a message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import huggingface_hub
from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub import errors as hf_errors

from adapterhub import __version__
from adapterhub.errors import (
    DownloadError,
    GatedRepoError,
    HubAuthError,
    HubError,
    HubNotFoundError,
    OfflineError,
    RemoteMovedError,
)
from adapterhub.hub.locations import HubLocation

logger = logging.getLogger(__name__)

README_NAME = "README.md"


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo revision as the Hub lists it.

    ``git_oid`` is the git blob id: of the content for a regular file, of the LFS pointer for
    an LFS file. ``sha256`` is the content's sha256 for LFS files and None for regular files,
    because the Hub lists no sha256 for those.
    """

    path: str
    size: int
    git_oid: str | None
    sha256: str | None


@dataclass(frozen=True)
class RemoteSnapshot:
    """The files of a repo at the commit a revision pointed to when it was listed."""

    location: HubLocation
    commit: str
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class CommitOutcome:
    """A commit made on the Hub, and the pull request it opened, if any."""

    commit: str
    url: str
    pull_request_url: str | None
    pull_request_revision: str | None


class HubClient:
    """huggingface_hub's ``HfApi`` with adapterhub's error translation around each call."""

    def __init__(self) -> None:
        self.api = HfApi(library_name="adapterhub", library_version=__version__)

    @property
    def endpoint(self) -> str:
        """The Hub endpoint in use (HF_ENDPOINT), without any user name or password in it."""
        parts = urlsplit(self.api.endpoint.rstrip("/"))
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=host))

    @staticmethod
    def offline() -> bool:
        """Return whether huggingface_hub is in offline mode (HF_HUB_OFFLINE, read at its import)."""
        return bool(constants.HF_HUB_OFFLINE)

    def require_online(self, action: str) -> None:
        """Raise :class:`OfflineError` before any request when offline mode is on."""
        if self.offline():
            raise OfflineError(_offline_message(action))

    def snapshot(self, location: HubLocation) -> RemoteSnapshot:
        """List the files of ``location`` with their sizes, git ids and LFS sha256."""
        with self.translated(f"read {location}", location):
            info = self.api.model_info(location.repo_id, revision=location.revision, files_metadata=True)
        files = {}
        for sibling in info.siblings or []:
            lfs = sibling.lfs
            files[sibling.rfilename] = RemoteFile(
                sibling.rfilename, int(sibling.size or 0), sibling.blob_id,
                lfs["sha256"] if lfs else None,
            )
        return RemoteSnapshot(location, info.sha, files)

    def head_commit(self, location: HubLocation) -> str | None:
        """Return the commit ``location`` points to, or None when the repo or revision is missing."""
        try:
            with self.translated(f"read {location}", location):
                return self.api.model_info(location.repo_id, revision=location.revision).sha
        except HubNotFoundError as exc:
            if isinstance(exc.__cause__, (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError)):
                return None
            raise

    def download(self, repo_id: str, commit: str, path: str) -> Path:
        """Download ``path`` at ``commit`` into the HF cache, or find it there; return the file."""
        location = HubLocation(repo_id, commit)
        with self.translated(f"download {path} from {repo_id}@{commit[:12]}", location, path):
            return Path(self.api.hf_hub_download(repo_id, path, revision=commit))

    def read_text(self, repo_id: str, commit: str, path: str) -> str | None:
        """Return the text of ``path`` at ``commit``, or None when the file does not exist."""
        try:
            downloaded = self.download(repo_id, commit, path)
        except HubNotFoundError as exc:
            if isinstance(exc.__cause__, hf_errors.EntryNotFoundError):
                return None
            raise
        return downloaded.read_text(encoding="utf-8", errors="replace")

    def require_write_token(self, repo_id: str) -> None:
        """Raise :class:`HubAuthError` unless a token is set and the Hub accepts it for writing.

        A token whose role the Hub reports as "read" is rejected here, before anything is
        uploaded. Fine-grained tokens report no single role, so the Hub's response to
        the upload decides for them.
        """
        if huggingface_hub.get_token() is None:
            raise HubAuthError(
                f"pushing to {repo_id} needs a Hugging Face token with write access, and none is "
                f"set; create one at {self.endpoint}/settings/tokens and set HF_TOKEN to it, or "
                "run `hf auth login`"
            )
        with self.translated(f"push to {repo_id}", HubLocation(repo_id)):
            account = self.api.whoami()
        token = (account.get("auth") or {}).get("accessToken") or {}
        if token.get("role") == "read":
            raise HubAuthError(
                f"the token in use (user {account.get('name')}) is read-only, and pushing to "
                f"{repo_id} needs write access; create a token with write access at "
                f"{self.endpoint}/settings/tokens and set HF_TOKEN to it"
            )

    def create_repo(self, repo_id: str, private: bool) -> None:
        """Create the model repo ``repo_id`` if it does not exist; an existing repo is kept as is."""
        with self.translated(f"create the repo {repo_id}", HubLocation(repo_id)):
            self.api.create_repo(repo_id, private=private, exist_ok=True)

    def create_branch(self, repo_id: str, branch: str) -> None:
        """Create ``branch`` from main if it does not exist."""
        with self.translated(f"create the branch {branch} in {repo_id}", HubLocation(repo_id, branch)):
            self.api.create_branch(repo_id, branch=branch, exist_ok=True)

    def commit(self, location: HubLocation, files: dict[str, Path | bytes], message: str,
               parent_commit: str | None, create_pr: bool) -> CommitOutcome:
        """Add ``files`` (repo path → file or bytes) to ``location`` in one commit.

        With ``parent_commit`` the Hub rejects the commit when the branch head has moved,
        which raises :class:`RemoteMovedError`.
        """
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(content) if isinstance(content, Path) else content)
            for path, content in sorted(files.items())
        ]
        with self.translated(f"push to {location}", location):
            info = self.api.create_commit(
                location.repo_id, operations, commit_message=message, revision=location.revision,
                parent_commit=parent_commit, create_pr=create_pr,
            )
        return CommitOutcome(info.oid, info.commit_url, info.pr_url, info.pr_revision)

    def search(self, query: str | None, filters: list[str], limit: int) -> list[dict[str, Any]]:
        """Return the models matching ``query`` and every tag in ``filters``, at most ``limit``."""
        with self.translated("search the Hub", None):
            found = list(self.api.list_models(search=query or None, filter=filters, limit=limit))
        return [
            {
                "id": model.id,
                "downloads": model.downloads,
                "likes": model.likes,
                "tags": list(model.tags or []),
                "pipeline_tag": model.pipeline_tag,
                "library_name": model.library_name,
                "created_at": model.created_at.isoformat() if model.created_at else None,
                "private": model.private,
                "gated": model.gated,
            }
            for model in found
        ]

    @contextlib.contextmanager
    def translated(self, action: str, location: HubLocation | None, path: str | None = None) -> Iterator[None]:
        """Turn huggingface_hub and httpx2 errors raised inside the block into HubError leaves."""
        try:
            yield
        except (hf_errors.HfHubHTTPError, hf_errors.OfflineModeIsEnabled, hf_errors.LocalTokenNotFoundError,
                hf_errors.LocalEntryNotFoundError, httpx2.HTTPError, OSError, ValueError) as exc:
            raise self._translate(exc, action, location, path) from exc

    def _translate(self, exc: Exception, action: str, location: HubLocation | None,
                   path: str | None) -> HubError:
        repo = location.repo_id if location is not None else ""
        if isinstance(exc, hf_errors.OfflineModeIsEnabled):
            return OfflineError(_offline_message(action))
        if isinstance(exc, hf_errors.GatedRepoError):
            return GatedRepoError(
                f"{repo} is a gated repo, and the token in use has no access to it; request access "
                f"at {self.endpoint}/{repo}, and once it is granted set HF_TOKEN to a token of "
                "that account"
            )
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return HubNotFoundError(
                f"repo {repo} not found on {self.endpoint}; check the name, and if the repo is "
                "private set HF_TOKEN to a token that can read it"
            )
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return HubNotFoundError(
                f"revision {location.revision!r} not found in {repo}; give a branch, tag or "
                "commit id of the repo, or leave out @REVISION to use main"
            )
        if isinstance(exc, hf_errors.EntryNotFoundError) and not isinstance(exc, hf_errors.LocalEntryNotFoundError):
            return HubNotFoundError(f"{path} not found in {location}; the file was removed or renamed")
        if isinstance(exc, hf_errors.LocalTokenNotFoundError):
            return HubAuthError(
                f"cannot {action}: no Hugging Face token is set; set HF_TOKEN or run `hf auth login`"
            )
        if isinstance(exc, hf_errors.HfHubHTTPError):
            return self._http_error(exc, action, location)
        if path is not None:
            return DownloadError(
                f"cannot {action}: the download failed ({_describe(exc)}); nothing was stored, "
                "run the command again"
            )
        return HubError(
            f"cannot {action}: {_describe(exc)}; check the network connection, HF_ENDPOINT "
            f"({self.endpoint}) and the proxy variables, then run the command again"
        )

    def _http_error(self, exc: hf_errors.HfHubHTTPError, action: str,
                    location: HubLocation | None) -> HubError:
        status = exc.response.status_code if exc.response is not None else None
        detail = exc.server_message or str(exc).splitlines()[0]
        if status == 401:
            return HubAuthError(
                f"the Hub rejected the token in use ({detail}); set HF_TOKEN to a valid token "
                f"from {self.endpoint}/settings/tokens, or unset it to read public repos anonymously"
            )
        if status == 403:
            return HubAuthError(
                f"the Hub denied permission to {action} ({detail}); use a token with write "
                f"access to it: create one at {self.endpoint}/settings/tokens and set HF_TOKEN"
            )
        if status == 412 and location is not None:
            return RemoteMovedError(
                f"{location} moved while this push was being prepared ({detail}); run "
                "`adapterhub sync --status` to compare, then push again"
            )
        return HubError(f"cannot {action}: the Hub returned HTTP {status} ({detail}); try again later")


def _offline_message(action: str) -> str:
    return (
        f"cannot {action}: HF_HUB_OFFLINE is set, so huggingface_hub makes no network requests; "
        "unset HF_HUB_OFFLINE (or set it to 0) and run the command again"
    )


def _describe(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
