"""The fast path: plain proxied HTTP/1.1 requests served without aiohttp's request objects.

Measured for issue 4, aiohttp's server machinery (request, response and writer objects per
request) costs about as much CPU as everything else a proxied request needs. `FastServer` is
the gateway's server (`server.GatewayServer`, aiohttp's low-level `web.Server`) with
one change: a new connection starts on `FastConnection`, a small protocol on httptools'
strict llhttp parser (the parser the upstream pool already uses). It serves the requests a
gateway sees most - HTTP/1.1, no body, no upgrade, to a route whose upstream is plain HTTP -
with the very same rules (`app.plan_forward`, `headers.response_fields`, the same JSON
errors, metrics and access log).

At the first request it does not serve itself (a request body, a local endpoint, a websocket,
HTTP/1.0, a head that is malformed, oversized or otherwise unusual), it hands the connection,
with every byte not yet answered, to aiohttp's own `RequestHandler` for good; from then on
that connection is served exactly as it would have been without the fast path.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import http
import logging
import time
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.tcp_helpers import tcp_nodelay

from gateway.app import LOCAL_ENDPOINTS, Gateway, plan_forward
from gateway.config import Route
from gateway.errors import GatewayError, NotFoundError
from gateway.headers import response_fields
from gateway.middleware import (
    CLIENT_CLOSED,
    SERVER_NAME,
    error_body,
    new_request_id,
    safe_request_id,
)
from gateway.observability import AccessLogMode, access_logger_class, log_access
from gateway.proxy import upstream_error
from gateway.routing import normalise_path, upstream_of
from gateway.server import GatewayServer, SendStallTimer
from gateway.upstream import UpstreamFailure, UpstreamResponse, encode_request_head

log = logging.getLogger(__name__)
access_log = logging.getLogger("aiohttp.access")

# aiohttp refuses request lines and header fields over 8190 bytes; a longer head goes to it.
MAX_HEAD = 8190
# aiohttp refuses a head of more than 128 fields; such a head goes to it.
MAX_FIELDS = 128
# Pipelined bytes held while a request is being answered before reading pauses.
MAX_PENDING = 64 * 1024
_METHODS = frozenset({b"GET", b"HEAD", b"DELETE", b"OPTIONS"})
# Headers aiohttp refuses to see twice (a 400 from it, so such a request is handed over).
_SINGLETONS = frozenset({
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
    b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
})
# Any of these means the request is not a plain body-less one: aiohttp serves it.
_HAND_OVER_HEADERS = frozenset({b"content-length", b"transfer-encoding", b"upgrade",
                                b"expect"})
_SPECIAL = _SINGLETONS | _HAND_OVER_HEADERS
_BODYLESS_STATUSES = frozenset({204, 304})
_REASONS = {status.value: status.phrase for status in http.HTTPStatus}


def build_server(gateway: Gateway) -> web.Server:
    """The server `gateway serve` runs: the fast path in front of aiohttp's handler, or
    aiohttp's handler alone with `upstream_client: aiohttp` (the fast path needs the pool)."""
    config = gateway.services.config
    options: dict[str, Any] = {
        "access_log_class": access_logger_class(config.access_log),
        "access_log": access_log, "send_timeout": config.limits.client_timeout,
        **gateway.server_options()}
    if config.upstream_client == "fast":
        return FastServer(gateway, config.access_log, **options)
    return GatewayServer(gateway.handle, **options)


class _HandOver(Exception):
    """This request is for aiohttp's handler (raised while parsing its head)."""


class FastServer(GatewayServer):
    """The gateway's server whose connections start on the fast path."""

    def __init__(self, gateway: Gateway, access_log_mode: AccessLogMode,
                 **kwargs: Any) -> None:
        super().__init__(gateway.handle, **kwargs)
        self.gateway = gateway
        self.access_log_mode = access_log_mode
        self.keepalive_timeout = float(kwargs.get("keepalive_timeout", 75.0))
        self.fast_connections: set[FastConnection] = set()
        self.stopping = False

    def __call__(self) -> FastConnection:  # type: ignore[override]
        return FastConnection(self)

    def aiohttp_handler(self) -> asyncio.Protocol:
        """aiohttp's own protocol for a connection the fast path hands over."""
        return cast(asyncio.Protocol, super().__call__())

    def pre_shutdown(self) -> None:
        """Stop serving: idle connections close now, busy ones after their answer."""
        super().pre_shutdown()
        self.stopping = True
        for connection in list(self.fast_connections):
            connection.close_if_idle()

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """Wait (up to `timeout`) for answers in flight, then close what is left."""
        busy = [c.task for c in self.fast_connections if c.busy and c.task is not None]
        await asyncio.gather(super().shutdown(timeout), self._drain(busy, timeout))
        for connection in list(self.fast_connections):
            connection.abort()

    @staticmethod
    async def _drain(busy: list[asyncio.Task[None]], limit: float | None) -> None:
        if busy:
            await asyncio.wait(busy, timeout=limit)


