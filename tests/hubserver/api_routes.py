"""Read-side JSON API of the test Hub: whoami, repo info, model search, tree, paths-info, refs, commits."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .access import readable_repo
from .errors import HubError, entry_not_found
from .gitobjects import Commit
from .handler import Request, Response, decoded, json_response, route
from .payloads import (
    API_TYPES,
    REPO,
    commit_payload,
    paginate,
    path_payload,
    repo_info,
    select_fields,
)
from .repos import HEADS, PULL_REQUESTS, TAGS

if TYPE_CHECKING:
    from .server import HubServer

# Real Hub page sizes for tree listings: 1000 entries, 50 when `expand=true` (hf_api.py docstring).
EXPANDED_PAGE_SIZE = 50
# Fields /api/models returns per repo when neither `full`, `cardData` nor `expand` is requested.
LIST_FIELDS = ["createdAt", "downloads", "gated", "library_name", "likes", "pipeline_tag", "private", "tags"]
SORT_KEYS = {"createdAt", "downloads", "id", "lastModified", "likes"}


def _repo(hub: "HubServer", request: Request, match: re.Match[str]):
    return readable_repo(hub, request, API_TYPES[match.group("type")], decoded(match, "repo"))


def whoami(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    identity = request.identity
    if identity is None:
        raise HubError(401, "Invalid user token. Pass a token in the Authorization header.")
    orgs = [
        {"type": "org", "name": org, "fullname": org, "roleInOrg": "write", "isEnterprise": False}
        for org in identity.orgs
    ]
    return json_response(
        {
            "type": "user",
            "id": identity.user,
            "name": identity.user,
            "fullname": identity.user,
            "email": f"{identity.user}@example.com",
            "emailVerified": True,
            "canPay": False,
            "isPro": False,
            "periodEnd": None,
            "orgs": orgs,
            "auth": {
                "type": "access_token",
                "accessToken": {"displayName": f"{identity.role} token", "role": identity.role},
            },
        }
    )


def get_repo_info(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo = _repo(hub, request, match)
    revision = decoded(match, "revision") if match.group("revision") else "main"
    info = repo_info(hub, repo, hub.store.resolve(repo, revision), blobs=request.query_flag("blobs"))
    expand = request.query.get("expand")
    return json_response(select_fields(info, expand) if expand else info)


def list_repos(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    """List repos for `/api/models?search=&author=&filter=&limit=&sort=`.

    `search` matches a substring of the repo id, case-insensitively. Every `filter` value must be
    one of the repo's tags, and the library name is a tag.
    """
    identity = request.identity
    search = (request.query_value("search") or "").lower()
    author = request.query_value("author")
    wanted_tags = request.query.get("filter", [])
    pipeline_tag = request.query_value("pipeline_tag")
    gated = request.query_value("gated")

    infos = []
    for repo in hub.store.repos_of_type(API_TYPES[match.group("type")]):
        if repo.private and (identity is None or not identity.is_member(repo.namespace)):
            continue
        if search not in repo.repo_id.lower() or (author and repo.namespace != author):
            continue
        if gated is not None and repo.gated != (gated.lower() == "true"):
            continue
        info = repo_info(hub, repo, hub.store.resolve(repo, "main"), blobs=False)
        if not all(tag in info["tags"] for tag in wanted_tags):
            continue
        if pipeline_tag and info.get("pipeline_tag") != pipeline_tag:
            continue
        infos.append(info)

    # Without `sort`, repos are sorted by id. The real Hub sorts them by trending score.
    sort = request.query_value("sort")
    if sort in SORT_KEYS:
        infos.sort(key=lambda info: info.get(sort) or 0, reverse=sort != "id")
    else:
        infos.sort(key=lambda info: info["id"])
    items = [_list_item(info, request) for info in infos]
    limit = request.query_value("limit")
    if limit and limit.isdigit():
        items = items[: int(limit)]
    page, headers = paginate(request, items, hub.page_size)
    return json_response(page, headers=headers)


def _list_item(info: dict[str, Any], request: Request) -> dict[str, Any]:
    if request.query.get("expand"):
        return select_fields(info, request.query["expand"])
    fields = list(LIST_FIELDS)
    if request.query_flag("full"):
        fields += ["author", "disabled", "lastModified", "safetensors", "sha", "siblings"]
    if request.query_flag("cardData"):
        fields.append("cardData")
    return select_fields(info, fields)


def _folder_exists(commit: Commit, folder: str) -> bool:
    prefix = folder + "/"
    return any(path.startswith(prefix) for path in commit.tree)


def _listing(commit: Commit, folder: str, recursive: bool) -> list[tuple[str, bool]]:
    """Return (path, is_folder) for the entries under `folder`, sorted by path."""
    prefix = folder + "/" if folder else ""
    entries: dict[str, bool] = {}
    for path in commit.tree:
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for level in range(1, min(depth, len(parts) - 1) + 1):
            entries[prefix + "/".join(parts[:level])] = True
        if recursive or len(parts) == 1:
            entries[path] = False
    return sorted(entries.items())


def list_tree(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo = _repo(hub, request, match)
    commit = hub.store.resolve(repo, decoded(match, "revision"))
    folder = decoded(match, "path").strip("/") if match.group("path") else ""
    if folder and not _folder_exists(commit, folder):
        raise entry_not_found(folder, commit.oid)

    expand = request.query_flag("expand")
    listing = _listing(commit, folder, request.query_flag("recursive"))
    page_size = min(hub.page_size, EXPANDED_PAGE_SIZE) if expand else hub.page_size
    page, headers = paginate(request, listing, page_size)
    body = [path_payload(hub, repo, commit, path, is_folder, expand) for path, is_folder in page]
    return json_response(body, headers=headers)


def paths_info(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    """Return tree entries for the requested paths, leaving out paths that do not exist."""
    repo = _repo(hub, request, match)
    commit = hub.store.resolve(repo, decoded(match, "revision"))
    form = request.form()
    expand = (form.get("expand") or ["false"])[-1].lower() == "true"
    body = []
    for path in dict.fromkeys(path.strip("/") for path in form.get("paths", [])):
        if path in commit.tree:
            body.append(path_payload(hub, repo, commit, path, False, expand))
        elif path and _folder_exists(commit, path):
            body.append(path_payload(hub, repo, commit, path, True, expand))
    return json_response(body)


def list_refs(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo = _repo(hub, request, match)
    with hub.store.lock:
        refs = sorted(repo.refs.items())

    def items(prefix: str, keep_prefix: bool) -> list[dict[str, str]]:
        return [
            {"name": ref if keep_prefix else ref[len(prefix) :], "ref": ref, "targetCommit": oid}
            for ref, oid in refs
            if ref.startswith(prefix)
        ]

    body = {"branches": items(HEADS, False), "converts": [], "tags": items(TAGS, False)}
    if request.query_flag("include_prs"):
        body["pullRequests"] = items(PULL_REQUESTS, True)
    return json_response(body)


def list_commits(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo = _repo(hub, request, match)
    commit = hub.store.resolve(repo, decoded(match, "revision"))
    formatted = "formatted" in request.query.get("expand[]", [])
    history = hub.store.history(repo, commit)
    page, headers = paginate(request, history, hub.page_size)
    return json_response([commit_payload(item, formatted) for item in page], headers=headers)


ROUTES = [
    route("GET", r"/api/whoami-v2", whoami),
    route("GET", r"/api/(?P<type>models|datasets|spaces)", list_repos),
    route("GET", REPO + r"(?:/revision/(?P<revision>[^/]+))?", get_repo_info),
    route("GET", REPO + r"/tree/(?P<revision>[^/]+)(?:/(?P<path>.+))?", list_tree),
    route("POST", REPO + r"/paths-info/(?P<revision>[^/]+)", paths_info),
    route("GET", REPO + r"/refs", list_refs),
    route("GET", REPO + r"/commits/(?P<revision>[^/]+)", list_commits),
]
