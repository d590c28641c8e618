"""The fast path (gateway/fastpath.py) over real loopback sockets: which requests it serves
itself, how it hands a connection to aiohttp's handler, and that what clients see matches a
gateway without the fast path (`upstream_client: aiohttp`)."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.app import create_gateway
from gateway.config import parse_config
from gateway.demo import create_echo_app
from gateway.fastpath import MAX_HEAD, MAX_PENDING, FastServer
from tests.conftest import (
    PASSWORD,
    ConfigFactory,
    GatewayFactory,
    GatewayTestServer,
    base_config_data,
    login,
    services_of,
)
from tests.fakes import FakeClock

Client = TestClient[Any, Any]
Headers = Sequence[tuple[str, str]]
WAIT = 2.0  # the longest any single wait in this file may take, in seconds
NO_ANSWER = "<no answer>"
CLOSED = "<closed without an answer>"


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP/1.1 answer as read off the wire (a chunked body already decoded)."""

    status_line: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ", 2)[1])

    def json(self) -> Any:
        return json.loads(self.body)


class RawConnection:
    """One client TCP connection to the gateway that writes and reads bytes by hand."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.local_address: tuple[str, int] = writer.get_extra_info("sockname")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_head(self) -> tuple[str, CIMultiDict[str]]:
        """The status line and the header fields of the next answer."""
        async with asyncio.timeout(WAIT):
            head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines:
            name, _, value = line.partition(":")
            headers.add(name, value.strip())
        return status_line, headers

    async def read_answer(self, method: str = "GET") -> Answer:
        """The next whole answer, framed as RFC 9112 §6.3 says for a request of `method`."""
        status_line, headers = await self.read_head()
        status = int(status_line.split(" ", 2)[1])
        async with asyncio.timeout(WAIT):
            if method == "HEAD" or status in (204, 304) or status < 200:
                body = b""
            elif "chunked" in headers.get("Transfer-Encoding", "").lower():
                body = await self._read_chunked()
            elif "Content-Length" in headers:
                body = await self.reader.readexactly(int(headers["Content-Length"]))
            else:
                body = await self.reader.read()
        return Answer(status_line, headers, body)

    async def _read_chunked(self) -> bytes:
        body = b""
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            body += (await self.reader.readexactly(size + 2))[:-2]
        while await self.reader.readline() not in (b"\r\n", b""):
            pass  # trailer fields
        return body

    async def read_status_line(self) -> str:
        """The first line the gateway answers with, `CLOSED`, or `NO_ANSWER` within 1 s."""
        try:
            async with asyncio.timeout(1.0):
                line = await self.reader.readline()
        except TimeoutError:
            return NO_ANSWER
        except ConnectionResetError:
            return CLOSED
        return line.decode("latin-1").rstrip("\r\n") if line else CLOSED

    async def read_until_closed(self) -> bytes:
        """Every byte left until the gateway closes the connection (a reset counts as
        closed); fails the test if it is still open after WAIT."""
        data = b""
        async with asyncio.timeout(WAIT):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await self.reader.read(65536):
                    data += chunk
        return data

    def shut_write(self) -> None:
        """Half-close: send FIN, keep reading."""
        self.writer.write_eof()

    def reset(self) -> None:
        """Close with a TCP reset (SO_LINGER 0), as a client that vanishes does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


