"""JSON shapes the test Hub returns for repos, files, folders and commits.

Field names and required keys follow what huggingface_hub 2.4 parses (`hf_api.py › ModelInfo`,
`RepoSibling`, `RepoFile`, `RepoFolder`, `GitCommitInfo`). Note the LFS key names: `lfs.sha256`
in `siblings`, but `lfs.oid` in tree and paths-info entries.
"""

from __future__ import annotations

import hashlib
import html
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlencode

from .cards import (
    CardMetadataError,
    derive_tags,
    parse_front_matter,
    safetensors_header_length,
    safetensors_parameters,
)
from .gitobjects import Commit, FileEntry, format_hub_date, tree_oid
from .handler import Request
from .repos import Repo

if TYPE_CHECKING:
    from .server import HubServer

URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# Repo type by the URL prefix of resolve and LFS paths (`/datasets/{repo}/resolve/...`).
PATH_PREFIX_TYPES = {None: "model", "datasets": "dataset", "spaces": "space"}
# Route prefix of the per-repo API: `/api/models/{namespace}/{name}`.
REPO = r"/api/(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"


def repo_url(base_url: str, repo: Repo) -> str:
    return f"{base_url}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"


def card_data(hub: "HubServer", commit: Commit) -> dict[str, Any]:
    """Return the README's front matter at `commit`, or {} when it is missing or invalid."""
    readme = commit.tree.get("README.md")
    if readme is None:
        return {}
    try:
        return parse_front_matter(hub.blobs.read(readme.sha256).decode(errors="replace"))
    except CardMetadataError:
        return {}


def safetensors_summary(hub: "HubServer", commit: Commit) -> dict[str, Any] | None:
    """Return `{"parameters": {dtype: n}, "total": n}` for the root-level safetensors files.

    NOTE: huggingface.co's rule for which files count is not visible from the client. This server
    sums the `*.safetensors` files at the repo root and skips files whose header does not parse.
    """
    parameters: dict[str, int] = {}
    for path, entry in commit.tree.items():
        if "/" in path or not path.endswith(".safetensors"):
            continue
        length = safetensors_header_length(hub.blobs.read_prefix(entry.sha256, 8))
        if length is None:
            continue
        try:
            counts = safetensors_parameters(hub.blobs.read_prefix(entry.sha256, 8 + length)[8:])
        except (ValueError, KeyError, TypeError):
            continue
        for dtype, count in counts.items():
            parameters[dtype] = parameters.get(dtype, 0) + count
    if not parameters:
        return None
    return {"parameters": parameters, "total": sum(parameters.values())}


def sibling(path: str, entry: FileEntry, blobs: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"rfilename": path}
    if blobs:
        payload.update(size=entry.size, blobId=entry.git_oid)
        if entry.lfs:
            payload["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return payload


def repo_info(hub: "HubServer", repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
    """Return the `/api/models/{repo}` body for `commit`, with file sizes and LFS info when `blobs`."""
    card = card_data(hub, commit)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": commit.oid,
        "lastModified": format_hub_date(commit.created_at),
        "createdAt": format_hub_date(repo.created_at),
        "private": repo.private,
        "gated": "manual" if repo.gated else False,
        "disabled": False,
        "downloads": repo.downloads,
        "likes": 0,
        "tags": derive_tags(card, commit.tree),
        "siblings": [sibling(path, entry, blobs) for path, entry in sorted(commit.tree.items())],
    }
    for key in ("library_name", "pipeline_tag"):
        if isinstance(card.get(key), str):
            info[key] = card[key]
    if card:
        info["cardData"] = card
    summary = safetensors_summary(hub, commit)
    if summary is not None:
        info["safetensors"] = summary
    if blobs:
        info["usedStorage"] = sum(entry.size for entry in commit.tree.values())
    return info


def select_fields(info: dict[str, Any], fields: list[str]) -> dict[str, Any]:
    """Keep only the requested `expand` properties (and the ids) of a repo info body."""
    return {key: value for key, value in info.items() if key in ("_id", "id") or key in fields}


def file_payload(path: str, entry: FileEntry) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
    if entry.lfs:
        payload["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
    return payload


def folder_payload(path: str, tree: Mapping[str, FileEntry]) -> dict[str, Any]:
    return {"type": "directory", "oid": tree_oid(tree, path), "size": 0, "path": path}


def path_payload(
    hub: "HubServer", repo: Repo, commit: Commit, path: str, is_folder: bool, expand: bool
) -> dict[str, Any]:
    """Return a tree or paths-info entry. With `expand`, add the last commit that changed it."""
    payload = folder_payload(path, commit.tree) if is_folder else file_payload(path, commit.tree[path])
    if expand:
        last = hub.store.last_commit_touching(repo, commit, path, is_folder)
        date = format_hub_date(last.created_at)
        payload["lastCommit"] = {"id": last.oid, "title": last.title, "date": date}
    return payload


def commit_payload(commit: Commit, formatted: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": commit.oid,
        "title": commit.title,
        "message": commit.description,
        "date": format_hub_date(commit.created_at),
        "authors": [{"user": commit.author}],
    }
    if formatted:
        payload["formatted"] = {
            "title": html.escape(commit.title),
            "message": html.escape(commit.description),
        }
    return payload


def paginate(request: Request, items: list[Any], page_size: int) -> tuple[list[Any], dict[str, str]]:
    """Return one page of `items` and the headers for it: a `Link: <...>; rel="next"` if more remain.

    The cursor is the offset of the page's first item, passed back in the `cursor` query parameter.
    """
    try:
        offset = max(int(request.query_value("cursor") or 0), 0)
    except ValueError:
        offset = 0
    page = items[offset : offset + page_size]
    if offset + page_size >= len(items):
        return page, {}
    query = {key: values for key, values in request.query.items() if key != "cursor"}
    query["cursor"] = [str(offset + page_size)]
    next_url = f"{request.base_url}{request.raw_path}?{urlencode(query, doseq=True)}"
    return page, {"Link": f'<{next_url}>; rel="next"'}
