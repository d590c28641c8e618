"""Attacks on the fast path (gateway/fastpath.py) over real loopback sockets: requests and
answers a strict gateway must handle exactly as aiohttp's handler does, and resources a
client must not be able to pile up."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.config import parse_config
from tests.conftest import ConfigFactory, GatewayFactory, base_config_data
from tests.test_fastpath import (
    NO_ANSWER,
    Client,
    connect,
    fast_server,
    first_status_line,
    is_on_fast_path,
    request,
)

WAIT = 2.0


@pytest.fixture
async def client(make_gateway: GatewayFactory) -> Client:
    return await make_gateway()


async def gateway_before(make_gateway: GatewayFactory, tmp_path: Path,
                         upstream: str) -> Client:
    """A gateway (fast path on) whose every route goes to `upstream`."""
    return await make_gateway(parse_config(base_config_data(upstream, tmp_path), {},
                                           tmp_path))


@pytest.fixture
async def canned_upstream() -> AsyncIterator[Any]:
    """Start a raw upstream that answers every request with the given bytes."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


# -- requests the fast path must not choke on ------------------------------------------------

async def test_connect_request_gets_aiohttps_answer_not_a_dropped_connection(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """CONNECT (llhttp reports it as a protocol switch) is handed to aiohttp, which answers
    400, instead of killing the connection without a word."""
    raw = b"CONNECT gateway.test:443 HTTP/1.1\r\nHost: gateway.test:443\r\n\r\n"
    fast = await make_gateway(make_config(upstream_client="fast"))
    reference = await make_gateway(make_config(upstream_client="aiohttp"))
    expected = await first_status_line(reference, raw)
    assert expected.startswith("HTTP/1.1 400")
    assert await first_status_line(fast, raw) == expected


async def test_trailing_whitespace_is_not_part_of_a_header_value(client: Client) -> None:
    """RFC 9112 §5: OWS after a field value is not part of it (as on aiohttp's path): a Host
    or X-Request-Id with trailing blanks is the same value without them."""
    headers = [("X-Request-Id", "req-0123456789 \t")]
    raw = request("GET", "/public/x", headers).replace(b"Host: gateway.test",
                                                       b"Host: gateway.test \t")
    async with connect(client) as conn:
        await conn.send(raw)
        answer = await conn.read_answer()
    assert answer.status == 200, answer.body
    assert answer.headers.getall("X-Request-Id") == ["req-0123456789"]
    forwarded = [v for k, v in answer.json()["headers"] if k.lower() == "x-forwarded-host"]
    assert forwarded == ["gateway.test"]


# -- answers ---------------------------------------------------------------------------------

async def test_upstreams_x_request_id_is_replaced_by_the_gateways(
        make_gateway: GatewayFactory, tmp_path: Path, canned_upstream: Any) -> None:
    """The client gets one X-Request-Id, the gateway's (as on aiohttp's path), never a
    second one chosen by the upstream."""
    upstream = await canned_upstream(b"HTTP/1.1 200 OK\r\nX-Request-Id: upstream-chosen-id\r\n"
                                     b"Content-Length: 2\r\n\r\nok")
    client = await gateway_before(make_gateway, tmp_path, upstream)
    for method in ("GET", "HEAD"):
        async with connect(client) as conn:
            await conn.send(request(method, "/public/x", [("X-Request-Id", "req-0123456789")]))
            answer = await conn.read_answer(method)
        assert answer.status == 200
        assert answer.headers.getall("X-Request-Id") == ["req-0123456789"]


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Odd", b"HTTP/1.1 000 Zero",
                                         b"HTTP/1.1 600 Odd", b"HTTP/1.1 999 Odd"],
                         ids=["099", "000", "600", "999"])
@pytest.mark.parametrize("upstream_client", ["fast", "aiohttp"])
async def test_upstream_status_outside_100_to_599_is_a_502(
        make_gateway: GatewayFactory, tmp_path: Path, canned_upstream: Any,
        status_line: bytes, upstream_client: str) -> None:
    """RFC 9110 §15: valid status codes are 100..599; anything else (which would reach the
    client as a malformed status line such as `HTTP/1.1 99`) is a bad upstream: 502, with
    either upstream client."""
    upstream = await canned_upstream(status_line + b"\r\nContent-Length: 2\r\n\r\nok")
    client = await make_gateway(parse_config(
        base_config_data(upstream, tmp_path, upstream_client=upstream_client), {}, tmp_path))
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/x"))
        answer = await conn.read_answer()
    assert answer.status == 502
    assert answer.json()["error"] == "bad_gateway"