@contextlib.asynccontextmanager
async def connect(client: Client) -> AsyncIterator[RawConnection]:
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        yield RawConnection(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request(method: str, target: str, headers: Headers = (), body: bytes | None = None,
            version: str = "HTTP/1.1") -> bytes:
    """A request's bytes: `Host: gateway.test`, `headers`, and a Content-Length for `body`."""
    lines = [f"{method} {target} {version}", "Host: gateway.test"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def auth(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def fast_server(client: Client) -> FastServer:
    runner = client.server.runner
    assert runner is not None
    server = runner.server
    assert isinstance(server, FastServer)
    return server


def is_on_fast_path(client: Client, conn: RawConnection) -> bool:
    """The gateway's end of `conn` is a FastConnection still (never handed to aiohttp)."""
    # FastConnection keeps its transport private; its peer address is how to tell which
    # connection is ours.
    return any(fast._transport is not None
               and fast._transport.get_extra_info("peername") == conn.local_address
               for fast in fast_server(client).fast_connections)


def is_in_flight(client: Client) -> Callable[[], bool]:
    """A predicate: some fast connection has a request it is answering."""
    return lambda: any(fast.busy for fast in fast_server(client).fast_connections)


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait (up to WAIT) until `predicate()` holds."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT}s: {what}")
        await asyncio.sleep(0.005)


def received(echo: dict[str, Any], name: str) -> list[str]:
    """Values of header `name` as the upstream received it (`_` and `-` alike)."""
    wanted = name.lower().replace("_", "-")
    return [v for k, v in echo["headers"] if k.lower().replace("_", "-") == wanted]


@pytest.fixture
async def client(make_gateway: GatewayFactory) -> Client:
    return await make_gateway()


class HandlerOnlyServer(GatewayTestServer):
    """The same gateway (same config, same upstream pool) served by aiohttp's handler
    alone: a reference that differs from `make_gateway`'s in nothing but the fast path."""

    async def _make_runner(self, **_test_options: Any) -> web.ServerRunner:
        await self.gateway.start()
        options: dict[str, Any] = {**self.gateway.server_options()}
        return web.ServerRunner(web.Server(self.gateway.handle, **options),
                                shutdown_timeout=5.0)


@pytest.fixture
async def without_fast_path(aiohttp_client: Any, make_config: ConfigFactory,
                            clock: FakeClock) -> Client:
    server = HandlerOnlyServer(create_gateway(make_config(upstream_client="fast"), clock=clock))
    reference: Client = await aiohttp_client(server)
    return reference


@pytest.fixture
async def token(client: Client) -> str:
    return await login(client)


# -- what the fast path serves ---------------------------------------------------------------

async def test_keepalive_get_is_served_by_the_fast_path_with_the_tokens_identity(
        client: Client, token: str) -> None:
    """A proxied GET stays on the fast path; upstream sees the token's X-Auth-UserId only."""
    async with connect(client) as conn:
        for target in ("/api/one?x=1", "/api/two"):
            spoof = [("X-Auth-UserId", "admin"), ("x_auth_userid", "root")]
            await conn.send(request("GET", target, [*spoof, *auth(token)]))
            answer = await conn.read_answer()
            assert answer.status == 200, answer.body
            assert is_on_fast_path(client, conn)
            assert "close" not in answer.headers.get("Connection", "").lower()
            echo = answer.json()
            assert (echo["method"], echo["path_qs"]) == ("GET", target)
            assert received(echo, "X-Auth-UserId") == ["marco"]


# -- hand-over to aiohttp's handler ----------------------------------------------------------

async def test_hand_over_to_aiohttp_mid_connection_keeps_the_connection_working(
        client: Client, token: str) -> None:
    """GET (fast), POST with a body (handed over), GET: all answered, in order, on one
    connection, which no longer counts as a fast connection after the POST."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/api/first", auth(token)))
        first = (await conn.read_answer()).json()
        assert first["path_qs"] == "/api/first"
        assert is_on_fast_path(client, conn)

        payload = b'{"n": 2}'
        await conn.send(request("POST", "/api/second",
                                [*auth(token), ("Content-Type", "application/json")], payload))
        second = (await conn.read_answer()).json()
        assert (second["method"], second["path_qs"], second["body"]) == (
            "POST", "/api/second", payload.decode())
        assert not is_on_fast_path(client, conn)

        await conn.send(request("GET", "/api/third", auth(token)))
        third = (await conn.read_answer()).json()
        assert (third["method"], third["path_qs"]) == ("GET", "/api/third")
        assert received(third, "X-Auth-UserId") == ["marco"]


async def test_login_then_proxied_get_on_one_connection(client: Client) -> None:
    """/user/login (handed over) then a proxied GET with its token, on the same connection."""
    async with connect(client) as conn:
        credentials = json.dumps({"username": "alice", "password": PASSWORD}).encode()
        await conn.send(request("POST", "/user/login",
                                [("Content-Type", "application/json")], credentials))
        login_answer = await conn.read_answer()
        assert login_answer.status == 200, login_answer.body
        token = login_answer.json()["token"]

        await conn.send(request("GET", "/api/me", auth(token)))
        echo = (await conn.read_answer()).json()
        assert echo["path_qs"] == "/api/me"
        assert received(echo, "X-Auth-UserId") == ["alice"]


PIPELINES = {
    "get-get": [("GET", "/public/a", None), ("GET", "/public/b", None)],
    "get-post": [("GET", "/public/a", None), ("POST", "/public/b", b'{"n": 1}')],
    "post-get": [("POST", "/public/a", b"xyz"), ("GET", "/public/b", None)],
    "get-delete-options": [("GET", "/public/a", None), ("DELETE", "/public/b", None),
                           ("OPTIONS", "/public/c", None)],
}


@pytest.mark.parametrize("pipeline", PIPELINES.values(), ids=PIPELINES.keys())
async def test_pipelined_requests_in_one_send_are_answered_in_order(
        client: Client, pipeline: list[tuple[str, str, bytes | None]]) -> None:
    """Requests written in one send each get their answer, in the order sent."""
    async with connect(client) as conn:
        await conn.send(b"".join(request(m, t, body=b) for m, t, b in pipeline))
        for method, target, body in pipeline:
            echo = (await conn.read_answer()).json()
            assert (echo["method"], echo["path_qs"], echo["body"]) == (
                method, target, (body or b"").decode())


async def test_pipelined_fast_answer_waits_for_the_slow_one_before_it(
        client: Client, token: str) -> None:
    """A quick request pipelined behind a slow one is answered after it (order kept)."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/slow?seconds=0.2", auth(token))
                        + request("GET", "/public/quick"))
        assert (await conn.read_answer()).json() == {"slow": True}
        assert (await conn.read_answer()).json()["path_qs"] == "/public/quick"


