"""Who may read and write which repo on the test Hub.

Anyone may read a public repo, and only members of its namespace may read a private one.
Writes need a token with the "write" role whose user is the namespace or one of its orgs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import HubError, forbidden, repo_not_found
from .handler import Identity, Request
from .repos import Repo

if TYPE_CHECKING:
    from .server import HubServer


def require_token(request: Request, *, repo_api: bool) -> Identity:
    """Return the caller's identity, or raise 401 when the request carries no token.

    On `/api/{models,datasets,spaces}/...` and `/resolve/` URLs the 401 also carries
    `X-Error-Code: RepoNotFound`. Over https, huggingface_hub 2.4 turns any 401 on those URLs into
    RepositoryNotFoundError, but it skips that rule for plain-http endpoints such as this one, so
    the header restores the exception callers get from huggingface.co.
    """
    if request.identity is None:
        message = "Invalid username or password. Send a token in the header 'Authorization: Bearer <token>'."
        raise HubError(401, message, code="RepoNotFound" if repo_api else None)
    return request.identity


def require_write(identity: Identity, namespace: str | None, action: str) -> None:
    """Raise 403 unless `identity` has a write token and, when `namespace` is given, may write there.

    `action` completes the message, for example "push to testuser/adapter".
    """
    if identity.role != "write":
        user = identity.user
        raise forbidden(f"The token of user {user} is read-only. Use a token with write access to {action}")
    if namespace is not None and not identity.can_write(namespace):
        raise forbidden(f"You don't have the rights to {action}: {identity.user} cannot write to {namespace}")


def readable_repo(hub: "HubServer", request: Request, repo_type: str, repo_id: str) -> Repo:
    """Return the repo if the caller may read it, or raise RepoNotFound (private repos included)."""
    repo = hub.store.get(repo_type, repo_id)
    identity = request.identity
    if repo is None or (repo.private and (identity is None or not identity.is_member(repo.namespace))):
        raise repo_not_found(repo_id, authenticated=identity is not None)
    return repo


def writable_repo(hub: "HubServer", request: Request, repo_type: str, repo_id: str, action: str) -> Repo:
    """Return the repo if the caller may write to it, or raise 401, 403 or RepoNotFound."""
    identity = require_token(request, repo_api=True)
    repo = readable_repo(hub, request, repo_type, repo_id)
    require_write(identity, repo.namespace, action)
    return repo
