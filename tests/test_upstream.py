"""The lean upstream pool (`gateway.upstream`) against hand-written loopback servers: strict
answer framing, keep-alive reuse, no retries, per-read timeouts and flow control (issue 4),
and the same scenarios end to end through the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import upstream as upstream_module
from gateway.upstream import (
    UpstreamConnectError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    encode_request_head,
)
from tests.conftest import ConfigFactory, GatewayFactory
from tests.rawhttp import dechunk

READ_TIMEOUT = 0.3
PAUSE = 0.05  # between the parts of an answer sent in pieces, so each arrives as its own read
DEADLINE = 10.0  # no wait in this file may last longer
MIB = 1024 * 1024
SOCKET_READ = 256 * 1024  # the most one asyncio socket read delivers
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FRESH = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"

Answer = bytes | tuple[bytes, ...]  # a tuple is sent part by part, PAUSE apart
Client = TestClient[Any, Any]


# A raw loopback upstream --------------------------------------------------------------------
class Peer:
    """One connection the raw server accepted, as the server sees it."""

    def __init__(self, server: RawServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = len(server.peers)
        self.ended = asyncio.Event()

    async def read_request(self) -> bytes | None:
        """One whole request (head, then the body as framed on the wire); None at EOF."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return None
        request = head + await read_request_body(self.reader, head)
        self.server.requests.append(request)
        return request

    async def send(self, answer: Answer) -> None:
        parts = (answer,) if isinstance(answer, bytes) else answer
        for number, part in enumerate(parts):
            if number:
                await asyncio.sleep(PAUSE)
            self.writer.write(part)
            await self.writer.drain()


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """asyncio.start_server speaking hand-written bytes; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.peers: list[Peer] = []
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    @property
    def origin(self) -> tuple[str, int]:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return "127.0.0.1", port

    @property
    def url(self) -> str:
        host, port = self.origin
        return f"http://{host}:{port}"

    @property
    def accepted(self) -> int:
        return len(self.peers)

    @property
    def methods(self) -> list[bytes]:
        return [request.split(b" ", 1)[0] for request in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(self, reader, writer)
        self.peers.append(peer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the pool dropped the connection: several tests are about exactly that
        except Exception as exc:  # a broken test handler must fail the test, not vanish
            self.errors.append(exc)
        finally:
            peer.ended.set()
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in self.peers:  # handlers see EOF and end by themselves (cancelling them
            peer.writer.close()  # makes asyncio 3.11 log an error for each)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=DEADLINE)
        for peer in self.peers:
            with contextlib.suppress(Exception):
                await peer.writer.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
        assert not self.errors, self.errors


def header_fields(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)}


async def read_request_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    """The request body exactly as framed on the wire (chunked framing kept, no trailers)."""
    fields = header_fields(head)
    if fields.get("transfer-encoding") == "chunked":
        raw = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line[:-2], 16)
            raw += size_line + await reader.readexactly(size + 2)
            if size == 0:
                return raw
    return await reader.readexactly(int(fields.get("content-length", "0")))


def replies(*answers: Answer) -> Handler:
    """Answer the n-th request the server reads (over all connections) with answers[n], the
    last one repeating; a connection stays open until the client closes it."""
    async def handle(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(answers[min(len(peer.server.requests), len(answers)) - 1])
    return handle


def answer_then_close(answer: Answer) -> Handler:
    """Read one request, answer it, close the connection."""
    async def handle(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(answer)
    return handle


async def read_then_close(peer: Peer) -> None:
    """Read one request and close without answering."""
    await peer.read_request()


async def read_then_stay_silent(peer: Peer) -> None:
    """Read one request and never answer (until the client goes away)."""
    await peer.read_request()
    await peer.reader.read()


def by_method(answers: dict[bytes, bytes]) -> Handler:
    """Answer each request according to its method; keep the connection open."""
    async def handle(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.send(answers[request.split(b" ", 1)[0]])
    return handle


def pattern(size: int) -> bytes:
    """`size` bytes in which every misplaced or repeated piece would show."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def chunk_framed(body: bytes, piece: int) -> bytes:
    pieces = [body[i:i + piece] for i in range(0, len(body), piece)]
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