async def test_pipelined_bytes_beyond_the_pending_limit_are_all_answered(
        client: Client) -> None:
    """More pipelined bytes than MAX_PENDING (reading pauses, then resumes): every request
    is answered, in order."""
    padding = [("X-Pad", "p" * 200)]
    count = MAX_PENDING // len(request("GET", "/public/000", padding)) + 50
    async with connect(client) as conn:
        await conn.send(b"".join(request("GET", f"/public/{n:03}", padding)
                                 for n in range(count)))
        for n in range(count):
            assert (await conn.read_answer()).json()["path_qs"] == f"/public/{n:03}"


async def test_http10_get_is_answered_by_aiohttp_and_closed(client: Client) -> None:
    """HTTP/1.0 is not the fast path's: aiohttp answers it and closes the connection."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/old", version="HTTP/1.0"))
        answer = await conn.read_answer()
        assert answer.status == 200, answer.body
        assert not is_on_fast_path(client, conn)
        assert answer.json()["path_qs"] == "/public/old"
        assert await conn.read_until_closed() == b""


# -- differential: the fast path answers odd requests as aiohttp does ------------------------

def _raw_head(*lines: str, end: str = "\r\n") -> bytes:
    return ("".join(line + end for line in lines) + end).encode("latin-1")


_MANY_SMALL_HEADERS = [f"X-Filler-{i}: {'v' * 80}" for i in range(100)]  # > MAX_HEAD in all
ODD_REQUESTS = {
    "request-line-no-version": b"GET /public/x\r\nHost: a\r\n\r\n",
    "request-line-extra-token": b"GET /public/x HTTP/1.1 extra\r\nHost: a\r\n\r\n",
    "request-line-bad-version": b"GET /public/x HTTP/1.x\r\nHost: a\r\n\r\n",
    "unknown-method": b"FROB /public/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "lowercase-method": b"get /public/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare-lf": _raw_head("GET /public/x HTTP/1.1", "Host: a", end="\n"),
    "bare-lf-request-line-only": b"GET /public/x HTTP/1.1\nHost: a\r\n\r\n",
    "bare-lf-then-crlf-end": b"GET /public/x HTTP/1.1\r\nHost: a\n\r\n",
    "duplicate-host": _raw_head("GET /public/x HTTP/1.1", "Host: a", "Host: b"),
    "duplicate-user-agent": _raw_head("GET /public/x HTTP/1.1", "Host: a", "User-Agent: a",
                                      "User-Agent: b"),
    "one-header-over-max-head": _raw_head("GET /public/x HTTP/1.1", "Host: a",
                                          "X-Big: " + "a" * (MAX_HEAD + 100)),
    "head-over-max-head-in-small-headers": _raw_head("GET /public/x HTTP/1.1", "Host: a",
                                                     *_MANY_SMALL_HEADERS),
    "absolute-form": _raw_head("GET http://gateway.test/public/x HTTP/1.1", "Host: a"),
    "asterisk-form": _raw_head("OPTIONS * HTTP/1.1", "Host: a"),
    "space-before-colon": _raw_head("GET /public/x HTTP/1.1", "Host: a", "X-Test : v"),
    "obs-fold": _raw_head("GET /public/x HTTP/1.1", "Host: a", "X-Test: a", "  folded"),
    "nul-in-value": _raw_head("GET /public/x HTTP/1.1", "Host: a", "X-Test: a\x00b"),
    "cr-in-value": _raw_head("GET /public/x HTTP/1.1", "Host: a", "X-Test: a\rb"),
    "bad-char-in-name": _raw_head("GET /public/x HTTP/1.1", "Host: a", "X(Test): v"),
    "non-ascii-target": _raw_head("GET /public/\xe9 HTTP/1.1", "Host: a"),
    "no-host": _raw_head("GET /public/x HTTP/1.1"),
    "empty-host": _raw_head("GET /public/x HTTP/1.1", "Host:"),
    "empty-header-name": _raw_head("GET /public/x HTTP/1.1", "Host: a", ": v"),
    "target-without-slash": _raw_head("GET public/x HTTP/1.1", "Host: a"),
    "tab-in-target": _raw_head("GET /public/a\tb HTTP/1.1", "Host: a"),
    "lowercase-version": _raw_head("GET /public/x http/1.1", "Host: a"),
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "leading-empty-line": b"\r\n" + _raw_head("GET /public/x HTTP/1.1", "Host: a"),
    "content-length-and-transfer-encoding": _raw_head(
        "POST /public/x HTTP/1.1", "Host: a", "Content-Length: 3",
        "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    "get-with-connection-upgrade-no-upgrade": _raw_head("GET /public/x HTTP/1.1", "Host: a",
                                                        "Connection: upgrade"),
}


async def first_status_line(client: Client, raw: bytes) -> str:
    async with connect(client) as conn:
        await conn.send(raw)
        return await conn.read_status_line()


@pytest.mark.parametrize("raw", ODD_REQUESTS.values(), ids=ODD_REQUESTS.keys())
async def test_odd_request_gets_the_status_line_aiohttp_gives(
        make_gateway: GatewayFactory, make_config: ConfigFactory, raw: bytes) -> None:
    """Whatever the fast path does with an odd request, the client sees aiohttp's status."""
    fast = await make_gateway(make_config(upstream_client="fast"))
    reference = await make_gateway(make_config(upstream_client="aiohttp"))
    assert await first_status_line(fast, raw) == await first_status_line(reference, raw)


