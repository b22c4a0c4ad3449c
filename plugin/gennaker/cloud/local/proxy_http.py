"""The local load balancer's HTTP side: listeners on 127.0.0.1 and forwarding a request to an instance.

Every listener speaks plain HTTP/1.1. Each request is routed with the table of the moment it arrived, so
requests in flight to a group being disabled finish there (draining), and only new ones follow the new table.
When the connection to the chosen instance fails (refused: it just went away) the request is sent to another
instance, at most :data:`MAX_ATTEMPTS` in all, and that instance is passed over for a while. A request is
re-sent only if its body was buffered (every body up to :data:`MAX_BUFFERED_BODY`; there is none for
GET/HEAD/OPTIONS), and, once it reached an instance that then failed before answering, only for idempotent
methods. Nothing to route to is a ``503``; every attempt failing is a ``502``; an instance not answering
within :data:`UPSTREAM_TIMEOUT` a ``504``; a client no serving group's firewalls admit a ``403``.

Forwarded: method, path, headers (hop-by-hop ones dropped; ``Host`` kept as the client sent it, as an ALB
does; ``X-Forwarded-For`` appended, ``X-Forwarded-Proto: http``, ``X-Forwarded-Port``) and body; the answer
is streamed back (re-chunked when its length is unknown) with ``X-Gennaker-Server-Group`` and
``X-Gennaker-Instance``. Connections to instances are kept alive per client connection (handler thread).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import select
import socket
import socketserver
import sys
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, cast

from gennaker.cloud.local.processes import LOCALHOST
from gennaker.cloud.model import Instance, LoadBalancer
from gennaker.errors import ListenerPortInUse

if TYPE_CHECKING:
    from gennaker.cloud.local.proxy_process import ProxyProcess

logger = logging.getLogger("gennaker.cloud.local.proxy")

HOST = LOCALHOST
"""Where the local load balancers listen."""
MAX_ATTEMPTS = 5
"""Instances one request may be sent to (the first one and the retries)."""
CONNECT_TIMEOUT = 2.0
UPSTREAM_TIMEOUT = 60.0
"""How long an instance may take to answer (then 504)."""
CLIENT_IDLE_TIMEOUT = 75.0
"""How long an idle keep-alive client connection stays open."""
MAX_BUFFERED_BODY = 16 * 1024 * 1024
"""Request bodies up to this size are buffered (and so can be re-sent); larger ones are streamed."""

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_REQUEST_REPLACED = frozenset({"content-length", "expect", "host", "x-forwarded-for", "x-forwarded-proto"})
_RESPONSE_REPLACED = frozenset({"x-gennaker-server-group", "x-gennaker-instance"})
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")


class _ClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UpstreamFailure(Exception):
    """A request to an instance failed before any of its answer was relayed.

    ``connect``: no connection could be opened (refused: the instance is gone);
    ``sent``: the whole request had been written (the instance may have acted on it).
    """

    def __init__(self, error: BaseException, *, sent: bool, connect: bool = False, timeout: bool = False) -> None:
        super().__init__(str(error) or type(error).__name__)
        self.error, self.sent, self.connect, self.timeout = error, sent, connect, timeout


class ListenerServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, port: int, proxy: ProxyProcess) -> None:
        self.port = port
        self.proxy = proxy
        super().__init__((HOST, port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup): not needed here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = HOST, self.port

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return
        logger.exception("error serving %s on port %d", client_address, self.port)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "gennaker-lb"
    timeout = CLIENT_IDLE_TIMEOUT

    def setup(self) -> None:
        super().setup()
        self._upstreams: dict[str, http.client.HTTPConnection] = {}
        self._outgoing: list[tuple[str, str]] = []
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            for conn in self._upstreams.values():
                conn.close()
            self._upstreams.clear()

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s %s", self.client_address[0], format % args)

    @property
    def _server(self) -> ListenerServer:
        return cast(ListenerServer, self.server)

    def _proxy(self) -> None:
        proxy = self._server.proxy
        proxy.enter()
        try:
            self._handle(proxy, time.monotonic())
        finally:
            proxy.leave()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = _proxy

    def _handle(self, proxy: ProxyProcess, started: float) -> None:
        port = self._server.port
        client = self.client_address[0]
        table = proxy.table
        admitted = table.admitted(client, port)
        if admitted is not None and not admitted and table.serving:
            proxy.denied(client, port, table)
            self.close_connection = True
            self._reply(403, f"{client} may not reach load balancer {table.lb.name} on port {port} (firewall)")
            return
        try:
            body, streamed = self._read_body()
        except _ClientError as error:
            self.close_connection = True
            self._reply(error.status, str(error))
            return
        replayable = streamed is None
        self._outgoing = self._request_headers()
        tried: set[str] = set()
        failure: _UpstreamFailure | None = None
        group = ""
        for _attempt in range(MAX_ATTEMPTS):
            table = proxy.table  # retries may use a newer table
            pick = table.choose(admitted, tried, proxy.avoided())
            if pick is None:
                break
            group, instance = pick
            tried.add(instance.id)
            target = (instance.host, _target_port(instance, table.lb, port))
            try:
                response, conn, key = self._send(target, body, streamed, replayable)
            except _ClientError as error:  # the client's streamed body broke off
                self.close_connection = True
                self._reply(error.status, str(error))
                return
            except _UpstreamFailure as error:
                failure = error
                if error.connect:
                    proxy.eject(instance.id)
                logger.warning(
                    "%s %s to %s %s (%s:%d) failed: %s", self.command, self.path, group, instance.id, *target, error
                )
                if error.timeout or not replayable or (error.sent and self.command not in _IDEMPOTENT):
                    break
                continue
            status, ok = self._relay(response, conn, key, group, instance)
            proxy.metrics.record(group, (time.monotonic() - started) * 1000, status >= 500 or not ok)
            if proxy.access_log:
                logger.info("%s %s %s %d %s %s", client, self.command, self.path, status, group, instance.id)
            return
        if failure is None:
            self._reply(503, f"load balancer {table.lb.name} has no healthy instance to send the request to")
            return
        proxy.metrics.record(group, (time.monotonic() - started) * 1000, True)
        if failure.timeout:
            self._reply(504, f"load balancer {table.lb.name}: {group} did not answer within {UPSTREAM_TIMEOUT:g}s")
        else:
            self._reply(502, f"load balancer {table.lb.name}: no instance answered ({len(tried)} tried: {failure})")

    # ------------------------------------------------------------------- request

    def _read_body(self) -> tuple[bytes | None, int | None]:
        """``(buffered body, None)``, or ``(None, length)`` for a body too large to buffer, or ``(None, None)``."""
        coding = self.headers.get("Transfer-Encoding")
        length_text = self.headers.get("Content-Length")
        if coding is not None:
            if coding.split(",")[-1].strip().lower() != "chunked":
                raise _ClientError(501, f"transfer coding {coding!r} is not supported")
            return self._read_chunked(), None
        if length_text is None:
            return None, None
        try:
            length = int(length_text)
        except ValueError:
            raise _ClientError(400, f"bad Content-Length {length_text!r}") from None
        if length < 0:
            raise _ClientError(400, f"bad Content-Length {length_text!r}")
        if length > MAX_BUFFERED_BODY:
            return None, length
        body = self.rfile.read(length)
        if len(body) < length:
            raise _ClientError(400, "the request body ended early")
        return body, None

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise _ClientError(400, "the chunked request body ended early")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _ClientError(400, "bad chunk size in the request body") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: dropped
                return b"".join(parts)
            total += size
            if total > MAX_BUFFERED_BODY:
                raise _ClientError(413, f"chunked request bodies are limited to {MAX_BUFFERED_BODY} bytes")
            data = self.rfile.read(size)
            if len(data) < size:
                raise _ClientError(400, "the chunked request body ended early")
            parts.append(data)
            self.rfile.readline()

    def _request_headers(self) -> list[tuple[str, str]]:
        port = self._server.port
        drop = _HOP_BY_HOP | _REQUEST_REPLACED | _connection_tokens(self.headers.get_all("Connection") or [])
        headers = [("Host", self.headers.get("Host") or f"{HOST}:{port}")]
        headers += [
            (k, v) for k, v in self.headers.items() if k.lower() not in drop and k.lower() != "x-forwarded-port"
        ]
        forwarded_for = [*(self.headers.get_all("X-Forwarded-For") or []), self.client_address[0]]
        headers += [
            ("X-Forwarded-For", ", ".join(forwarded_for)),
            ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Port", str(port)),
        ]
        return headers

    def _send(
        self, target: tuple[str, int], body: bytes | None, streamed: int | None, replayable: bool
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection, str]:
        key = f"{target[0]}:{target[1]}"
        conn = self._upstreams.pop(key, None)
        if conn is not None and (conn.sock is None or _stale(conn.sock)):
            conn.close()
            conn = None
        if conn is not None:
            try:
                return self._exchange(conn, body, streamed), conn, key
            except _UpstreamFailure as failure:
                # A kept-alive connection the instance closed meanwhile: once more on a new one.
                if failure.timeout or not replayable or (failure.sent and self.command not in _IDEMPOTENT):
                    raise
        conn = http.client.HTTPConnection(target[0], target[1], timeout=CONNECT_TIMEOUT)
        try:
            conn.connect()
        except OSError as error:
            conn.close()
            raise _UpstreamFailure(error, sent=False, connect=True) from error
        assert conn.sock is not None
        conn.sock.settimeout(UPSTREAM_TIMEOUT)
        with contextlib.suppress(OSError):
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._exchange(conn, body, streamed), conn, key

    def _exchange(
        self, conn: http.client.HTTPConnection, body: bytes | None, streamed: int | None
    ) -> http.client.HTTPResponse:
        sent = False
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self._outgoing:
                conn.putheader(name, value)
            if body is not None or streamed is not None:
                conn.putheader("Content-Length", str(len(body) if body is not None else streamed))
            conn.endheaders(body)
            if streamed:
                self._stream_body(conn, streamed)
            sent = True
            return conn.getresponse()
        except _ClientError:
            conn.close()
            raise
        except TimeoutError as error:
            conn.close()
            raise _UpstreamFailure(error, sent=sent, timeout=True) from error
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            raise _UpstreamFailure(error, sent=sent) from error

    def _stream_body(self, conn: http.client.HTTPConnection, length: int) -> None:
        left = length
        while left:
            data = self.rfile.read(min(left, 65536))
            if not data:
                self.close_connection = True
                raise _ClientError(400, "the request body ended early")
            conn.send(data)
            left -= len(data)

    # ------------------------------------------------------------------- response

    def _relay(
        self,
        response: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: str,
        group: str,
        instance: Instance,
    ) -> tuple[int, bool]:
        """Stream the instance's answer to the client; ``(status, the instance's side went fine)``."""
        status = response.status
        drop = _HOP_BY_HOP | _RESPONSE_REPLACED | _connection_tokens(response.headers.get_all("Connection") or [])
        headers = [(k, v) for k, v in response.getheaders() if k.lower() not in drop]
        has_body = self.command != "HEAD" and status >= 200 and status not in (204, 304)
        length = None if response.chunked else response.length
        rechunk = False
        if has_body and length is None:
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            if self.request_version >= "HTTP/1.1":
                headers.append(("Transfer-Encoding", "chunked"))
                rechunk = True
            else:
                self.close_connection = True
        self.send_response_only(status, response.reason)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("X-Gennaker-Server-Group", group)
        self.send_header("X-Gennaker-Instance", instance.id)
        if self.close_connection or self._server.proxy.draining:
            self.send_header("Connection", "close")
        upstream_ok = True
        sent = 0
        try:
            self.end_headers()
            while has_body:
                try:
                    chunk = response.read1(65536)
                except (OSError, http.client.HTTPException):
                    upstream_ok = False
                    break
                if not chunk:
                    break
                sent += len(chunk)
                self.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk) if rechunk else chunk)
            if has_body and length is not None and sent != length:
                upstream_ok = False
            if upstream_ok:
                response.read()  # b"": marks the answer complete, so the connection can be reused
            if rechunk and upstream_ok:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away
            self.close_connection = True
            conn.close()
            return status, True
        if not upstream_ok:
            logger.warning("%s (%s) broke off its answer to %s %s", instance.id, group, self.command, self.path)
            self.close_connection = True
            conn.close()
        elif conn.sock is not None and response.isclosed() and len(self._upstreams) < 16:
            self._upstreams[key] = conn
        else:
            conn.close()
        return status, upstream_ok

    def _reply(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection or self._server.proxy.draining:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _connection_tokens(values: Sequence[str]) -> frozenset[str]:
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def _stale(sock: socket.socket) -> bool:
    """A kept-alive connection the other side closed (or wrote to unasked) is readable."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _target_port(instance: Instance, lb: LoadBalancer, port: int) -> int:
    if instance.port:
        return instance.port
    for listener in lb.listeners:
        if listener.port == port:
            return listener.target_port or port
    return port


__all__ = [
    "CLIENT_IDLE_TIMEOUT",
    "CONNECT_TIMEOUT",
    "HOST",
    "MAX_ATTEMPTS",
    "MAX_BUFFERED_BODY",
    "UPSTREAM_TIMEOUT",
    "ListenerPortInUse",
    "ListenerServer",
]
