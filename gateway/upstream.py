"""A lean keep-alive HTTP/1.1 client for the upstream side, on httptools' strict llhttp parser.

aiohttp's ClientSession costs about half of all CPU per proxied request; this pool does only
what a proxy needs and is as strict as the rest of the gateway:
- response framing is validated: `Content-Length` with `Transfer-Encoding`, repeated or
  invalid lengths, or a transfer coding other than `chunked` -> `UpstreamProtocolError`;
- a status outside 100..599 is an error; HEAD, 204, 304 and 1xx answers carry no body;
  interim 1xx answers are skipped;
- a connection goes back to the pool only after a complete answer that allows keep-alive;
  after an error, an incomplete body, `Connection: close` or a HEAD it is closed;
- a request is never retried once any byte of it was sent;
- bodies stream both ways with flow control; connect and per-read timeouts as configured.

Errors (all subclass `OSError`-free `UpstreamFailure`):
```
UpstreamFailure
  UpstreamConnectError     could not connect            -> 502
  UpstreamTimeout          connect or read timed out    -> 504 (before the answer started)
  UpstreamProtocolError    invalid or broken answer     -> 502
```
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import cast

import httptools

_NO_BODY_STATUSES = frozenset({204, 304})
_HIGH_WATER = 256 * 1024
_IDLE_TIMEOUT = 15.0
_MAX_IDLE_PER_ORIGIN = 512
MAX_HEADERS = 128
MAX_HEADER_BYTES = 64 * 1024


class UpstreamFailure(Exception):
    """Any failure talking to the upstream."""


class UpstreamConnectError(UpstreamFailure):
    """The upstream could not be reached."""


class UpstreamTimeout(UpstreamFailure):
    """The upstream did not connect or send anything within its timeout."""


class UpstreamProtocolError(UpstreamFailure):
    """The upstream's answer was invalid, ambiguous or cut short."""


