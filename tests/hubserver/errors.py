"""Error responses of the test Hub.

huggingface_hub picks its exception class from the `X-Error-Code` response header
(`utils/_http.py › hf_raise_for_status` in huggingface_hub 2.4): `RepoNotFound`,
`RevisionNotFound`, `EntryNotFound` and `GatedRepo` give RepositoryNotFoundError,
RevisionNotFoundError, RemoteEntryNotFoundError and GatedRepoError. The message is read from
`X-Error-Message` and from the JSON body's `error` key, so every error sets both.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """An HTTP error response: status, message, optional `X-Error-Code` and extra JSON body keys."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra_body = dict(extra_body or {})


def repo_not_found(repo_id: str, authenticated: bool) -> HubError:
    # The Hub returns 401 to anonymous requests and 404 to authenticated ones, so that an
    # anonymous caller cannot tell a private repo from a missing one.
    return HubError(401 if not authenticated else 404, "Repository not found", code="RepoNotFound")


def revision_not_found(revision: str) -> HubError:
    return HubError(404, f"Invalid rev id: {revision}", code="RevisionNotFound")


def entry_not_found(path: str, commit_oid: str | None = None, message: str | None = None) -> HubError:
    # With X-Repo-Commit on the 404, hf_hub_download records the missing file in the cache
    # (`.no_exist/<commit>/<path>`) as it does against huggingface.co.
    headers = {"X-Repo-Commit": commit_oid} if commit_oid else {}
    message = message or f"Entry not found: {path}"
    return HubError(404, message, code="EntryNotFound", headers=headers)


def gated_repo(repo_id: str, authenticated: bool) -> HubError:
    if not authenticated:
        message = (
            f"Access to model {repo_id} is restricted. You must have access to it and be "
            "authenticated to access it. Please log in."
        )
        return HubError(401, message, code="GatedRepo")
    message = f"Access to model {repo_id} is restricted and you are not in the authorized list."
    return HubError(403, message, code="GatedRepo")


def bad_request(message: str) -> HubError:
    return HubError(400, message)


def forbidden(message: str) -> HubError:
    return HubError(403, message)


def conflict(message: str, **extra_body: Any) -> HubError:
    return HubError(409, message, extra_body=extra_body)
