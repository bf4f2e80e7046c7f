"""HTTP plumbing of the test Hub: request and response objects, routing and the request handler.

Routes match the raw, still percent-encoded path, because huggingface_hub sends branch names
and folder paths as single segments with `/` encoded as `%2F` (`feature%2Fx`). Each route
decodes its own captured segments.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import HubError, bad_request

if TYPE_CHECKING:
    from .server import HubServer

logger = logging.getLogger(__name__)

COPY_CHUNK_SIZE = 64 * 1024


@dataclass(frozen=True)
class Identity:
    """The user a token belongs to, the token's role ("read" or "write") and the user's orgs."""

    user: str
    role: str
    orgs: tuple[str, ...] = ()

    def is_member(self, namespace: str) -> bool:
        return namespace == self.user or namespace in self.orgs

    def can_write(self, namespace: str) -> bool:
        return self.role == "write" and self.is_member(namespace)


@dataclass
class FileBody:
    """A response body read from a blob file: `length` bytes from `start`.

    `send_limit`, when set, makes the handler stop after that many bytes and close the
    connection, although the Content-Length header announced `length`.
    """

    path: Path
    start: int
    length: int
    send_limit: int | None = None
    on_sent: Callable[[int], None] | None = None


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: FileBody | None = None


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # default=str turns YAML dates from model cards into strings instead of failing.
    body = json.dumps(data, default=str).encode()
    return Response(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)


def error_response(error: HubError) -> Response:
    # HTTP headers must be single-line Latin-1. The JSON body keeps the exact message.
    single_line = error.message.replace("\r", " ").replace("\n", " ")
    header_message = single_line.encode("latin-1", "replace").decode("latin-1")
    headers = {"X-Error-Message": header_message, **error.headers}
    if error.code:
        headers["X-Error-Code"] = error.code
    return json_response({"error": error.message, **error.extra_body}, error.status, headers)


class Request:
    """One parsed request: method, raw path, query, caller identity and a body read on demand."""

    def __init__(self, handler: "HubRequestHandler") -> None:
        split = urlsplit(handler.path)
        self.method = handler.command
        self.raw_path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.headers = handler.headers
        self.identity: Identity | None = None
        self.base_url = f"http://{handler.headers.get('Host') or handler.server.hub.host_port}"
        self.content_length = int(handler.headers.get("Content-Length") or 0)
        self._rfile = handler.rfile
        self._remaining = self.content_length
        self._chunked = "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower()
        self._body: bytes | None = None

    def query_value(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else default

    def query_flag(self, name: str) -> bool:
        return (self.query_value(name) or "").lower() in ("1", "true", "yes")

    def body(self) -> bytes:
        if self._body is None:
            self._body = self._read_chunked() if self._chunked else self._rfile.read(self._remaining)
            self._remaining = 0
        return self._body

    def json_object(self) -> dict[str, Any]:
        """Return the body parsed as a JSON object ({} for an empty body), or raise 400."""
        try:
            data = json.loads(self.body() or b"{}")
        except ValueError as exc:
            raise bad_request(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise bad_request(f"Request body must be a JSON object, got {type(data).__name__}")
        return data

    def form(self) -> dict[str, list[str]]:
        return parse_qs(self.body().decode(), keep_blank_values=True)

    def stream(self) -> Any:
        """Return the raw input stream. The caller must read all `content_length` bytes from it."""
        stream, self._remaining, self._body = self._rfile, 0, b""
        return stream

    def drain(self) -> None:
        """Read and drop an unread body, so that the next request on this connection parses."""
        self.body()

    def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int(self._rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self._rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self._rfile.read(size))
            self._rfile.readline()


RouteFunction = Callable[["HubServer", Request, "re.Match[str]"], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    function: RouteFunction


def route(method: str, pattern: str, function: RouteFunction) -> Route:
    return Route(method, re.compile(pattern + r"\Z"), function)


def decoded(match: re.Match[str], group: str) -> str:
    """Return a captured path segment with percent-escapes (including %2F) decoded."""
    return unquote(match.group(group))


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes every request to the HubServer owning this socket server."""

    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"
    # Headers and body go out in separate writes. With Nagle's algorithm on, the body would wait
    # for the client's delayed ACK on every keep-alive response, about 40 ms each on Linux.
    disable_nagle_algorithm = True
    # A keep-alive connection left idle this long is closed, so a stuck client cannot pin a thread.
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.server.hub._track_connection(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.hub._track_connection(self.connection, opened=False)

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        hub = self.server.hub
        request: Request | None = None
        try:
            request = Request(self)
            request.identity = hub._identify(self.headers.get("Authorization"))
            response = hub._dispatch(request)
        except HubError as error:
            logger.debug("%s %s failed with %d: %s", self.command, self.path, error.status, error.message)
            response = error_response(error)
        except Exception as exc:
            logger.exception("Test Hub failed on %s %s", self.command, self.path)
            hub._record_internal_error(f"{self.command} {self.path}: {exc!r}")
            response = error_response(HubError(500, f"Internal error in the test Hub: {exc!r}"))
        if request is not None:
            request.drain()
        self._send(response)

    def _send(self, response: Response) -> None:
        length = response.file.length if response.file else len(response.body)
        self.send_response(response.status)
        headers = {"Content-Length": str(length), **response.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        self._send_file(response.file)

    def _send_file(self, body: FileBody) -> None:
        limit = body.length if body.send_limit is None else min(body.send_limit, body.length)
        sent = 0
        try:
            with body.path.open("rb") as file:
                file.seek(body.start)
                while sent < limit:
                    chunk = file.read(min(COPY_CHUNK_SIZE, limit - sent))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    sent += len(chunk)
        finally:
            if body.on_sent is not None:
                body.on_sent(sent)
        if sent < body.length:
            # Cut the connection mid-body: the client receives fewer bytes than Content-Length.
            logger.info("Cut %s after %d of %d bytes, as the test requested", self.path, sent, body.length)
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
