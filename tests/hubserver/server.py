"""A Hugging Face Hub-compatible HTTP server on 127.0.0.1 for tests that drive the real client.

It speaks the subset of the Hub API that huggingface_hub 2.4 uses for repos, uploads (preupload,
Git LFS batch + PUT, NDJSON commits), downloads (`resolve` with ranges), refs, commits, trees and
model search. Clients must disable Xet (`HF_HUB_DISABLE_XET=1`): the server offers no Xet
endpoints, and huggingface_hub uploads LFS files through Xet whenever hf_xet is importable.

Tokens: `hf_write_token` (user `testuser`, write, member of org `testorg`) and `hf_read_token`
(same user, read-only). More can be added with `add_token`.

Usage::

    with HubServer(tmp_path) as hub:
        HfApi(endpoint=hub.endpoint, token="hf_write_token").create_repo("testuser/adapter")
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping

from . import api_routes, download_routes, upload_routes, write_routes
from .blobs import BlobStore
from .errors import HubError
from .handler import HubRequestHandler, Identity, Request, Response
from .repos import HEADS, SAMPLE_SIZE, AddFile, DeleteFile, Operation, Repo, RepoStore, validate_path
from .upload_routes import LfsTicket

logger = logging.getLogger(__name__)

WRITE_TOKEN = "hf_write_token"
READ_TOKEN = "hf_read_token"
USER = "testuser"
ORG = "testorg"


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: "HubServer") -> None:
        self.hub = hub
        super().__init__(("127.0.0.1", 0), HubRequestHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections reset by the client or by stop() are expected in tests, so log them quietly.
        logger.debug("Connection from %s ended with an error", client_address, exc_info=True)


@dataclass
class _Truncation:
    repo_id: str | None
    remaining: int
    cut_at: int | None


class HubServer:
    """A loopback Hub keeping repo metadata in memory and file contents under `root`.

    Counters (thread-safe, cleared by `reset_counters`):
    - `bytes_served`: file bytes sent by resolve GETs.
    - `downloads[(repo_id, path)]`: resolve GETs answered with the file, cut ones included.
    - `requests`: `(method, raw path without query)` of every request.
    - `uploads`: LFS PUTs plus regular files added by commits.
    Changes made through the test helpers are not counted.
    """

    def __init__(self, root: Path, *, page_size: int = 1000) -> None:
        self.root = Path(root)
        self.blobs = BlobStore(self.root)
        self.store = RepoStore(self.blobs)
        # Entries per page of paginated listings (tree, commits, model search). Lower it to test paging.
        self.page_size = page_size
        self.endpoint: str | None = None
        self._tokens: dict[str, Identity] = {
            WRITE_TOKEN: Identity(USER, "write", (ORG,)),
            READ_TOKEN: Identity(USER, "read", (ORG,)),
        }
        self._routes = [
            *api_routes.ROUTES,
            *write_routes.ROUTES,
            *upload_routes.ROUTES,
            *download_routes.ROUTES,
        ]
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._lfs_tickets: dict[str, LfsTicket] = {}
        self._truncations: dict[str, _Truncation] = {}
        self._internal_errors: list[str] = []
        self.reset_counters()

    # Lifecycle

    def start(self) -> "HubServer":
        """Bind an ephemeral port on 127.0.0.1, serve in a background thread and set `endpoint`."""
        if self._httpd is not None:
            raise RuntimeError(f"HubServer is already running at {self.endpoint}")
        self._httpd = _HttpServer(self)
        self.endpoint = f"http://{self.host_port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="test-hub", daemon=True
        )
        self._thread.start()
        logger.info("Test Hub listening on %s (data in %s)", self.endpoint, self.root)
        return self

    def stop(self) -> None:
        """Stop serving, close open keep-alive connections and wait for the handler threads."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None
        logger.info("Test Hub on %s stopped", self.endpoint)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host_port(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not running; call start() first")
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    # Counters

    @property
    def bytes_served(self) -> int:
        with self._lock:
            return self._bytes_served

    @property
    def downloads(self) -> Counter:
        with self._lock:
            return Counter(self._downloads)

    @property
    def requests(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._requests)

    @property
    def uploads(self) -> int:
        with self._lock:
            return self._uploads

    @property
    def internal_errors(self) -> list[str]:
        """Requests that failed with an unexpected exception and got a 500 response: server bugs."""
        with self._lock:
            return list(self._internal_errors)

    def reset_counters(self) -> None:
        with self._lock:
            self._bytes_served = 0
            self._downloads: Counter = Counter()
            self._requests: list[tuple[str, str]] = []
            self._uploads = 0

    # Test helpers

    def add_token(self, token: str, user: str, role: str = "write", orgs: tuple[str, ...] = ()) -> None:
        """Accept `token` as belonging to `user`, with role "read" or "write"."""
        if role not in ("read", "write"):
            raise ValueError(f"Invalid token role {role!r}, expected 'read' or 'write'")
        self._tokens[token] = Identity(user, role, tuple(orgs))

    def create_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        private: bool = False,
        repo_type: str = "model",
    ) -> str:
        """Create a repo without HTTP, optionally commit `files` to main, and return the head commit id."""
        repo, created = self.store.create(repo_type, repo_id, private, repo_id.split("/")[0])
        if not created:
            raise ValueError(f"{repo_type} repo {repo_id} already exists on this test Hub")
        if files:
            author = repo.namespace
            return self.move_branch(repo_id, "main", files, "Add files", author=author, repo_type=repo_type)
        return repo.refs[HEADS + "main"]

    def set_gated(self, repo_id: str, gated: bool = True, *, repo_type: str = "model") -> None:
        """Gate a repo: resolve requests then fail with `X-Error-Code: GatedRepo`.

        NOTE: the gate applies to every token, including the owner's. On huggingface.co the owner
        and approved users pass. Metadata, trees and refs stay readable, as on the Hub.
        """
        self._repo(repo_type, repo_id).gated = gated

    def move_branch(
        self,
        repo_id: str,
        branch: str,
        files: Mapping[str, bytes | None],
        message: str = "Update from another client",
        *,
        author: str = "otheruser",
        repo_type: str = "model",
    ) -> str:
        """Commit `files` to `branch` as if someone else pushed; return the new commit id.

        A value of None deletes that path. A missing branch is created from main first. Files
        get the storage (LFS or regular) the Hub would choose for an upload.
        """
        repo = self._repo(repo_type, repo_id)
        ref = HEADS + branch
        with self.store.lock:
            if ref not in repo.refs:
                repo.refs[ref] = repo.refs[HEADS + "main"]
            head = repo.commits[repo.refs[ref]]
            operations: list[Operation] = []
            for path, content in files.items():
                validate_path(path)
                if content is None:
                    operations.append(DeleteFile(path))
                    continue
                mode = self.store.upload_mode(head, path, len(content), content[:SAMPLE_SIZE])
                lfs = mode == "lfs" and len(content) > 0
                operations.append(AddFile(path, self.store.entry_for_bytes(content, lfs)))
            return self.store.commit(repo, ref, operations, message, "", author).oid

    def truncate_next_download(
        self, path: str, *, repo_id: str | None = None, times: int = 1, cut_at: int | None = None
    ) -> None:
        """Cut the next `times` resolve GETs of `path` (in `repo_id`, or any repo) short.

        Each cut response announces the full Content-Length, sends the bytes before file offset
        `cut_at` (default: half the file) and closes the connection. huggingface_hub 2.4 then
        retries, 1 s apart, and gives up after 5 retries in a row that write no bytes. It writes
        in 10 MiB chunks, so from a smaller file the cut part is dropped and each retry starts
        over without a Range header: `times=1` tests a successful retry, `times=6` a failure.
        """
        with self._lock:
            self._truncations[path] = _Truncation(repo_id, times, cut_at)

    def commit_id(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """Return the commit id `revision` points to."""
        return self.store.resolve(self._repo(repo_type, repo_id), revision).oid

    def file_bytes(
        self, repo_id: str, path: str, revision: str = "main", *, repo_type: str = "model"
    ) -> bytes:
        """Return the content of `path` at `revision`."""
        commit = self.store.resolve(self._repo(repo_type, repo_id), revision)
        if path not in commit.tree:
            raise KeyError(f"{path} is not in {repo_id} at {revision}. Files: {sorted(commit.tree)}")
        return self.blobs.read(commit.tree[path].sha256)

    def file_paths(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> list[str]:
        """Return the sorted file paths of `revision`."""
        return sorted(self.store.resolve(self._repo(repo_type, repo_id), revision).tree)

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.store.get(repo_type, repo_id)
        if repo is None:
            raise KeyError(f"No {repo_type} repo {repo_id} on this test Hub")
        return repo

    # Called by the request handler and the routes

    def _identify(self, authorization: str | None) -> Identity | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        identity = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if identity is None:
            # huggingface_hub maps this exact message to HfHubHTTPError, never to RepositoryNotFoundError.
            raise HubError(401, "Invalid credentials in Authorization header")
        return identity

    def _dispatch(self, request: Request) -> Response:
        with self._lock:
            self._requests.append((request.method, request.raw_path))
        allowed = set()
        for route in self._routes:
            match = route.pattern.match(request.raw_path)
            if match is None:
                continue
            if route.method == request.method:
                return route.function(self, request, match)
            allowed.add(route.method)
        if allowed:
            methods = ", ".join(sorted(allowed))
            message = f"Method {request.method} is not allowed on {request.raw_path}. Allowed: {methods}"
            raise HubError(405, message, headers={"Allow": methods})
        raise HubError(404, f"The test Hub has no endpoint {request.method} {request.raw_path}")

    def _track_connection(self, connection: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def _record_internal_error(self, description: str) -> None:
        with self._lock:
            self._internal_errors.append(description)

    def _count_download(self, repo: Repo, path: str, sent: int) -> None:
        with self._lock:
            self._bytes_served += sent
            self._downloads[(repo.repo_id, path)] += 1
            repo.downloads += 1

    def _count_upload(self, count: int) -> None:
        with self._lock:
            self._uploads += count

    def _take_truncation(self, repo_id: str, path: str, size: int) -> int | None:
        """Return the offset to cut this GET of `path` at, or None to send it whole."""
        with self._lock:
            plan = self._truncations.get(path)
            if plan is None or plan.repo_id not in (None, repo_id):
                return None
            plan.remaining -= 1
            if plan.remaining <= 0:
                del self._truncations[path]
            return size // 2 if plan.cut_at is None else plan.cut_at

    def _issue_lfs_ticket(self, ticket: LfsTicket) -> str:
        name = secrets.token_hex(16)
        with self._lock:
            self._lfs_tickets[name] = ticket
        return name

    def _lfs_ticket(self, name: str) -> LfsTicket | None:
        with self._lock:
            return self._lfs_tickets.get(name)