UNUSUAL_BUT_SERVED = {
    "query": ("/public/x?a=1&a=2&b=%20", []),
    "percent-encoded-path": ("/public/a%20b%C3%A9", []),
    "fragment": ("/public/x#frag", []),
    "repeated-header": ("/public/x", [("X-Test", "one"), ("X-Test", "two")]),
    "trailing-whitespace-in-value": ("/public/x", [("X-Test", "value  ")]),
    "obs-text-in-value": ("/public/x", [("X-Test", "caf\xe9")]),
    "empty-value": ("/public/x", [("X-Test", "")]),
    "mixed-case-name": ("/public/x", [("x-TeSt", "v")]),
}


async def what_upstream_got(client: Client, target: str, headers: Headers
                            ) -> tuple[int, Any]:
    async with connect(client) as conn:
        await conn.send(request("GET", target, headers))
        answer = await conn.read_answer()
    if answer.status != 200:
        return answer.status, answer.body
    echo = answer.json()
    return 200, (echo["method"], echo["path_qs"], received(echo, "X-Test"))


@pytest.mark.parametrize(("target", "headers"), UNUSUAL_BUT_SERVED.values(),
                         ids=UNUSUAL_BUT_SERVED.keys())
async def test_upstream_receives_what_it_would_without_the_fast_path(
        client: Client, without_fast_path: Client, target: str, headers: Headers) -> None:
    """For unusual requests the fast path serves, the upstream gets the same target and
    header values as through aiohttp's handler (same upstream pool: `upstream_client:
    aiohttp` would also change the upstream client, which re-encodes header values)."""
    assert await what_upstream_got(client, target, headers) == await what_upstream_got(
        without_fast_path, target, headers)


