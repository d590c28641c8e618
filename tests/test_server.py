"""The gateway's server (gateway/server.py): a client that stops reading its answer is cut
off after `limits.client_timeout` on every serving path, one that reads slowly is not; a
request aiohttp's parser refuses gets the gateway's JSON error, never its own bytes back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.config import parse_config
from gateway.middleware import SERVER_NAME
from tests.conftest import GatewayFactory, base_config_data, login, wait_until

CLIENT_TIMEOUT = 0.5
CHUNK = b"x" * 65536
STREAMED_CHUNKS = 1024  # 64 MiB: far more than the socket buffers on both sides hold


class BigAnswers:
    """An upstream that streams a large answer and records when the gateway hangs up."""

    def __init__(self) -> None:
        self.hung_up = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/big/{chunks}", self.big)
        return app

    async def big(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        chunks = int(request.match_info["chunks"])
        response = web.StreamResponse()
        response.content_length = chunks * len(CHUNK)
        await response.prepare(request)
        try:
            for _ in range(chunks):
                await response.write(CHUNK)
        except (ConnectionError, asyncio.CancelledError):
            self.hung_up += 1  # aiohttp cancels a handler whose connection was lost
            raise
        return response


Start = Callable[[str], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def big_answers() -> BigAnswers:
    return BigAnswers()


@pytest.fixture
def start_gateway(make_gateway: GatewayFactory, aiohttp_server: Any, tmp_path: Path,
                  big_answers: BigAnswers) -> Start:
    async def start(upstream_client: str) -> TestClient[Any, Any]:
        upstream: TestServer = await aiohttp_server(big_answers.app())
        data = base_config_data(str(upstream.make_url("")).rstrip("/"), tmp_path,
                                upstream_client=upstream_client,
                                limits={"max_body": "64KiB",
                                        "client_timeout": f"{CLIENT_TIMEOUT}s"},
                                upstream_timeouts={"connect": "2s", "read": "30s"})
        return await make_gateway(parse_config(data, {}, tmp_path))

    return start


async def send_and_never_read(client: TestClient[Any, Any], head: bytes
                              ) -> asyncio.StreamWriter:
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head)
    await writer.drain()
    return writer


def request_head(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n"
            f"Authorization: Bearer {token}\r\n{length}\r\n").encode() + body


@pytest.mark.parametrize(("upstream_client", "method", "body"), [
    ("fast", "GET", b""),            # the fast path
    ("fast", "POST", b"payload"),    # aiohttp's handler with the upstream pool
    ("aiohttp", "GET", b""),         # aiohttp's handler with aiohttp's client
])
async def test_client_that_never_reads_is_cut_off_and_the_upstream_released(
        start_gateway: Start, big_answers: BigAnswers, upstream_client: str, method: str,
        body: bytes) -> None:
    client = await start_gateway(upstream_client)
    token = await login(client)
    writer = await send_and_never_read(
        client, request_head(method, f"/big/{STREAMED_CHUNKS}", token, body))
    try:
        # the buffers fill at once; the stall then lasts CLIENT_TIMEOUT, and the gateway
        # closing its upstream connection makes the upstream's next write fail
        await wait_until(lambda: big_answers.hung_up == 1, within=CLIENT_TIMEOUT + 10,
                         what="the gateway hangs up on a client that reads nothing")
    finally:
        writer.close()


async def test_client_reading_slowly_gets_the_whole_answer_past_the_timeout(
        start_gateway: Start, big_answers: BigAnswers) -> None:
    client = await start_gateway("fast")
    token = await login(client)
    chunks = 256  # 16 MiB, read 256 KiB every 20 ms: about 1.3 s, past the 0.5 s timeout
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(request_head("GET", f"/big/{chunks}", token))
    started = asyncio.get_running_loop().time()
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        received = 0
        while received < chunks * len(CHUNK):
            piece = await asyncio.wait_for(reader.read(262144), timeout=5)
            assert piece, f"the connection closed after {received} bytes"
            received += len(piece)
            await asyncio.sleep(0.02)
    finally:
        writer.close()
    assert received == chunks * len(CHUNK)
    assert asyncio.get_running_loop().time() - started > CLIENT_TIMEOUT
    assert big_answers.hung_up == 0


@pytest.mark.parametrize("upstream_client", ["fast", "aiohttp"])
@pytest.mark.parametrize("bad_line", [
    b"Authorization: Bearer SECRET-TOKEN-VALUE\x01",  # a control byte in a value
    b"Bad Name: SECRET-TOKEN-VALUE",                 # a space in a field name
])
async def test_request_the_parser_refuses_gets_a_json_400_that_quotes_nothing(
        start_gateway: Start, upstream_client: str, bad_line: bytes) -> None:
    client = await start_gateway(upstream_client)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(b"GET /x HTTP/1.1\r\nHost: gateway.test\r\n" + bad_line + b"\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # closed after it
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"400", answer  # HTTP/1.0: the version is unknown
    assert f"Server: {SERVER_NAME}".encode() in head.split(b"\r\n")
    assert b"aiohttp" not in head
    assert b"Content-Type: application/json" in head
    assert json.loads(body) == {"error": "bad_request",
                                "message": "The request is not valid HTTP/1.1."}
    assert b"SECRET-TOKEN-VALUE" not in answer
