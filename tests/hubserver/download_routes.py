"""File downloads of the test Hub: HEAD and GET on `/{repo}/resolve/{revision}/{path}`.

Headers follow huggingface.co's conventions, which hf_hub_download relies on.
`X-Repo-Commit` is the resolved commit. `ETag` is the git blob id of a regular file. For an LFS
file, `X-Linked-Etag` and `ETag` are the content's sha256 and `X-Linked-Size` is its size. The
cache names each blob after that ETag. LFS content is served directly, without the CDN redirect the
real Hub uses, and never with Xet headers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .access import readable_repo
from .errors import HubError, entry_not_found, gated_repo
from .handler import FileBody, Request, Response, decoded, route
from .payloads import PATH_PREFIX_TYPES

if TYPE_CHECKING:
    from .server import HubServer

RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return (start, length) for a single `bytes=` range, or None to serve the whole file.

    Raises a 416 HubError for a range that starts past the end of the file.
    """
    match = RANGE.fullmatch((header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        length = min(int(last), size)
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        message = f"Range {header} is not satisfiable for a file of {size} bytes"
        raise HubError(416, message, headers={"Content-Range": f"bytes */{size}"})
    return start, end - start + 1


def resolve_file(hub: "HubServer", request: Request, match: re.Match[str]) -> Response:
    repo_id = decoded(match, "repo")
    repo = readable_repo(hub, request, PATH_PREFIX_TYPES[match.group("prefix")], repo_id)
    if repo.gated:
        raise gated_repo(repo_id, authenticated=request.identity is not None)
    commit = hub.store.resolve(repo, decoded(match, "revision"))
    path = decoded(match, "path")
    entry = commit.tree.get(path)
    if entry is None:
        raise entry_not_found(path, commit.oid)

    headers = {
        "X-Repo-Commit": commit.oid,
        "ETag": f'"{entry.sha256 if entry.lfs else entry.git_oid}"',
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    if entry.lfs:
        headers["X-Linked-Etag"] = f'"{entry.sha256}"'
        headers["X-Linked-Size"] = str(entry.size)

    status, start, length = 200, 0, entry.size
    requested = parse_range(request.headers.get("Range"), entry.size)
    if requested is not None:
        status, (start, length) = 206, requested
        headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{entry.size}"

    body = FileBody(hub.blobs.path(entry.sha256), start, length)
    if request.method == "GET":
        cut_at = hub._take_truncation(repo_id, path, entry.size)
        if cut_at is not None:
            body.send_limit = max(0, cut_at - start)
        body.on_sent = lambda sent: hub._count_download(repo, path, sent)
    return Response(status, headers, file=body)


RESOLVE = r"/(?:(?P<prefix>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)"
ROUTES = [route("GET", RESOLVE, resolve_file), route("HEAD", RESOLVE, resolve_file)]