async def test_request_with_more_fields_than_aiohttp_accepts_is_not_forwarded(
        aiohttp_server: Any, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """aiohttp's handler refuses a head of more than 128 fields with 400; the fast path
    does not forward such a request either (checked with an upstream that would take it)."""
    lenient = await aiohttp_server(create_echo_app(), max_headers=1000)
    upstream = str(lenient.make_url("")).rstrip("/")
    client = await make_gateway(parse_config(base_config_data(upstream, tmp_path), {},
                                             tmp_path))
    fields = [(f"X-Field-{i}", "v") for i in range(130)]
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/x", fields))
        answer = await conn.read_answer()
    assert answer.status == 400, answer.body[:100]


# -- closing ---------------------------------------------------------------------------------

async def test_connection_close_is_answered_with_close_and_the_socket_closes(
        client: Client) -> None:
    """`Connection: close`: the answer says so, nothing pipelined after it is answered,
    and the gateway closes the connection."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/last", [("Connection", "close")])
                        + request("GET", "/public/ignored"))
        answer = await conn.read_answer()
        assert answer.status == 200
        assert answer.json()["path_qs"] == "/public/last"
        assert answer.headers["Connection"].lower() == "close"
        assert await conn.read_until_closed() == b""


@pytest.mark.parametrize("target", ["/public/x", "/slow?seconds=0.1"],
                         ids=["immediate", "in-flight-at-eof"])
async def test_half_closed_client_still_gets_the_whole_answer(
        client: Client, token: str, target: str) -> None:
    """A client that shuts its write side after the request still reads the full answer."""
    async with connect(client) as conn:
        await conn.send(request("GET", target, auth(token)))
        conn.shut_write()
        answer = await conn.read_answer()
        assert answer.status == 200, answer.body
        assert answer.json()  # a whole JSON body
        assert await conn.read_until_closed() == b""


async def test_half_closed_pipelining_client_gets_whole_answers_then_close(
        client: Client) -> None:
    """Pipelined requests then FIN: the answers sent are whole and in order, the last one
    says `Connection: close` (RFC 9112 §9.6: the client then knows what went unanswered)."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/a") + request("GET", "/public/b"))
        conn.shut_write()
        answers = [await conn.read_answer()]
        while "close" not in answers[-1].headers.get("Connection", "").lower():
            answers.append(await conn.read_answer())
        assert [a.json()["path_qs"] for a in answers] == ["/public/a", "/public/b"][
            :len(answers)]
        assert await conn.read_until_closed() == b""


KEEPALIVE = 0.3


@pytest.fixture
async def short_keepalive(make_gateway: GatewayFactory, make_config: ConfigFactory) -> Client:
    listen = {"host": "127.0.0.1", "port": 0, "keepalive_timeout": KEEPALIVE}
    return await make_gateway(make_config(listen=listen))