# -- resources -------------------------------------------------------------------------------

async def test_handing_over_an_idle_connection_ends_its_serving_task(client: Client) -> None:
    """GET (fast path), then, once idle, a POST (handed to aiohttp): the fast path's
    serving task ends; it does not wait forever, one leaked task per such connection."""
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/a"))
        assert (await conn.read_answer()).status == 200
        [fast] = [c for c in fast_server(client).fast_connections if c.task is not None]
        task = fast.task
        assert task is not None
        await conn.send(request("POST", "/public/b", body=b"x"))
        assert (await conn.read_answer()).status == 200
        assert not is_on_fast_path(client, conn)
        async with asyncio.timeout(WAIT):
            await asyncio.wait([task])
        assert task.done()


async def test_client_that_never_reads_cannot_make_the_gateway_buffer_answers(
        make_gateway: GatewayFactory, tmp_path: Path, aiohttp_server: Any) -> None:
    """Pipelined requests from a client that reads nothing: the gateway stops answering once
    the client's socket is full instead of queueing every answer in memory (a few bytes of
    request for 32 KiB of answer, without end)."""
    answer = b"x" * 32768

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", big)
    upstream = await aiohttp_server(app)
    client = await gateway_before(make_gateway, tmp_path,
                                  str(upstream.make_url("")).rstrip("/"))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", client.port))
    _, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"".join(request("GET", f"/public/{n}") for n in range(2000)))
        limit = 1024 * 1024  # the transport's high-water mark (64 KiB) plus an answer or two
        peak = 0
        for _ in range(50):
            await asyncio.sleep(0.02)
            for fast in fast_server(client).fast_connections:
                if fast._transport is not None:
                    peak = max(peak, fast._transport.get_write_buffer_size())
            if peak > limit:
                break
        assert peak <= limit, f"{peak} bytes of answers queued for a client that reads nothing"
    finally:
        writer.transport.abort()


# -- properties that hold (regression) -------------------------------------------------------

async def test_request_inside_a_get_body_is_never_a_second_request(client: Client) -> None:
    """A GET whose Content-Length body holds a whole request (with a spoofed identity, to a
    route that requires a token): one request reaches the upstream, carrying those bytes as
    its body; the client gets exactly one answer."""
    inner = (b"GET /api/admin HTTP/1.1\r\nHost: gateway.test\r\n"
             b"X-Auth-UserId: admin\r\n\r\n")
    async with connect(client) as conn:
        await conn.send(request("GET", "/public/x", body=inner))
        answer = await conn.read_answer()
        assert answer.status == 200, answer.body
        echo = answer.json()
        assert (echo["method"], echo["path_qs"]) == ("GET", "/public/x")
        assert echo["body"].encode() == inner
        assert not any(k.lower() == "x-auth-userid" for k, _ in echo["headers"])
        assert await conn.read_status_line() == NO_ANSWER


async def test_head_arriving_in_pieces_at_every_line_end_is_one_request(
        client: Client) -> None:
    """A head sent a few bytes at a time, split inside and between its CRLFs, is served as
    the one request it is, on the fast path, with every field."""
    raw = request("GET", "/public/x?a=1", [("X-Test", "one"), ("X-Other", "two")])
    pieces = [piece for piece in re.split(rb"(\r|\n)", raw) if piece]
    async with connect(client) as conn:
        for piece in pieces:
            await conn.send(piece)
            await asyncio.sleep(0.002)
        answer = await conn.read_answer()
        assert is_on_fast_path(client, conn)
    echo = answer.json()
    assert echo["path_qs"] == "/public/x?a=1"
    assert [(k, v) for k, v in echo["headers"] if k.startswith("X-Test") or
            k.startswith("X-Other")] == [("X-Test", "one"), ("X-Other", "two")]
