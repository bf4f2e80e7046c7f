"""Upload API of the test Hub: preupload, the NDJSON commit, and Git LFS batch, PUT and verify.

With Xet disabled, huggingface_hub 2.4 uploads a folder in four steps. It validates the README
(validate-yaml), asks preupload whether each file is "lfs" or "regular", sends an LFS batch
request and one PUT per missing LFS object, and then sends one NDJSON commit. The commit lines
are `header`, `file` (regular content, base64), `lfsFile` (a reference to an uploaded object),
`deletedFile` and `deletedFolder`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .access import readable_repo, require_token, require_write
from .blobs import DigestMismatchError
from .cards import validate_card
from .errors import HubError, bad_request
from .handler import Request, Response, decoded, json_response, route
from .payloads import API_TYPES, PATH_PREFIX_TYPES, REPO, repo_url
from .gitobjects import FileEntry
from .repos import AddFile, DeleteFile, DeleteFolder, Operation, Repo, validate_path

if TYPE_CHECKING:
    from .server import HubServer

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
LFS_CONTENT_TYPE = "application/vnd.git-lfs+json"


@dataclass(frozen=True)
class LfsTicket:
    """Permission to PUT one LFS object into one repo, named by an unguessable URL token."""

    repo_key: tuple[str, str]
    oid: str
    size: int


def _upload_target(hub: "HubServer", request: Request, match: re.Match[str]) -> Repo:
    """Return the repo for a preupload or commit request after the permission checks.

    Opening a pull request needs a write token but no write access to the repo, as on the Hub.
    """
    identity = require_token(request, repo_api=True)
    repo_id = decoded(match, "repo")
    repo = readable_repo(hub, request, API_TYPES[match.group("type")], repo_id)
    if request.query_flag("create_pr"):
        require_write(identity, None, f"open a pull request on {repo_id}")
    else:
        require_write(identity, repo.namespace, f"push to {repo_id}")
    return repo


def preupload(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo = _upload_target(hub, request, match)
    commit = hub.store.resolve(repo, decoded(match, "revision"))
    body = request.json_object()
    gitignore = body.get("gitIgnore")

    files = []
    for item in body.get("files", []):
        path = validate_path(item.get("path", ""))
        sample = base64.b64decode(item.get("sample") or "")
        existing = commit.tree.get(path)
        # The client skips unchanged files: it compares this with the sha256 of a file it sends as
        # "lfs" and with the git blob id of a file it sends as "regular".
        remote_oid = None
        if existing is not None:
            remote_oid = existing.sha256 if existing.lfs else existing.git_oid
        files.append(
            {
                "path": path,
                "uploadMode": hub.store.upload_mode(commit, path, int(item.get("size", 0)), sample),
                "shouldIgnore": hub.store.is_ignored(commit, path, gitignore),
                "oid": remote_oid,
            }
        )
    return json_response({"files": files, "commitOid": commit.oid})


def _parse_commit_lines(body: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    lines = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except ValueError as exc:
            raise bad_request(f"Commit payload line {number} is not valid JSON: {exc}") from exc
    if not lines or lines[0].get("key") != "header":
        raise bad_request('The first line of a commit payload must have "key": "header"')
    return lines[0].get("value") or {}, lines[1:]


def _operation(hub: "HubServer", repo: Repo, line: dict[str, Any]) -> Operation:
    key, value = line.get("key"), line.get("value") or {}
    # The client sends folder deletions with a trailing slash ("logs/").
    raw_path = str(value.get("path", ""))
    path = validate_path(raw_path.rstrip("/") if key == "deletedFolder" else raw_path)
    if key == "file":
        try:
            content = base64.b64decode(value.get("content", ""), validate=True)
        except binascii.Error as exc:
            raise bad_request(f"Content of {path} is not valid base64: {exc}") from exc
        return AddFile(path, hub.store.entry_for_bytes(content, lfs=False))
    if key == "lfsFile":
        return AddFile(path, _lfs_entry(hub, repo, path, value))
    if key == "deletedFile":
        return DeleteFile(path)
    if key == "deletedFolder":
        return DeleteFolder(path)
    raise bad_request(f"Unknown commit operation {key!r} for {path}")


def _lfs_entry(hub: "HubServer", repo: Repo, path: str, value: dict[str, Any]) -> FileEntry:
    oid = str(value.get("oid", ""))
    with hub.store.lock:
        known = oid in repo.lfs_objects
    if not known or not hub.blobs.exists(oid):
        message = f"LFS object {oid} for {path} was not uploaded to {repo.repo_id}. Upload it before committing"
        raise bad_request(message)
    size = hub.blobs.size(oid)
    # Server-side copies of LFS files omit the size.
    if value.get("size") is not None and int(value["size"]) != size:
        raise bad_request(f"LFS object {oid} for {path} has {size} bytes, the commit says {value['size']}")
    return FileEntry.for_content(oid, size, True, None)


def _check_readme(hub: "HubServer", operations: list[Operation]) -> None:
    for operation in operations:
        if isinstance(operation, AddFile) and operation.path == "README.md":
            errors = validate_card(hub.blobs.read(operation.entry.sha256).decode(errors="replace"))
            if errors:
                raise bad_request("Invalid metadata in README.md: " + "; ".join(errors))


def commit(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo = _upload_target(hub, request, match)
    header, lines = _parse_commit_lines(request.body())
    operations = [_operation(hub, repo, line) for line in lines]
    _check_readme(hub, operations)
    title = str(header.get("summary") or "")
    if not title:
        raise bad_request("The commit header needs a non-empty summary")
    description = str(header.get("description") or "")
    parent = header.get("parentCommit")
    revision = decoded(match, "revision")
    author = request.identity.user if request.identity else "anonymous"

    pull_request_url = None
    if request.query_flag("create_pr"):
        base = hub.store.resolve(repo, parent or revision)
        ref, number = hub.store.open_pull_request(repo, base.oid)
        try:
            new_commit = hub.store.commit(repo, ref, operations, title, description, author)
        except HubError:
            hub.store.delete_ref(repo, ref)
            raise
        pull_request_url = f"{repo_url(request.base_url, repo)}/discussions/{number}"
    else:
        ref = hub.store.branch_ref(repo, revision)
        new_commit = hub.store.commit(repo, ref, operations, title, description, author, parent)

    hub._count_upload(sum(1 for line in lines if line.get("key") == "file"))
    return json_response(
        {
            "success": True,
            "commitOid": new_commit.oid,
            "commitUrl": f"{repo_url(request.base_url, repo)}/commit/{new_commit.oid}",
            "hookOutput": "",
            "pullRequestUrl": pull_request_url,
        }
    )


def lfs_batch(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    """Return the Git LFS batch response: no `actions` for objects the repo has, an upload URL for others."""
    identity = require_token(request, repo_api=False)
    repo_id = decoded(match, "repo")
    repo = readable_repo(hub, request, PATH_PREFIX_TYPES[match.group("prefix")], repo_id)
    body = request.json_object()
    # Without a `ref` the upload is for a pull request, which any write token may open.
    require_write(identity, repo.namespace if body.get("ref") else None, f"upload LFS objects to {repo_id}")
    if body.get("operation") != "upload":
        raise bad_request(f"Unsupported LFS batch operation {body.get('operation')!r}, expected 'upload'")

    objects = []
    for item in body.get("objects", []):
        oid, size = str(item.get("oid", "")), item.get("size")
        if not SHA256_HEX.fullmatch(oid) or not isinstance(size, int) or size < 0:
            error = {"code": 422, "message": "Invalid oid (64 hex digits) or size (integer >= 0)"}
            objects.append({"oid": oid, "size": size, "error": error})
            continue
        with hub.store.lock:
            present = oid in repo.lfs_objects and hub.blobs.exists(oid)
        if present:
            objects.append({"oid": oid, "size": size})
            continue
        ticket = hub._issue_lfs_ticket(LfsTicket((repo.repo_type, repo.repo_id), oid, size))
        actions = {
            "upload": {"href": f"{request.base_url}/_lfs/upload/{ticket}"},
            "verify": {"href": f"{request.base_url}/_lfs/verify/{ticket}"},
        }
        objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
    body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
    return json_response(body, headers={"Content-Type": LFS_CONTENT_TYPE})


def _ticket_repo(hub: "HubServer", match: re.Match[str]) -> tuple[LfsTicket, Repo]:
    ticket = hub._lfs_ticket(match.group("ticket"))
    repo = hub.store.get(*ticket.repo_key) if ticket is not None else None
    if ticket is None or repo is None:
        raise HubError(404, "Unknown or expired LFS upload URL")
    return ticket, repo


def lfs_upload(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    """Store the PUT body as an LFS object. The URL is the credential: the client sends no token here."""
    ticket, repo = _ticket_repo(hub, match)
    if request.content_length != ticket.size:
        message = f"Content-Length {request.content_length} does not match the LFS object size {ticket.size}"
        raise bad_request(message)
    try:
        hub.blobs.put_stream(request.stream(), ticket.size, ticket.oid)
    except DigestMismatchError as exc:
        raise bad_request(f"Upload of LFS object {ticket.oid} rejected: {exc}") from exc
    with hub.store.lock:
        repo.lfs_objects.add(ticket.oid)
    hub._count_upload(1)
    return Response(200)


def lfs_verify(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    ticket, repo = _ticket_repo(hub, match)
    with hub.store.lock:
        present = ticket.oid in repo.lfs_objects
    if not present:
        raise HubError(404, f"LFS object {ticket.oid} has not been uploaded")
    return json_response({"success": True})


ROUTES = [
    route("POST", REPO + r"/preupload/(?P<revision>[^/]+)", preupload),
    route("POST", REPO + r"/commit/(?P<revision>[^/]+)", commit),
    route(
        "POST",
        r"/(?:(?P<prefix>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+?)\.git/info/lfs/objects/batch",
        lfs_batch,
    ),
    route("PUT", r"/_lfs/upload/(?P<ticket>[0-9a-f]+)", lfs_upload),
    route("POST", r"/_lfs/verify/(?P<ticket>[0-9a-f]+)", lfs_verify),
]