async def seconds_until_closed(conn: RawConnection) -> float:
    started = time.monotonic()
    await conn.read_until_closed()
    return time.monotonic() - started


async def test_idle_fast_connection_closes_after_keepalive_timeout(
        short_keepalive: Client) -> None:
    """An idle keep-alive connection is closed listen.keepalive_timeout after its answer."""
    async with connect(short_keepalive) as conn:
        await conn.send(request("GET", "/public/x"))
        assert (await conn.read_answer()).status == 200
        assert is_on_fast_path(short_keepalive, conn)
        assert KEEPALIVE * 0.8 <= await seconds_until_closed(conn) < KEEPALIVE + 1.0


async def test_half_a_head_is_closed_after_keepalive_timeout(short_keepalive: Client) -> None:
    """A connection that never completes its request head is closed after the timeout."""
    async with connect(short_keepalive) as conn:
        await conn.send(b"GET /public/x HTTP/1.1\r\nHost: gateway.test\r\n")
        assert KEEPALIVE * 0.8 <= await seconds_until_closed(conn) < KEEPALIVE + 1.0


async def test_requests_within_the_timeout_keep_the_connection_open(
        short_keepalive: Client) -> None:
    """Each answer restarts the idle clock: gaps shorter than the timeout never close it."""
    async with connect(short_keepalive) as conn:
        for n in range(3):
            await conn.send(request("GET", f"/public/{n}"))
            assert (await conn.read_answer()).json()["path_qs"] == f"/public/{n}"
            await asyncio.sleep(KEEPALIVE * 0.6)


async def test_client_vanishing_mid_request_is_counted_499_and_harms_nothing(
        client: Client, token: str) -> None:
    """A client reset while its request waits on the upstream: counted as 499, and the
    next request (on a new connection) is served."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/slow?seconds=0.5", auth(token)))
        await eventually(is_in_flight(client), "the request is in flight")
        conn.reset()
    counted = services_of(client).metrics.requests
    await eventually(lambda: counted[499] == 1, "a 499 is counted")
    async with connect(client) as conn:
        await conn.send(request("GET", "/api/after", auth(token)))
        assert (await conn.read_answer()).json()["path_qs"] == "/api/after"
    assert counted[499] == 1


# -- bodies ----------------------------------------------------------------------------------

async def test_streamed_upstream_answer_arrives_whole_and_framed(
        client: Client, token: str) -> None:
    """A chunked, slowly streamed upstream answer reaches the client complete, framed so
    the next answer on the connection still parses."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/stream?chunks=5&pause=0.01", auth(token)))
        answer = await conn.read_answer()
        assert answer.status == 200
        assert ("chunked" in answer.headers.get("Transfer-Encoding", "")
                or "Content-Length" in answer.headers)
        assert answer.body == b"".join(b"chunk-%d\n" % i for i in range(5))
        await conn.send(request("GET", "/public/next"))
        assert (await conn.read_answer()).json()["path_qs"] == "/public/next"