class _Connection(asyncio.Protocol):
    """One upstream connection: sends a request, parses exactly one answer at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        # One parser per connection: llhttp starts on the next answer by itself.
        self._parser = httptools.HttpResponseParser(self)
        self._active = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._reset_response(head=False)

    def _reset_response(self, head: bool) -> None:
        self.head = head
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.headers_done = False
        self.message_done = False
        self.until_close = False
        self.error: UpstreamFailure | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.reusable = False
        self._length_headers = 0
        self._transfer_encodings: list[str] = []
        self._header_bytes = 0

    # asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._active and not self.message_done and self.error is None:
            if self.headers_done and self.until_close:
                self._complete(reusable=False)  # a body delimited by the close (RFC 9112 §6.3)
            else:
                self.error = UpstreamProtocolError(
                    "the upstream closed the connection mid-answer")
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_exception(UpstreamProtocolError("connection lost"))

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._last_data = self._loop.time()
        if not self._active:  # bytes nobody asked for: the connection is unusable
            self.error = UpstreamProtocolError("unexpected bytes from the upstream")
            self.abort()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(f"invalid answer from the upstream: {exc}"))
        except UpstreamFailure as exc:
            self._fail(exc)
        if self.buffered > _HIGH_WATER and not self._paused_reading and self.transport:
            self._paused_reading = True
            self.transport.pause_reading()

    # httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.headers_done:
            # SECURITY: a second answer to one request (response splitting or a desynced
            # upstream) must never replace or follow the real one.
            raise UpstreamProtocolError("the upstream sent more than one answer")
        self.headers = []
        self._length_headers = 0
        self._transfer_encodings = []
        self._header_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer field (RFC 9110 §6.5.1): never merged into the headers
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self.headers) >= MAX_HEADERS:
            raise UpstreamProtocolError("the upstream's answer headers are too large")
        lower = name.lower()
        if lower == b"content-length":
            self._length_headers += 1
        elif lower == b"transfer-encoding":
            self._transfer_encodings.append(value.decode("latin-1"))
        self.headers.append((name.decode("utf-8", "surrogateescape"),
                             value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 §15: llhttp takes any three digits; `099` would reach the client as
            # the malformed status line `HTTP/1.1 99`
            raise UpstreamProtocolError(f"the upstream sent the invalid status {status}")
        if 100 <= status < 200:
            return  # interim answer (100 Continue, 103 Early Hints): wait for the final one
        bodyless = self.head or status in _NO_BODY_STATUSES  # no body: framing is moot
        if not bodyless:
            self._check_framing()  # before headers_done: a refused answer never starts
        self.status = status
        self.headers_done = True
        if bodyless:
            self._complete(reusable=not self.head and self._parser.should_keep_alive())
        self._wake()

    def _check_framing(self) -> None:
        """SECURITY: RFC 9112 §6.3 - ambiguous framing is how answers get smuggled."""
        if self._length_headers > 1:
            raise UpstreamProtocolError("the upstream sent more than one Content-Length")
        if self._transfer_encodings:
            if self._length_headers:
                raise UpstreamProtocolError("the upstream sent Content-Length and "
                                            "Transfer-Encoding")
            codings = ",".join(self._transfer_encodings).replace(" ", "").lower()
            if codings != "chunked":
                raise UpstreamProtocolError("unsupported Transfer-Encoding from the upstream")
        self.until_close = not self._length_headers and not self._transfer_encodings

    def on_body(self, body: bytes) -> None:
        if self.message_done:
            raise UpstreamProtocolError("the upstream sent a body where none belongs")
        self.chunks.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an interim 1xx answer
        if self.message_done:
            return
        self._complete(reusable=self._parser.should_keep_alive())

    # internals --------------------------------------------------------------------------
    def _complete(self, reusable: bool) -> None:
        self.message_done = True
        self.reusable = reusable
        self._wake()

    def _fail(self, error: UpstreamFailure) -> None:
        if self.error is None:
            self.error = error
        self.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def wake(self, _task: object = None) -> None:
        """Let the waiting caller look again (e.g. the body sender finished or failed)."""
        self._wake()

    def touch(self) -> None:
        self._last_data = self._loop.time()

    def _on_timer(self) -> None:
        """Fire the read timeout, or re-arm for what is left of it.

        The timer stays armed across requests on a busy connection rather than being
        created and cancelled per request: it only checks the time of the last byte.
        """
        self._timer = None
        if not self._active or self.closed or self._waiter is None:
            return  # nobody waits (a slow reader is not a silent upstream); wait() re-arms
        remaining = self._last_data + self._read_timeout - self._loop.time()
        if remaining > 0:
            self._timer = self._loop.call_later(remaining, self._on_timer)
            return
        self._fail(UpstreamTimeout("the upstream sent nothing within the read timeout"))

    async def wait(self) -> None:
        """Wait for the next parser event, at most `read_timeout` after the last byte."""
        if self.error is not None:
            raise self.error
        self._waiter = self._loop.create_future()
        self._last_data = max(self._last_data, self._loop.time())
        if self._timer is None:
            self._timer = self._loop.call_later(self._read_timeout, self._on_timer)
        try:
            await self._waiter
        finally:
            self._waiter = None

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def begin(self, head: bool) -> None:
        """Prepare to parse the answer to a request about to be sent."""
        self._reset_response(head)
        self._active = True
        self._last_data = self._loop.time()

    def finish(self) -> None:
        """The answer was consumed: forget the parser, resume reading for close detection."""
        self._active = False
        if self._paused_reading and self.transport is not None and not self.closed:
            self._paused_reading = False
            self.transport.resume_reading()

    def take_chunk(self) -> bytes | None:
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self._paused_reading and self.buffered < _HIGH_WATER // 2 and self.transport:
            self._paused_reading = False
            self.transport.resume_reading()
        return chunk

    def write(self, data: bytes) -> None:
        if self.transport is None or self.closed:
            raise UpstreamProtocolError("the upstream connection is closed")
        self.transport.write(data)

    async def drain(self) -> None:
        if self._paused_writing and not self.closed:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def abort(self) -> None:
        self.closed = True
        self.stop_timer()
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """The answer to one upstream request: status and headers now, the body as it comes."""

    def __init__(self, pool: UpstreamPool, origin: tuple[str, int], conn: _Connection,
                 body_task: asyncio.Task[None] | None) -> None:
        self._pool = pool
        self._origin = origin
        self._conn = conn
        self._body_task = body_task
        self.status = conn.status
        self.headers = conn.headers
        self._released = False

    @property
    def complete(self) -> bool:
        """The whole body has already arrived (typical for small answers)."""
        return self._conn.message_done

    def read_buffered(self) -> bytes:
        """Everything received so far, consumed (used when `complete`)."""
        chunks = []
        while (chunk := self._conn.take_chunk()) is not None:
            chunks.append(chunk)
        return b"".join(chunks)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body chunks until the answer is complete; UpstreamFailure if it breaks off."""
        conn = self._conn
        while True:
            chunk = conn.take_chunk()
            if chunk is not None:
                yield chunk
                continue
            if conn.message_done:
                return  # complete, even if junk followed it (the connection is closed then)
            await conn.wait()

    def release(self) -> None:
        """Give the connection back when the answer was complete, else close it."""
        if self._released:
            return
        self._released = True
        conn = self._conn
        task = self._body_task
        body_sent = task is None or (task.done() and not task.cancelled()
                                     and task.exception() is None)
        if task is not None and not task.done():
            task.cancel()
        conn.finish()
        if conn.message_done and conn.reusable and body_sent and not conn.closed \
                and not conn.chunks:
            self._pool.put_back(self._origin, conn)
        else:
            conn.abort()


