"""Repo management API of the test Hub: create and delete repos, branches and tags, validate cards."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .access import require_token, require_write, writable_repo
from .cards import validate_card
from .errors import bad_request, conflict, repo_not_found
from .handler import Request, Response, decoded, json_response, route
from .payloads import API_TYPES, REPO, URL_PREFIXES, repo_url
from .repos import HEADS, TAGS

if TYPE_CHECKING:
    from .server import HubServer

# Repo name rule of huggingface_hub's validate_repo_id: word characters, "-" and ".", at most 96.
REPO_NAME = re.compile(r"[\w\-.]{1,96}")
REF_NAME = re.compile(r"[A-Za-z0-9._\-]+(?:/[A-Za-z0-9._\-]+)*")


def _check_repo_name(name: object) -> str:
    if not isinstance(name, str) or not REPO_NAME.fullmatch(name):
        raise bad_request(f"Invalid repo name {name!r}: use 1 to 96 letters, digits, '-', '_' or '.'")
    if "--" in name or ".." in name or name.endswith(".git"):
        raise bad_request(f"Invalid repo name {name!r}: '--' and '..' are not allowed, nor a '.git' suffix")
    return name


def _check_ref_name(name: str) -> str:
    if not REF_NAME.fullmatch(name) or ".." in name or name.startswith("refs/") or name.endswith(".lock"):
        raise bad_request(f"Invalid reference name {name!r}")
    return name


def _repo_type(value: object) -> str:
    repo_type = value or "model"
    if repo_type not in URL_PREFIXES:
        raise bad_request(f"Invalid repo type {value!r}, expected one of {sorted(URL_PREFIXES)}")
    return str(repo_type)


def create_repo(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    identity = require_token(request, repo_api=False)
    body = request.json_object()
    name = _check_repo_name(body.get("name"))
    repo_type = _repo_type(body.get("type"))
    namespace = body.get("organization") or identity.user
    require_write(identity, namespace, f"create a {repo_type} repo under the namespace {namespace}")

    private = body.get("visibility") == "private" or body.get("private") is True
    repo, created = hub.store.create(repo_type, f"{namespace}/{name}", private, identity.user)
    url = repo_url(request.base_url, repo)
    if not created:
        # create_repo(exist_ok=True) reads `url` from this 409 body.
        raise conflict(f"You already created this {repo_type} repo", url=url)
    return json_response({"url": url, "name": repo.repo_id})


def delete_repo(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    body = request.json_object()
    repo_type = _repo_type(body.get("type"))
    namespace = body.get("organization") or (request.identity.user if request.identity else "")
    repo_id = f"{namespace}/{body.get('name')}"
    writable_repo(hub, request, repo_type, repo_id, f"delete {repo_id}")
    if not hub.store.delete(repo_type, repo_id):
        raise repo_not_found(repo_id, authenticated=True)
    return json_response({})


def create_branch(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    branch = _check_ref_name(decoded(match, "branch"))
    repo_id = decoded(match, "repo")
    repo_type = API_TYPES[match.group("type")]
    repo = writable_repo(hub, request, repo_type, repo_id, f"create a branch in {repo_id}")
    starting_point = request.json_object().get("startingPoint") or "main"
    commit = hub.store.resolve(repo, starting_point)
    hub.store.create_ref(repo, HEADS + branch, commit.oid)
    return json_response({"name": branch, "ref": HEADS + branch, "targetCommit": commit.oid})


def delete_branch(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo_id = decoded(match, "repo")
    repo_type = API_TYPES[match.group("type")]
    repo = writable_repo(hub, request, repo_type, repo_id, f"delete a branch in {repo_id}")
    hub.store.delete_ref(repo, HEADS + decoded(match, "branch"))
    return json_response({})


def create_tag(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    """Tag the revision named in the path with the body's `tag`.

    NOTE: the tag is lightweight, so the optional `message` is accepted and dropped.
    """
    repo_id = decoded(match, "repo")
    repo = writable_repo(hub, request, API_TYPES[match.group("type")], repo_id, f"create a tag in {repo_id}")
    tag = request.json_object().get("tag")
    if not isinstance(tag, str):
        raise bad_request('Missing "tag" in the request body')
    commit = hub.store.resolve(repo, decoded(match, "revision"))
    hub.store.create_ref(repo, TAGS + _check_ref_name(tag), commit.oid)
    return json_response({"name": tag, "ref": TAGS + tag, "targetCommit": commit.oid})


def delete_tag(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo_id = decoded(match, "repo")
    repo = writable_repo(hub, request, API_TYPES[match.group("type")], repo_id, f"delete a tag in {repo_id}")
    hub.store.delete_ref(repo, TAGS + decoded(match, "revision"))
    return json_response({})


def validate_yaml(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    """Check README metadata. Always JSON: the client parses the body before it checks the status."""
    content = request.json_object().get("content")
    if not isinstance(content, str):
        return json_response({"errors": [{"message": 'Missing "content" string'}], "warnings": []}, 400)
    errors = validate_card(content)
    status = 400 if errors else 200
    return json_response({"errors": [{"message": error} for error in errors], "warnings": []}, status)


ROUTES = [
    route("POST", r"/api/repos/create", create_repo),
    route("DELETE", r"/api/repos/delete", delete_repo),
    route("POST", r"/api/validate-yaml", validate_yaml),
    route("POST", REPO + r"/branch/(?P<branch>[^/]+)", create_branch),
    route("DELETE", REPO + r"/branch/(?P<branch>[^/]+)", delete_branch),
    route("POST", REPO + r"/tag/(?P<revision>[^/]+)", create_tag),
    route("DELETE", REPO + r"/tag/(?P<revision>[^/]+)", delete_tag),
]