async def test_upstream_dying_mid_body_cuts_the_client_connection(
        client: Client, token: str) -> None:
    """An upstream that breaks off mid-body: the client never gets a complete message."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/die-mid-body", auth(token)))
        status_line, headers = await conn.read_head()
        rest = await conn.read_until_closed()
    assert status_line.startswith("HTTP/1.1 200")
    if "chunked" in headers.get("Transfer-Encoding", ""):
        assert not rest.endswith(b"0\r\n\r\n")
    else:
        assert len(rest) < int(headers["Content-Length"])
    assert services_of(client).metrics.upstream_errors["mid_body"] == 1


async def test_head_answer_has_no_body_and_keeps_the_upstream_length(
        client: Client, token: str) -> None:
    """HEAD: the upstream's Content-Length passes, no body follows (the next answer,
    pipelined, starts right after the head)."""
    async with connect(client) as conn:
        await conn.send(request("HEAD", "/status/200", auth(token))
                        + request("GET", "/status/200", auth(token)))
        head = await conn.read_answer(method="HEAD")
        get = await conn.read_answer()
        assert is_on_fast_path(client, conn)
    assert head.status == 200
    assert get.body == b"status 200"
    assert head.headers["Content-Length"] == str(len(get.body))


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_status_is_relayed_without_body_or_length(
        client: Client, token: str, status: int) -> None:
    """204 and 304 carry no body and no framing header; the next answer still parses."""
    async with connect(client) as conn:
        await conn.send(request("GET", f"/status/{status}", auth(token))
                        + request("GET", "/public/after"))
        answer = await conn.read_answer()
        assert answer.status == status
        assert "Transfer-Encoding" not in answer.headers
        assert answer.headers.get("Content-Length", "0") == "0"
        assert (await conn.read_answer()).json()["path_qs"] == "/public/after"


async def test_head_error_answer_has_no_body(client: Client) -> None:
    """A 401 to HEAD carries no body: the pipelined request after it parses cleanly."""
    async with connect(client) as conn:
        await conn.send(request("HEAD", "/api/x") + request("GET", "/public/after"))
        head = await conn.read_answer(method="HEAD")
        assert head.status == 401
        assert is_on_fast_path(client, conn)
        after = await conn.read_answer()
        assert after.json()["path_qs"] == "/public/after"


# -- errors ----------------------------------------------------------------------------------

CHALLENGES = {
    "no-token": ([], "missing_token", 'Bearer realm="gateway"'),
    "bad-token": ([("Authorization", "Bearer garbage")], "invalid_token",
                  'Bearer realm="gateway", error="invalid_token"'),
}


@pytest.mark.parametrize(("headers", "code", "challenge"), CHALLENGES.values(),
                         ids=CHALLENGES.keys())
async def test_fast_path_401_has_the_gateways_error_format(
        client: Client, headers: Headers, code: str, challenge: str) -> None:
    """A 401 from the fast path: JSON {error, message}, WWW-Authenticate, the client's
    X-Request-Id, Server: gateway and a current Date."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/api/x", [*headers, ("X-Request-Id", "req-0123456789")]))
        answer = await conn.read_answer()
        assert is_on_fast_path(client, conn)
    assert answer.status == 401
    body = answer.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) == {"error", "message"}
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.headers.getall("WWW-Authenticate") == [challenge]
    assert answer.headers.getall("X-Request-Id") == ["req-0123456789"]
    assert answer.headers.getall("Server") == ["gateway"]
    date = email.utils.parsedate_to_datetime(answer.headers["Date"])
    assert abs(datetime.now(UTC) - date) < timedelta(minutes=1)


async def test_fast_path_401_matches_aiohttps_headers_and_body(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """The fast path's 401 has the same header names and body as aiohttp's handler's."""

    async def unauthorised(client: Client) -> tuple[set[str], bytes]:
        async with connect(client) as conn:
            await conn.send(request("GET", "/api/x"))
            answer = await conn.read_answer()
        return {name.lower() for name in answer.headers}, answer.body

    fast = await make_gateway(make_config(upstream_client="fast"))
    reference = await make_gateway(make_config(upstream_client="aiohttp"))
    assert await unauthorised(fast) == await unauthorised(reference)


# -- shutdown --------------------------------------------------------------------------------

async def test_graceful_shutdown_finishes_the_request_in_flight(
        client: Client, token: str) -> None:
    """On shutdown an idle connection closes at once; one waiting on the upstream gets its
    whole answer (marked Connection: close), then closes."""
    async with connect(client) as busy, connect(client) as idle:
        await idle.send(request("GET", "/public/x"))
        assert (await idle.read_answer()).status == 200
        await busy.send(request("GET", "/slow?seconds=0.3", auth(token)))
        await eventually(is_in_flight(client), "the slow request is in flight")
        closing = asyncio.create_task(client.server.close())
        assert await idle.read_until_closed() == b""
        assert not closing.done()
        answer = await busy.read_answer()
        assert answer.status == 200
        assert answer.json() == {"slow": True}
        assert answer.headers["Connection"].lower() == "close"
        assert await busy.read_until_closed() == b""
        async with asyncio.timeout(WAIT):
            await closing