class _Request:
    """A parsed request head (the fast path's only per-request object)."""

    __slots__ = ("authorization", "close", "fields", "host", "method", "path", "query",
                 "raw_path", "request_id", "route")

    def __init__(self, method: str, raw_path: str, path: str, query: str,
                 route: Route | None, head: _Head, close: bool) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = path
        self.query = query
        self.route = route
        self.fields = head.fields
        self.authorization = head.authorization
        self.host = head.host
        self.request_id = safe_request_id(head.request_id) or new_request_id()
        self.close = close


class _Head:
    """What the parser callbacks collect from one request head."""

    __slots__ = ("authorization", "begun", "complete", "fields", "host", "keep_alive",
                 "request_id", "singletons", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[str, str]] = []
        self.authorization: list[str] = []
        self.host: str | None = None
        self.request_id: str | None = None
        self.singletons: set[bytes] = set()
        self.begun = False
        self.complete = False
        self.keep_alive = False


class FastConnection(asyncio.Protocol):
    """One client connection on the fast path, until (if ever) it is handed to aiohttp."""

    def __init__(self, server: FastServer) -> None:
        self._server = server
        self._services = server.gateway.services
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._peer: str | None = None
        self._buffer = b""
        self._parser = httptools.HttpRequestParser(self)
        self.task: asyncio.Task[None] | None = None  # serves this connection's requests
        self._pending: _Request | None = None  # parsed, not yet being answered
        self._answering = False
        self._wakeup: asyncio.Future[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._reading_paused = False
        self._writing_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._send_stall = SendStallTimer(self._loop, server.send_timeout)
        self._eof = False
        self._closed = False
        self._head_parsed = _Head()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        tcp_nodelay(self._transport, True)
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple | list) and peer else None
        self._server.fast_connections.add(self)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if not self.busy:
            self._next_request()
        elif len(self._buffer) > MAX_PENDING and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        """The client finished sending: answer what is in flight, then close."""
        self._eof = True
        return True if self.busy else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server.fast_connections.discard(self)
        self._cancel_idle_timer()
        self._send_stall.stop()
        if self.task is not None:
            self.task.cancel()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(ConnectionResetError("client went away"))

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._send_stall.start(self._transport)

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._send_stall.stop()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._head_parsed.begun:
            # SECURITY: the bytes up to the first blank line held a second message (bare LF
            # line endings): never merge two requests' fields; aiohttp judges such input.
            raise _HandOver
        self._head_parsed.begun = True

    def on_url(self, url: bytes) -> None:
        self._head_parsed.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self._head_parsed
        lower = name.lower()
        if lower in _SPECIAL:
            if lower in _HAND_OVER_HEADERS:
                raise _HandOver
            if lower in head.singletons:
                raise _HandOver  # aiohttp answers a repeated singleton with a 400
            if lower in _SINGLETONS:
                head.singletons.add(lower)
        if len(head.fields) >= MAX_FIELDS:
            raise _HandOver
        if value[-1:] in (b" ", b"\t"):
            # RFC 9112 §5: trailing OWS is not part of the value (llhttp keeps it; aiohttp
            # strips it, so `Host: a ` is the valid host `a` on both paths)
            value = value.rstrip(b" \t")
        text = value.decode("utf-8", "surrogateescape")
        head.fields.append((name.decode("utf-8", "surrogateescape"), text))
        if lower == b"authorization":
            head.authorization.append(text)
        elif lower == b"host":
            head.host = text
        elif lower == b"x-request-id" and head.request_id is None:
            head.request_id = text

    def on_message_complete(self) -> None:
        head = self._head_parsed
        head.complete = True
        # llhttp forgets the message's keep-alive flags once the callback returns
        head.keep_alive = self._parser.should_keep_alive()

    # -- reading requests ------------------------------------------------------------------
    def _next_request(self) -> None:
        """Start answering the next complete head in the buffer, or hand the connection
        over when the request is not one for the fast path."""
        if self._closed or self._server.stopping:
            return
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        head = buffer if end < 0 else buffer[:end + 4]
        if len(head) > MAX_HEAD or head.count(b"\n") != head.count(b"\r\n"):
            self._hand_over()  # oversized, or a bare LF: aiohttp judges it as it always did
            return
        if end < 0:
            return  # the head is not complete yet
        request = self._parse(head)
        if request is None:
            self._hand_over()
            return
        self._buffer = buffer[end + 4:]
        self._pending = request
        if self._wakeup is not None:
            if not self._wakeup.done():
                self._wakeup.set_result(None)
        elif self.task is None:
            self.task = self._loop.create_task(self._serve())

    def _parse(self, data: bytes) -> _Request | None:
        """The head as a request the fast path serves, else None (aiohttp will)."""
        head = self._head_parsed = _Head()
        parser = self._parser
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, _HandOver):
            return None
        except httptools.HttpParserUpgrade:
            # CONNECT: llhttp reports a protocol switch (not an HttpParserError subclass);
            # escaping data_received it would kill the connection without an answer.
            return None
        method = parser.get_method()
        if not head.complete or method not in _METHODS or parser.get_http_version() != "1.1":
            return None
        if head.host is None:
            return None  # RFC 9112 §3.2: aiohttp answers a request without Host with a 400
        raw_path = head.url.decode("utf-8", "surrogateescape")
        try:
            path, query = normalise_path(raw_path)
        except GatewayError:
            return None  # aiohttp's handler answers it, exactly as before
        if path in LOCAL_ENDPOINTS:
            return None
        route = self._services.routes.match(path)
        if route is not None and not upstream_of(route).is_plain_http:
            return None
        return _Request(method.decode("ascii"), raw_path, path, query, route, head,
                        close=not head.keep_alive)

    def _hand_over(self) -> None:
        """Give the connection, unanswered bytes included, to aiohttp's handler."""
        transport = self._transport
        if transport is None or self._closed:
            return
        self._cancel_idle_timer()
        self._send_stall.stop()
        self._server.fast_connections.discard(self)
        self._closed = True
        if self._wakeup is not None and not self._wakeup.done():
            # the idle serving task sees _closed and ends (connection_lost, which would
            # cancel it, now goes to aiohttp's handler)
            self._wakeup.set_result(None)
        handler = self._server.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        data, self._buffer = self._buffer, b""
        if data:
            handler.data_received(data)

    # -- answering -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """A request is being answered or waits to be."""
        return self._answering or self._pending is not None

    async def _serve(self) -> None:
        """Answer this connection's requests one after another (one task per connection,
        not per request)."""
        while not self._closed:
            request = self._pending
            if request is None:
                self._wakeup = self._loop.create_future()
                try:
                    await self._wakeup
                finally:
                    self._wakeup = None
                continue
            self._pending = None
            self._answering = True
            try:
                await self._answer(request)
                # SECURITY: a client that pipelines requests and reads nothing must not
                # make the gateway queue answer after answer in memory: the next request
                # waits until this answer has left (as aiohttp's writer drains).
                await self._drain()
            except ConnectionResetError:
                return  # the client went away while its answer was being flushed
            finally:
                self._answering = False
            self._after_answer(request)

    async def _answer(self, request: _Request) -> None:
        started = time.perf_counter()
        status = 500
        try:
            status = await self._forward(request)
        except GatewayError as exc:
            status = exc.status
            self._write_error(request, status, error_body(exc.code, exc.message),
                              dict(exc.headers()))
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_CLOSED  # the client went away mid-request
            log.info("client_disconnected request_id=%s", request.request_id)
        except Exception:
            log.exception("internal_error method=%s path=%s request_id=%s", request.method,
                          request.raw_path.partition("?")[0][:256], request.request_id)
            status = 500
            self._write_error(request, 500, error_body(
                "internal_error", "The gateway failed to handle the request."), {})
        elapsed = time.perf_counter() - started
        self._services.metrics.observe(status, elapsed)
        log_access(access_log, self._server.access_log_mode, request.method, request.raw_path,
                   status, elapsed, self._peer, request.request_id)

    def _after_answer(self, request: _Request) -> None:
        transport = self._transport
        if self._closed or transport is None:
            return
        if request.close or self._eof or self._server.stopping:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        self._idle_since = self._loop.time()
        if self._buffer:
            self._next_request()

    async def _forward(self, request: _Request) -> int:
        services = self._services
        route = request.route
        if route is None:
            raise NotFoundError()
        plan = plan_forward(services, route, request.path, request.query, request.fields,
                            authorization=request.authorization, host=request.host,
                            websocket=False,
                            peer=self._peer, scheme="http", request_id=request.request_id)
        upstream = upstream_of(route)
        pool = services.pool
        assert pool is not None  # noqa: S101 - FastServer runs only with the pool
        head = encode_request_head(request.method, plan.target, upstream.authority,
                                   plan.fields)
        try:
            answer = await pool.request(upstream.address, head,
                                        is_head=request.method == "HEAD")
        except UpstreamFailure as exc:
            raise upstream_error(exc, upstream.authority, services.metrics) from exc
        try:
            await self._relay(request, answer)
        finally:
            answer.release()
        return answer.status

    async def _relay(self, request: _Request, answer: UpstreamResponse) -> None:
        fields = response_fields(answer.headers)
        status = answer.status
        if request.method == "HEAD" or status in _BODYLESS_STATUSES:
            # A HEAD answer's length describes the body a GET would get; its framing was
            # not checked (there is no body), so only a plain number is passed on.
            length = _content_length(answer.headers) or ""
            framing = (f"Content-Length: {length}\r\n" if length.isdigit() and length.isascii()
                       and status not in _BODYLESS_STATUSES else "")
            self._write(self._head(request, status, fields, framing))
            return
        if answer.complete:  # the whole (small) body came with the headers: one write
            body = answer.read_buffered()
            self._write(self._head(request, status, fields,
                                   f"Content-Length: {len(body)}\r\n") + body)
            return
        declared = _content_length(answer.headers)  # checked by the upstream parser
        chunked = declared is None
        self._write(self._head(request, status, fields,
                               "Transfer-Encoding: chunked\r\n" if declared is None
                               else f"Content-Length: {declared}\r\n"))
        try:
            async for chunk in answer.iter_chunks():
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                await self._drain()
        except UpstreamFailure as exc:
            self._cut_short(exc)
            return
        if chunked:
            self._write(b"0\r\n\r\n")

    def _cut_short(self, exc: UpstreamFailure) -> None:
        """The answer broke off upstream: cut the client connection so it cannot look whole."""
        self._services.metrics.upstream_errors["mid_body"] += 1
        log.warning("upstream_body_failed error=%s", type(exc).__name__)
        self.abort()

    def _head(self, request: _Request, status: int, fields: list[tuple[str, str]],
              framing: str) -> bytes:
        """The status line and header block sent to the client; `framing` is the
        Content-Length or Transfer-Encoding line."""
        lines = [_status_line(status)]
        server = date = False
        for name, value in fields:
            if len(name) in (4, 6, 12):
                lower = name.lower()
                if lower == "x-request-id":
                    continue  # the gateway's own replaces the upstream's (as on aiohttp's path)
                server = server or lower == "server"
                date = date or lower == "date"
            lines.append(f"{name}: {value}\r\n")
        if not server:  # the upstream's own, else not aiohttp's
            lines.append(_SERVER_LINE)
        if not date:
            lines.append(f"Date: {_http_date()}\r\n")
        if request.close or self._eof or self._server.stopping:
            lines.append("Connection: close\r\n")
        lines.append(f"X-Request-Id: {request.request_id}\r\n{framing}\r\n")
        return "".join(lines).encode("utf-8", "surrogateescape")

    def _write_error(self, request: _Request, status: int, body: bytes,
                     extra: dict[str, str]) -> None:
        fields = [*extra.items(), ("Content-Type", "application/json; charset=utf-8")]
        head = self._head(request, status, fields, f"Content-Length: {len(body)}\r\n")
        # RFC 9110 §9.3.2: an answer to HEAD has no body (its length says what GET's would be)
        self._write(head if request.method == "HEAD" else head + body)

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._closed:
            raise ConnectionResetError("client went away")
        self._transport.write(data)

    async def _drain(self) -> None:
        if self._writing_paused and not self._closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    # -- timers and closing ----------------------------------------------------------------
    def _arm_idle_timer(self, delay: float | None = None) -> None:
        """An idle connection, or one whose next head does not complete, closes
        `keepalive_timeout` after its last answer (as aiohttp's own handler does).

        One timer per connection, re-armed only when it fires: nothing per request.
        """
        if delay is None:
            self._idle_since = self._loop.time()
            delay = self._server.keepalive_timeout
        self._idle_timer = self._loop.call_later(delay, self._idle_timer_fired)

    def _idle_timer_fired(self) -> None:
        self._idle_timer = None
        if self._closed:
            return
        if self.busy:
            self._arm_idle_timer(self._server.keepalive_timeout)
            return
        left = self._idle_since + self._server.keepalive_timeout - self._loop.time()
        if left > 0:
            self._arm_idle_timer(left)
        else:
            self.close_if_idle()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def close_if_idle(self) -> None:
        if not self.busy and self._transport is not None and not self._closed:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()


_SERVER_LINE = f"Server: {SERVER_NAME}\r\n"
_date_cache: tuple[int, str] = (0, "")


@functools.cache
def _status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"


def _content_length(fields: list[tuple[str, str]]) -> str | None:
    for name, value in fields:
        if len(name) == 14 and name.lower() == "content-length":
            return value
    return None


def _http_date() -> str:
    """The Date header value (RFC 9110 §6.6.1), formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]