class UpstreamPool:
    """Keep-alive connections per upstream origin (plain HTTP), idle ones closed after 15 s."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def request(self, origin: tuple[str, int], head: bytes, *, is_head: bool = False,
                      body: AsyncIterator[bytes] | None = None,
                      chunked: bool = False) -> UpstreamResponse:
        """Send one request (`head` is the request line and headers, CRLF-terminated) and
        return once the answer's status and headers arrived."""
        conn = await self._acquire(origin)
        conn.begin(is_head)
        body_task = None
        try:
            conn.write(head)
            if body is not None:
                body_task = asyncio.create_task(_send_body(conn, body, chunked))
                body_task.add_done_callback(conn.wake)
            while not conn.headers_done:
                _raise_if_failed(body_task)
                await conn.wait()  # raises the connection's error, if any, before waiting
        except BaseException:
            if body_task is not None:
                body_task.cancel()
                with contextlib.suppress(BaseException):
                    await body_task
            conn.finish()
            conn.abort()
            raise
        return UpstreamResponse(self, origin, conn, body_task)

    async def _acquire(self, origin: tuple[str, int]) -> _Connection:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and \
                    not conn.transport.is_closing():
                return conn
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self._read_timeout), origin[0], origin[1])
        except TimeoutError as exc:
            raise UpstreamTimeout("connecting to the upstream timed out") from exc
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to the upstream: {exc}") from exc
        return conn

    def put_back(self, origin: tuple[str, int], conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= _MAX_IDLE_PER_ORIGIN:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(_IDLE_TIMEOUT, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than the idle timeout."""
        self._sweeper = None
        limit = time.monotonic() - _IDLE_TIMEOUT
        remaining = 0
        for idle in self._idle.values():
            for conn in [c for c in idle if c.idle_since < limit or c.closed]:
                idle.remove(conn)
                conn.abort()
            remaining += len(idle)
        if remaining and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(_IDLE_TIMEOUT, self._sweep)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()


def _raise_if_failed(task: asyncio.Task[None] | None) -> None:
    """Re-raise the body sender's error (a 413, a client that went away) in the caller."""
    if task is not None and task.done() and not task.cancelled():
        error = task.exception()
        if error is not None:
            raise error


async def _send_body(conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Stream the request body, honouring the transport's flow control."""
    async for chunk in body:
        if not chunk:
            continue
        conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        conn.touch()  # sending counts as progress for the per-read timeout
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")


def encode_request_head(method: str, target: str, host: str,
                        headers: Iterable[tuple[str, str]]) -> bytes:
    """The request line and header block, exactly as sent (the caller validated values)."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("utf-8", "surrogateescape")