ServerFactory = Callable[[Handler], Awaitable[RawServer]]
PoolFactory = Callable[..., UpstreamPool]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    """Start raw loopback upstreams; all are closed (with their connections) afterwards."""
    servers: list[RawServer] = []

    async def start(handler: Handler) -> RawServer:
        server = RawServer(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    pools: list[UpstreamPool] = []

    def build(*, connect_timeout: float = 2.0, read_timeout: float = READ_TIMEOUT
              ) -> UpstreamPool:
        pool = UpstreamPool(connect_timeout=connect_timeout, read_timeout=read_timeout)
        pools.append(pool)
        return pool

    yield build
    for pool in pools:
        await pool.close()
    await asyncio.sleep(0)  # let the closed transports release their sockets


@pytest.fixture
def pool(make_pool: PoolFactory) -> UpstreamPool:
    return make_pool()


def request_head(method: str = "GET", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    return encode_request_head(method, "/", "upstream.test", headers)


@contextlib.asynccontextmanager
async def exchange(pool: UpstreamPool, server: RawServer, method: str = "GET", *,
                   headers: Iterable[tuple[str, str]] = (),
                   body: AsyncIterator[bytes] | None = None,
                   chunked: bool = False) -> AsyncIterator[UpstreamResponse]:
    """Send one request, yield the answer once its head arrived, release it afterwards."""
    async with asyncio.timeout(DEADLINE):
        response = await pool.request(server.origin, request_head(method, headers),
                                      is_head=method == "HEAD", body=body, chunked=chunked)
    try:
        yield response
    finally:
        response.release()


async def read_all(response: UpstreamResponse, into: list[bytes] | None = None) -> bytes:
    """The whole body via iter_chunks; what arrived is kept in `into` if that fails."""
    chunks = [] if into is None else into
    async with asyncio.timeout(DEADLINE):
        async for chunk in response.iter_chunks():
            chunks.append(chunk)
    return b"".join(chunks)


async def fetch(pool: UpstreamPool, server: RawServer, method: str = "GET",
                **kwargs: Any) -> tuple[int, bytes]:
    """One whole exchange: the status and the body; the connection released."""
    async with exchange(pool, server, method, **kwargs) as response:
        return response.status, await read_all(response)


async def ended(peer: Peer) -> None:
    """Wait until the client closed this connection (the server saw EOF or a reset)."""
    async with asyncio.timeout(DEADLINE):
        await peer.ended.wait()


# Framing --------------------------------------------------------------------------------------
BAD_FRAMING = {
    "length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked-and-length": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                          b"Content-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two-equal-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nhello",
    "non-numeric-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello",
    "signed-length": b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello",
    "length-list": b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello",
    "empty-length": b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\nhello",
    "overflowing-length": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "gzip-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
    "identity-coding": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello",
    "gzip-chunked-one-line": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                             b"5\r\nhello\r\n0\r\n\r\n",
    "gzip-chunked-two-lines": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunked-twice-one-line": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
                              b"5\r\nhello\r\n0\r\n\r\n",
    "chunked-twice-two-lines": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "garbage-status-line": b"NOT-HTTP garbage\r\n\r\n",
    "status-without-code": b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
    "four-digit-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "bare-lf-lines": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nBad Header\r\nContent-Length: 2\r\n\r\nok",
    "folded-header": b"HTTP/1.1 200 OK\r\nX-A: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
    "unasked-upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\n\r\n",
    "chunk-size-not-hex": CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-0x": CHUNKED + b"0x5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-space": CHUNKED + b"5 \r\nhello\r\n0\r\n\r\n",
    "chunk-size-empty": CHUNKED + b"\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": CHUNKED + b"fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk-longer-than-size": CHUNKED + b"5\r\nhelloX\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("answer", list(BAD_FRAMING.values()), ids=list(BAD_FRAMING))
async def test_invalid_answer_framing_is_a_protocol_error(pool: UpstreamPool,
                                                          serve: ServerFactory,
                                                          answer: bytes) -> None:
    """Ambiguous or invalid framing raises UpstreamProtocolError, never yields a body."""
    server = await serve(replies(answer))
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, server)


GOOD_FRAMING: dict[str, tuple[Answer, bytes]] = {
    "length": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
    "zero-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b""),
    "no-reason-phrase": (b"HTTP/1.1 200 \r\nContent-Length: 2\r\n\r\nok", b"ok"),
    "chunked": (CHUNKED + b"2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n", b"hello"),
    "chunked-capitalised": (b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n"
                            b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),
    "chunk-extension": (CHUNKED + b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),
    "head-in-pieces": ((b"HTTP/1.1 200 OK\r\nContent-", b"Length: 5\r\n\r\nhe", b"llo"),
                       b"hello"),
    "chunks-in-pieces": ((CHUNKED + b"5\r\nhel", b"lo\r\n", b"0\r\n", b"\r\n"), b"hello"),
}


@pytest.mark.parametrize(("answer", "body"), list(GOOD_FRAMING.values()), ids=list(GOOD_FRAMING))
async def test_valid_framing_yields_exactly_the_body(pool: UpstreamPool, serve: ServerFactory,
                                                     answer: Answer, body: bytes) -> None:
    """A well-framed answer yields exactly its body and leaves the connection reusable."""
    server = await serve(replies(answer))
    assert await fetch(pool, server) == (200, body)
    assert await fetch(pool, server) == (200, body)
    assert server.accepted == 1


async def test_answer_trickled_slower_than_the_timeout_in_total_is_read(
        make_pool: PoolFactory, serve: ServerFactory) -> None:
    """The read timeout is per read: an answer trickling in over 3x the timeout is fine."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"
    gap = READ_TIMEOUT / 3
    pieces = [answer[i:i + 6] for i in range(0, len(answer), 6)]
    assert gap * (len(pieces) - 1) > 2 * READ_TIMEOUT

    async def trickle(peer: Peer) -> None:
        await peer.read_request()
        for piece in pieces:
            peer.writer.write(piece)
            await peer.writer.drain()
            await asyncio.sleep(gap)
        await peer.reader.read()

    server = await serve(trickle)
    assert await fetch(make_pool(), server) == (200, b"0123456789")


async def test_trailer_fields_never_join_the_header_list(pool: UpstreamPool,
                                                         serve: ServerFactory) -> None:
    """RFC 9110 §6.5.1: trailer fields are not merged into the answer's header section."""
    server = await serve(replies(CHUNKED + b"5\r\nhello\r\n0\r\nX-Trailer: late\r\n\r\n"))
    async with exchange(pool, server) as response:
        assert await read_all(response) == b"hello"
        assert response.headers == [("Transfer-Encoding", "chunked")]


# Bodiless answers and bytes that do not belong to the answer --------------------------------
LEFTOVER: dict[str, tuple[str, Answer, int]] = {
    "answer-pipelined-after-a-body": (
        "GET", OK + b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", 200),
    "answer-with-body-pipelined-after-a-body": (
        "GET", OK + b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nevil", 200),
    "answer-pipelined-after-204": (
        "GET", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        204),
    "body-on-204": ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", 204),
    "body-on-304": ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\nhello", 304),
    "body-on-head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200),
    "late-body-on-204": ("GET", (b"HTTP/1.1 204 No Content\r\n\r\n", b"hello"), 204),
    "junk-after-chunked-body": ("GET", CHUNKED + b"2\r\nok\r\n0\r\n\r\nGARBAGE", 200),
}


@pytest.mark.parametrize(("method", "answer", "status"), list(LEFTOVER.values()),
                         ids=list(LEFTOVER))
async def test_bytes_after_the_answer_never_change_it_nor_reach_the_next(
        pool: UpstreamPool, serve: ServerFactory, method: str, answer: Answer,
        status: int) -> None:
    """HEAD, 204 and 304 carry no body; bytes after a complete answer neither alter it nor
    stay on a pooled connection for the next request."""
    server = await serve(replies(answer, FRESH))
    async with exchange(pool, server, method) as response:
        assert response.status == status
        body = await read_all(response)
    assert body == (b"ok" if status == 200 and method == "GET" else b"")
    await asyncio.sleep(3 * PAUSE)  # late bytes have arrived by now
    assert await fetch(pool, server) == (200, b"fresh")
    assert server.accepted == 2


INTERIM: dict[str, Answer] = {
    "100-continue": b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
    "103-early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n"
                       b"Link: </app.js>; rel=preload\r\n\r\n" + OK,
    "102-then-103": b"HTTP/1.1 102 Processing\r\n\r\n"
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK,
    "interim-with-a-length": b"HTTP/1.1 103 Early Hints\r\nContent-Length: 7\r\n\r\n" + OK,
    "interim-in-its-own-read": (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", OK),
}


@pytest.mark.parametrize("answer", list(INTERIM.values()), ids=list(INTERIM))
async def test_interim_answers_are_skipped(pool: UpstreamPool, serve: ServerFactory,
                                           answer: Answer) -> None:
    """1xx answers are skipped: the final answer, its headers only, and a reusable connection."""
    server = await serve(replies(answer))
    async with exchange(pool, server) as response:
        assert response.status == 200
        assert response.headers == [("Content-Length", "2")]
        assert await read_all(response) == b"ok"
    assert await fetch(pool, server) == (200, b"ok")
    assert server.accepted == 1


# Connection reuse -------------------------------------------------------------------------------
KEEP_ALIVE = {
    "length": OK,
    "chunked": CHUNKED + b"2\r\nok\r\n0\r\n\r\n",
    "http10-keep-alive": b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
                         b"Content-Length: 2\r\n\r\nok",
    "204": b"HTTP/1.1 204 No Content\r\n\r\n",
    "304-with-a-length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n",
}


@pytest.mark.parametrize("answer", list(KEEP_ALIVE.values()), ids=list(KEEP_ALIVE))
async def test_sequential_complete_answers_share_one_connection(pool: UpstreamPool,
                                                                serve: ServerFactory,
                                                                answer: bytes) -> None:
    """Complete keep-alive answers leave their connection to the next request."""
    server = await serve(replies(answer))
    for _ in range(3):
        status, _ = await fetch(pool, server)
        assert status == int(answer.split(b" ", 2)[1])
    assert (server.accepted, len(server.requests)) == (1, 3)


NOT_REUSABLE = {
    "connection-close": ("GET", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                                b"Content-Length: 2\r\n\r\nok"),
    "http10-without-keep-alive": ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "204-connection-close": ("GET", b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"),
    "head": ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
    "head-without-length": ("HEAD", b"HTTP/1.1 200 OK\r\n\r\n"),
}


@pytest.mark.parametrize(("method", "answer"), list(NOT_REUSABLE.values()),
                         ids=list(NOT_REUSABLE))
async def test_connection_is_not_reused_after(pool: UpstreamPool, serve: ServerFactory,
                                              method: str, answer: bytes) -> None:
    """Connection: close, HTTP/1.0 without keep-alive and HEAD end the connection's use
    (the server keeps it open: the pool decides)."""
    server = await serve(replies(answer, FRESH))
    status, body = await fetch(pool, server, method)
    assert (status, body) == (int(answer.split(b" ", 2)[1]), b"ok" if b"ok" in answer else b"")
    assert await fetch(pool, server) == (200, b"fresh")
    assert server.accepted == 2
    await ended(server.peers[0])


FAILED = {
    "invalid-framing": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    "read-timeout-mid-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok",
}


@pytest.mark.parametrize("answer", list(FAILED.values()), ids=list(FAILED))
async def test_connection_is_not_reused_after_an_error(pool: UpstreamPool, serve: ServerFactory,
                                                       answer: bytes) -> None:
    """A connection whose answer failed is closed; the next request gets a new one."""
    server = await serve(replies(answer, FRESH))
    with pytest.raises((UpstreamProtocolError, UpstreamTimeout)):
        await fetch(pool, server)
    assert await fetch(pool, server) == (200, b"fresh")
    assert server.accepted == 2
    await ended(server.peers[0])


@pytest.mark.parametrize("size", [2, 4 * MIB], ids=["unread-small-body", "partly-read-body"])
async def test_connection_is_not_reused_after_an_unfinished_body(pool: UpstreamPool,
                                                                 serve: ServerFactory,
                                                                 size: int) -> None:
    """An answer released before its body was read to the end closes its connection."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (size, pattern(size))
    server = await serve(replies(answer, FRESH))
    async with exchange(pool, server) as response:
        if size > 2:
            async with asyncio.timeout(DEADLINE):
                await anext(aiter(response.iter_chunks()))
    assert await fetch(pool, server) == (200, b"fresh")
    assert server.accepted == 2
    await ended(server.peers[0])


async def test_connection_is_not_reused_after_the_request_body_failed(
        pool: UpstreamPool, serve: ServerFactory) -> None:
    """A request whose body broke off is unfinished on the wire: its connection is closed,
    even though the upstream answered completely before reading the body."""
    async def answer_early(peer: Peer) -> None:
        if peer.index:
            await replies(FRESH)(peer)
            return
        await peer.reader.readuntil(b"\r\n\r\n")
        peer.server.requests.append(b"early")
        await peer.send(OK)  # before the body came; the rest is answered as if requests
        while data := await peer.reader.read(65536):
            if b" HTTP/1.1\r\n" in data:
                peer.server.requests.append(data)
                await peer.send(FRESH)

    gate = asyncio.Event()

    async def broken_body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await gate.wait()
        raise RuntimeError("the client went away")

    server = await serve(answer_early)
    async with exchange(pool, server, "POST", headers=[("Content-Length", "100")],
                        body=broken_body()) as response:
        gate.set()
        sender = response._body_task
        assert sender is not None
        async with asyncio.timeout(DEADLINE):
            await asyncio.wait([sender])
        assert isinstance(sender.exception(), RuntimeError)
        assert await read_all(response) == b"ok"
    assert await fetch(pool, server) == (200, b"fresh")
    assert server.accepted == 2


async def test_connection_is_not_reused_when_answered_before_the_body_was_sent(
        pool: UpstreamPool, serve: ServerFactory) -> None:
    """An answer that came while the request body was still being sent ends the
    connection's use: the unsent rest would be read as the next request."""
    async def answer_on_head(peer: Peer) -> None:
        if peer.index:
            await replies(FRESH)(peer)
            return
        await peer.reader.readuntil(b"\r\n\r\n")
        peer.server.requests.append(b"early")
        await peer.send(OK)
        await peer.reader.read()

    server = await serve(answer_on_head)
    never = asyncio.Event()

    async def endless_body() -> AsyncIterator[bytes]:
        yield b"x" * 10
        await never.wait()
        yield b"never sent"

    async with exchange(pool, server, "POST", headers=[("Content-Length", "100")],
                        body=endless_body()) as response:
        assert await read_all(response) == b"ok"
    assert await fetch(pool, server) == (200, b"fresh")
    assert server.accepted == 2
    await ended(server.peers[0])


async def test_cancelled_request_closes_its_connection(make_pool: PoolFactory,
                                                       serve: ServerFactory) -> None:
    """A caller that gives up while waiting for the answer leaves no connection behind."""
    server = await serve(read_then_stay_silent)
    pool = make_pool(read_timeout=DEADLINE)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await pool.request(server.origin, request_head())
    await ended(server.peers[0])
    assert len(server.requests) == 1


CLOSE_DELIMITED = {
    "http11-connection-close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello",
    "http11-no-length": b"HTTP/1.1 200 OK\r\n\r\nhello",
    "http10-no-length": b"HTTP/1.0 200 OK\r\n\r\nhello",
    "in-pieces": b"HTTP/1.0 200 OK\r\n\r\nhel",
}


@pytest.mark.parametrize("answer", list(CLOSE_DELIMITED.values()), ids=list(CLOSE_DELIMITED))
async def test_body_delimited_by_close_ends_cleanly_and_is_not_reused(
        pool: UpstreamPool, serve: ServerFactory, answer: bytes) -> None:
    """RFC 9112 §6.3 (8): without a length the body runs until the upstream closes; that is
    its complete end, and the connection is gone."""
    server = await serve(answer_then_close((answer, b"lo") if answer.endswith(b"hel")
                                           else answer))
    assert await fetch(pool, server) == (200, b"hello")
    assert await fetch(pool, server) == (200, b"hello")
    assert server.accepted == 2


async def test_idle_connection_closed_by_the_upstream_is_not_used(pool: UpstreamPool,
                                                                  serve: ServerFactory) -> None:
    """An idle pooled connection the upstream closed is dropped unused: the next request
    opens a new one and succeeds, and nothing was sent on the closed one."""
    after_close: list[bytes] = []

    async def close_after_one(peer: Peer) -> None:
        if peer.index:
            await replies(FRESH)(peer)
            return
        await peer.read_request()
        await peer.send(OK)
        peer.writer.write_eof()
        after_close.append(await peer.reader.read())  # until the client closes its side

    server = await serve(close_after_one)
    assert await fetch(pool, server) == (200, b"ok")
    await ended(server.peers[0])
    assert await fetch(pool, server) == (200, b"fresh")
    assert after_close == [b""]
    assert (server.accepted, len(server.requests)) == (2, 2)


# No retries ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_request_is_not_retried_when_the_upstream_closes_unanswered(
        pool: UpstreamPool, serve: ServerFactory, method: str) -> None:
    """An upstream that reads the request and closes fails it; it is never sent twice."""
    server = await serve(read_then_close)
    body = chunks_of(b"payload") if method == "POST" else None
    headers = [("Content-Length", "7")] if method == "POST" else []
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, server, method, headers=headers, body=body)
    await asyncio.sleep(0.2)  # a retry would have arrived by now
    assert (server.accepted, len(server.requests)) == (1, 1)


async def test_request_on_a_reused_connection_is_not_retried(pool: UpstreamPool,
                                                             serve: ServerFactory) -> None:
    """A pooled connection that dies with the request unanswered is not retried elsewhere."""
    async def answer_one_then_drop_one(peer: Peer) -> None:
        await peer.read_request()
        await peer.send(OK)
        await peer.read_request()

    server = await serve(answer_one_then_drop_one)
    assert await fetch(pool, server) == (200, b"ok")
    with pytest.raises(UpstreamProtocolError):
        await fetch(pool, server)
    await asyncio.sleep(0.2)
    assert (server.accepted, len(server.requests)) == (1, 2)


# Timeouts ----------------------------------------------------------------------------------------
async def test_silent_upstream_times_out_after_the_read_timeout(pool: UpstreamPool,
                                                                serve: ServerFactory) -> None:
    """An upstream that accepts and never answers is UpstreamTimeout after read_timeout."""
    server = await serve(read_then_stay_silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await fetch(pool, server)
    assert READ_TIMEOUT * 0.9 <= loop.time() - started < READ_TIMEOUT + 1.0


async def test_upstream_stalling_mid_body_times_out_while_iterating(
        pool: UpstreamPool, serve: ServerFactory) -> None:
    """Headers then silence mid-body: the body iteration fails after about read_timeout."""
    server = await serve(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"))
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    async with exchange(pool, server) as response:
        started = loop.time()
        with pytest.raises((UpstreamTimeout, UpstreamProtocolError)):
            await read_all(response, got)
        elapsed = loop.time() - started
    assert b"".join(got) == b"0123456789"
    assert READ_TIMEOUT * 0.9 <= elapsed < READ_TIMEOUT + 1.0


async def test_slow_reader_is_not_an_upstream_timeout(pool: UpstreamPool,
                                                      serve: ServerFactory) -> None:
    """While the pool holds the upstream back (flow control) because the caller reads
    slowly, the upstream is not silent: a pause longer than read_timeout loses nothing."""
    body = pattern(2 * MIB)
    server = await serve(replies(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
                                 % (len(body), body)))
    chunks: list[bytes] = []
    async with exchange(pool, server) as response:
        async with asyncio.timeout(DEADLINE):
            async for chunk in response.iter_chunks():
                if not chunks:
                    await asyncio.sleep(3 * READ_TIMEOUT)
                chunks.append(chunk)
    assert b"".join(chunks) == body


async def test_refused_connection_is_a_connect_error(pool: UpstreamPool,
                                                     dead_port: int) -> None:
    """Nobody listening on the upstream port is UpstreamConnectError."""
    with pytest.raises(UpstreamConnectError):
        async with asyncio.timeout(DEADLINE):
            await pool.request(("127.0.0.1", dead_port), request_head())


async def test_unanswered_connect_times_out(make_pool: PoolFactory) -> None:
    """A connection the upstream never accepts is UpstreamTimeout after connect_timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)  # one queued connection fills it; the kernel drops later SYNs
        port = listener.getsockname()[1]
        _, filler = await asyncio.open_connection("127.0.0.1", port)
        try:
            pool = make_pool(connect_timeout=READ_TIMEOUT)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(UpstreamTimeout):
                async with asyncio.timeout(DEADLINE):
                    await pool.request(("127.0.0.1", port), request_head())
            assert READ_TIMEOUT * 0.9 <= loop.time() - started < READ_TIMEOUT + 1.0
        finally:
            filler.close()
            await filler.wait_closed()


# Streaming both ways ---------------------------------------------------------------------------
@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_large_answer_streams_intact_with_bounded_buffering(
        make_pool: PoolFactory, serve: ServerFactory, framing: str) -> None:
    """A 5 MB answer written faster than it is read arrives intact; the pool pauses reading
    at its high-water mark (no deadlock), so its buffer stays bounded."""
    body = pattern(5 * MIB)
    if framing == "length":
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    else:
        answer = CHUNKED + chunk_framed(body, 100_000)
    server = await serve(replies(answer))
    received: list[bytes] = []
    peak, paused = 0, False
    async with exchange(make_pool(read_timeout=2.0), server) as response:
        conn = response._conn
        async with asyncio.timeout(DEADLINE):
            async for chunk in response.iter_chunks():
                received.append(chunk)
                peak, paused = max(peak, conn.buffered), paused or conn._paused_reading
                if len(received) % 8 == 0:
                    await asyncio.sleep(0.005)
    assert b"".join(received) == body
    assert paused, "the reader never fell behind: flow control was not exercised"
    assert peak <= upstream_module._HIGH_WATER + SOCKET_READ


@pytest.mark.parametrize(("parts", "wire"), [
    ((b"alpha", b"", b"beta"), b"5\r\nalpha\r\n4\r\nbeta\r\n0\r\n\r\n"),
    ((), b"0\r\n\r\n"),
    ((b"x" * 300,), b"12c\r\n" + b"x" * 300 + b"\r\n0\r\n\r\n"),
], ids=["two-chunks-and-an-empty-one", "empty-body", "hex-size"])
async def test_chunked_request_body_is_framed_exactly(pool: UpstreamPool, serve: ServerFactory,
                                                      parts: tuple[bytes, ...],
                                                      wire: bytes) -> None:
    """chunked=True frames each non-empty piece as a chunk and ends with the last chunk."""
    server = await serve(replies(OK))
    headers = [("Transfer-Encoding", "chunked")]
    for _ in range(2):
        assert await fetch(pool, server, "POST", headers=headers, body=chunks_of(*parts),
                           chunked=True) == (200, b"ok")
    assert server.requests == [request_head("POST", headers) + wire] * 2
    assert server.accepted == 1


async def test_request_body_with_content_length_is_sent_as_is(pool: UpstreamPool,
                                                              serve: ServerFactory) -> None:
    """Without chunked=True the body bytes follow the head unchanged."""
    server = await serve(replies(OK))
    headers = [("Content-Length", "11")]
    assert await fetch(pool, server, "PUT", headers=headers,
                       body=chunks_of(b"hello", b"", b" world")) == (200, b"ok")
    assert server.requests == [request_head("PUT", headers) + b"hello world"]


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
async def test_large_request_body_streams_to_a_slow_reader(make_pool: PoolFactory,
                                                           serve: ServerFactory,
                                                           chunked: bool) -> None:
    """A 5 MB request body waits for the upstream to read (drain) and arrives intact."""
    body = pattern(5 * MIB)

    async def read_late(peer: Peer) -> None:
        await asyncio.sleep(0.2)  # the pool's writes fill the socket buffers meanwhile
        request = await peer.read_request()
        assert request is not None
        await peer.send(OK)

    server = await serve(read_late)
    pieces = [body[i:i + 64 * 1024] for i in range(0, len(body), 64 * 1024)]
    headers = ([("Transfer-Encoding", "chunked")] if chunked
               else [("Content-Length", str(len(body)))])
    assert await fetch(make_pool(read_timeout=2.0), server, "POST", headers=headers,
                       body=chunks_of(*pieces), chunked=chunked) == (200, b"ok")
    sent = server.requests[0].split(b"\r\n\r\n", 1)[1]
    assert (dechunk(sent) if chunked else sent) == body


CUT_SHORT = {
    "length-1000-got-10": (b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
                           b"0123456789"),
    "chunked-cut-inside-a-chunk": (CHUNKED + b"5\r\nhello\r\na\r\nabc", b"helloabc"),
    "chunked-cut-before-last-chunk": (CHUNKED + b"5\r\nhello\r\n", b"hello"),
    "chunked-cut-inside-last-chunk": (CHUNKED + b"5\r\nhello\r\n0\r\n", b"hello"),
}


@pytest.mark.parametrize(("answer", "prefix"), list(CUT_SHORT.values()), ids=list(CUT_SHORT))
async def test_upstream_closing_mid_body_fails_the_iteration(pool: UpstreamPool,
                                                             serve: ServerFactory,
                                                             answer: bytes,
                                                             prefix: bytes) -> None:
    """A body cut short by the upstream closing ends in UpstreamProtocolError, never a
    clean end; what came before is delivered as it was."""
    server = await serve(answer_then_close(answer))
    got: list[bytes] = []
    with pytest.raises(UpstreamProtocolError):
        async with exchange(pool, server) as response:
            await read_all(response, got)
    assert b"".join(got) == prefix


# The request head ------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "target", "host", "headers", "expected"), [
    ("GET", "/", "up.test", [], b"GET / HTTP/1.1\r\nHost: up.test\r\n\r\n"),
    ("POST", "/a/b?x=1&y=%20", "up.test:8080",
     [("X-One", "1"), ("x-dup", "a"), ("x-dup", "b"), ("Content-Length", "0")],
     b"POST /a/b?x=1&y=%20 HTTP/1.1\r\nHost: up.test:8080\r\nX-One: 1\r\nx-dup: a\r\n"
     b"x-dup: b\r\nContent-Length: 0\r\n\r\n"),
    ("OPTIONS", "*", "[::1]:81", [("Empty", "")],
     b"OPTIONS * HTTP/1.1\r\nHost: [::1]:81\r\nEmpty: \r\n\r\n"),
    ("GET", "/", "h", [("X-Name", "caf\u00e9")],
     b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xc3\xa9\r\n\r\n"),
    ("GET", "/", "h", [("X-Raw", b"\xff\xfe".decode("utf-8", "surrogateescape"))],
     b"GET / HTTP/1.1\r\nHost: h\r\nX-Raw: \xff\xfe\r\n\r\n"),
], ids=["minimal", "query-and-repeated-headers", "asterisk-form-ipv6-empty-value", "utf-8",
        "surrogate-escaped-bytes"])
def test_request_head_is_encoded_byte_exact(method: str, target: str, host: str,
                                            headers: list[tuple[str, str]],
                                            expected: bytes) -> None:
    """Request line, Host first, headers in order and case as given, CRLFs, blank line."""
    assert encode_request_head(method, target, host, headers) == expected


# Pool lifetime ---------------------------------------------------------------------------------
async def test_close_closes_idle_connections(pool: UpstreamPool, serve: ServerFactory) -> None:
    """pool.close() closes the idle connections it holds."""
    server = await serve(replies(OK))
    assert await fetch(pool, server) == (200, b"ok")
    await asyncio.sleep(PAUSE)
    assert not server.peers[0].ended.is_set()
    await pool.close()
    await ended(server.peers[0])


async def test_connection_released_after_close_is_not_kept(pool: UpstreamPool,
                                                           serve: ServerFactory) -> None:
    """A connection given back after pool.close() is closed, not pooled."""
    server = await serve(replies(OK))
    async with exchange(pool, server) as response:
        await pool.close()
        assert await read_all(response) == b"ok"
    await ended(server.peers[0])


async def test_idle_connections_are_closed_after_the_idle_timeout(
        pool: UpstreamPool, serve: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection idle longer than the idle timeout is closed by the pool."""
    monkeypatch.setattr(upstream_module, "_IDLE_TIMEOUT", 0.1)
    server = await serve(replies(OK))
    assert await fetch(pool, server) == (200, b"ok")
    await ended(server.peers[0])
    assert await fetch(pool, server) == (200, b"ok")
    assert server.accepted == 2


async def test_idle_connections_beyond_the_per_origin_limit_are_closed(
        pool: UpstreamPool, serve: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most _MAX_IDLE_PER_ORIGIN idle connections are kept per origin; others close."""
    monkeypatch.setattr(upstream_module, "_MAX_IDLE_PER_ORIGIN", 1)
    server = await serve(replies(OK))
    async with exchange(pool, server) as first, exchange(pool, server) as second:
        assert (await read_all(first), await read_all(second)) == (b"ok", b"ok")
    await ended(server.peers[0])  # released last, when the one idle slot was taken
    assert await fetch(pool, server) == (200, b"ok")
    assert server.accepted == 2
    assert not server.peers[1].ended.is_set()


# End to end through the gateway ------------------------------------------------------------------
GatewayTo = Callable[[Handler], Awaitable[tuple[Client, RawServer]]]


@pytest.fixture
def gateway_to(serve: ServerFactory, make_gateway: GatewayFactory,
               make_config: ConfigFactory) -> GatewayTo:
    """A gateway (default upstream client: the pool) whose every route leads to a raw server."""
    async def start(handler: Handler) -> tuple[Client, RawServer]:
        server = await serve(handler)
        client = await make_gateway(make_config(routes=[
            {"prefix": "/", "upstream": server.url, "auth": "none"}]))
        return client, server
    return start


async def test_gateway_relays_the_final_answer_after_early_hints(gateway_to: GatewayTo) -> None:
    """103 Early Hints then 200: the client gets the 200 with its own headers and body."""
    client, _ = await gateway_to(replies(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok"))
    async with asyncio.timeout(DEADLINE):
        response = await client.get("/x")
        assert (response.status, await response.read()) == (200, b"ok")
    assert response.headers["X-Final"] == "yes"
    assert "Link" not in response.headers


async def test_gateway_answers_get_head_get_correctly(gateway_to: GatewayTo) -> None:
    """A HEAD between two GETs gets headers only; the GETs get their bodies; the HEAD's
    connection is not reused."""
    client, server = await gateway_to(by_method({
        b"GET": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HEAD": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"}))
    async with asyncio.timeout(DEADLINE):
        first = await client.get("/x")
        assert await first.read() == b"hello"
        head = await client.head("/x")
        assert (head.status, head.headers["Content-Length"], await head.read()) == (
            200, "5", b"")
        last = await client.get("/x")
        assert await last.read() == b"hello"
    assert server.methods == [b"GET", b"HEAD", b"GET"]
    assert server.accepted == 2


async def test_gateway_discards_a_body_sent_with_204(gateway_to: GatewayTo) -> None:
    """A body wrongly sent with a 204 reaches no client, not even the next one."""
    client, _ = await gateway_to(replies(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", FRESH))
    async with asyncio.timeout(DEADLINE):
        first = await client.get("/x")
        assert (first.status, await first.read()) == (204, b"")
        second = await client.get("/y")
        assert (second.status, await second.read()) == (200, b"fresh")


async def test_gateway_never_relays_an_answer_pipelined_after_the_real_one(
        gateway_to: GatewayTo) -> None:
    """Extra bytes after a complete answer never replace the answer the client gets."""
    client, _ = await gateway_to(replies(
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    async with asyncio.timeout(DEADLINE):
        response = await client.get("/x")
        assert response.status == 204


async def test_gateway_relays_a_body_delimited_by_close(gateway_to: GatewayTo) -> None:
    """A body that ends when the upstream closes reaches the client complete."""
    client, _ = await gateway_to(answer_then_close(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello"))
    async with asyncio.timeout(DEADLINE):
        response = await client.get("/x")
        assert (response.status, await response.read()) == (200, b"hello")


async def test_gateway_refuses_transfer_codings_split_over_two_lines(
        gateway_to: GatewayTo) -> None:
    """Transfer-Encoding gzip then chunked on two lines is as unsupported as on one: 502."""
    client, _ = await gateway_to(replies(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"))
    async with asyncio.timeout(DEADLINE):
        response = await client.get("/x")
        assert response.status == 502


async def test_gateway_never_turns_trailers_into_headers(gateway_to: GatewayTo) -> None:
    """An upstream's trailer fields never reach the client as header fields."""
    client, _ = await gateway_to(replies(
        CHUNKED + b"5\r\nhello\r\n0\r\nSet-Cookie: planted=1\r\n\r\n"))
    async with asyncio.timeout(DEADLINE):
        response = await client.get("/x")
        assert await response.read() == b"hello"
    assert "Set-Cookie" not in response.headers


async def test_gateway_head_answer_with_a_bad_length_is_not_a_500(
        gateway_to: GatewayTo) -> None:
    """A HEAD answer's unchecked Content-Length never crashes the gateway."""
    client, _ = await gateway_to(replies(
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n"))
    async with asyncio.timeout(DEADLINE):
        response = await client.head("/x")
        assert response.status in (200, 502)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_compressed_request_body_is_forwarded_byte_for_byte(
        gateway_to: GatewayTo, coding: str) -> None:
    """A gzip/deflate request body reaches the upstream exactly as sent, under its own
    length: the gateway never inflates it (inflating let one request smuggle another)."""
    smuggled = (b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Auth-UserId: admin\r\n"
                b"Content-Length: 0\r\n\r\n")
    plain = b"A" * 101 + smuggled
    body = gzip.compress(plain, mtime=0) if coding == "gzip" else zlib.compress(plain)
    client, server = await gateway_to(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    async with asyncio.timeout(DEADLINE):
        response = await client.post("/upload", data=body,
                                     headers={"Content-Encoding": coding})
        assert (response.status, await response.read()) == (200, b"ok")
        await asyncio.sleep(0.1)  # a smuggled second request would arrive right behind
    assert len(server.requests) == 1
    head, _, received = server.requests[0].partition(b"\r\n\r\n")
    assert received == body
    assert header_fields(head + b"\r\n")["content-length"] == str(len(body))


async def test_gateway_names_itself_when_the_upstream_sends_no_server(
        gateway_to: GatewayTo) -> None:
    """A proxied answer without a Server header gets `Server: gateway`, never aiohttp's
    version banner; an upstream's own Server header would be passed on unchanged."""
    client, _ = await gateway_to(replies(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    async with asyncio.timeout(DEADLINE):
        response = await client.get("/x")
        assert (response.status, await response.read()) == (200, b"ok")
    assert response.headers["Server"] == "gateway"
