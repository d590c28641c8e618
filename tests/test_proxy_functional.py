"""Proxying over real sockets: what the upstream receives and what the client gets back
(DESIGN §5), against the bundled echo upstream and purpose-built broken upstreams."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from tests.conftest import ConfigFactory, GatewayFactory, bearer, login
from tests.fakes import FakeClock
from tests.rawhttp import dechunk

Client = TestClient[Any, Any]


@pytest.fixture(params=["fast", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    """Every proxy rule holds with both upstream clients."""
    value: str = request.param
    return value
RawUpstream = Callable[[bytes], Awaitable[str]]


async def send_raw(client: Client, target: str, headers: dict[str, str] | None = None
                   ) -> tuple[int, dict[str, Any]]:
    """Send `GET <target>` byte for byte (no client-side URL normalisation); return the
    status and the JSON body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    lines = [f"GET {target} HTTP/1.1", "Host: gateway.test", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, json.loads(body) if body else {}


async def echoed(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.status == 200, await response.text()
    data: dict[str, Any] = await response.json()
    return data


def received(echo: dict[str, Any], name: str) -> list[str]:
    """Values of header `name` as the upstream received it (case-insensitive)."""
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def names_received(echo: dict[str, Any]) -> set[str]:
    return {k.lower().replace("_", "-") for k, _ in echo["headers"]}


@pytest.fixture
async def token(gateway: Client) -> str:
    return await login(gateway)


SPOOFED_IDENTITY = [
    [("X-Auth-UserId", "admin")],
    [("x-auth-userid", "admin")],
    [("X_Auth_UserId", "admin")],
    [("X-AUTH_USERID", "admin")],
    [("X-Auth-UserId", "admin"), ("X-Auth-UserId", "root")],
    [("Connection", "X-Auth-UserId"), ("X-Auth-UserId", "admin")],
    [("Connection", "x_auth_userid, keep-alive"), ("x_auth_userid", "admin")],
]
SPOOF_IDS = ["canonical", "lowercase", "underscores", "mixed", "repeated",
             "named-in-connection", "connection-underscore"]


@pytest.mark.parametrize("spoof", SPOOFED_IDENTITY, ids=SPOOF_IDS)
async def test_identity_header_reaches_upstream_exactly_once(
        gateway: Client, token: str, spoof: list[tuple[str, str]]) -> None:
    """Whatever identity headers the client sends, the upstream sees one, the token's."""
    headers = CIMultiDict([*spoof, ("Authorization", f"Bearer {token}")])
    echo = await echoed(await gateway.get("/api", headers=headers))
    identity = [(k, v) for k, v in echo["headers"]
                if k.lower().replace("_", "-") == "x-auth-userid"]
    assert identity == [("X-Auth-UserId", "marco")]


@pytest.mark.parametrize("spoof", SPOOFED_IDENTITY, ids=SPOOF_IDS)
@pytest.mark.parametrize("path", ["/public/x", "/maybe/x"], ids=["auth-none", "auth-optional"])
async def test_spoofed_identity_is_stripped_on_anonymous_routes(
        gateway: Client, spoof: list[tuple[str, str]], path: str) -> None:
    """On auth none/optional routes without a token, no identity header reaches upstream."""
    echo = await echoed(await gateway.get(path, headers=CIMultiDict(spoof)))
    assert "x-auth-userid" not in names_received(echo)


async def test_auth_none_never_injects_identity_even_with_a_token(gateway: Client,
                                                                  token: str) -> None:
    """auth: none forwards without identity, whatever token came."""
    echo = await echoed(await gateway.get("/public/x", headers=bearer(token)))
    assert "x-auth-userid" not in names_received(echo)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer garbage"}],
                         ids=["no-token", "bad-token"])
async def test_auth_optional_forwards_anonymous_without_a_valid_token(
        gateway: Client, headers: dict[str, str]) -> None:
    """auth: optional forwards anyway, with no identity, when no valid token came."""
    echo = await echoed(await gateway.get("/maybe/x", headers=headers))
    assert "x-auth-userid" not in names_received(echo)


async def test_auth_optional_injects_identity_for_a_valid_token(gateway: Client,
                                                                token: str) -> None:
    """auth: optional injects identity when a valid token came."""
    echo = await echoed(await gateway.get("/maybe/x", headers=bearer(token)))
    assert received(echo, "X-Auth-UserId") == ["marco"]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer"}, {"Authorization": "Bearer a.b.c"},
    {"Authorization": "Token abc"}, {"Authorization": "Bearer  a b"},
], ids=["none", "empty-bearer", "garbage", "other-scheme", "two-words"])
async def test_required_route_refuses_without_a_valid_token(gateway: Client,
                                                            headers: dict[str, str]) -> None:
    """auth: required answers 401 JSON with WWW-Authenticate and never reaches upstream."""
    response = await gateway.get("/api", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="gateway"')
    assert (await response.json())["error"] in ("missing_token", "invalid_token")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive(gateway: Client, token: str,
                                                 scheme: str) -> None:
    """The Bearer scheme matches case-insensitively (RFC 9110 §11.1)."""
    response = await gateway.get("/api", headers={"Authorization": f"{scheme} {token}"})
    assert response.status == 200


async def test_two_authorization_headers_are_refused(gateway: Client, token: str) -> None:
    """Exactly one Authorization header: two (even both valid) is 401."""
    headers = CIMultiDict([("Authorization", f"Bearer {token}"),
                           ("Authorization", f"Bearer {token}")])
    assert (await gateway.get("/api", headers=headers)).status == 401


async def test_authorization_is_not_forwarded_by_default(gateway: Client, token: str) -> None:
    """The client's Authorization header stays at the gateway unless the route says so."""
    echo = await echoed(await gateway.get("/api", headers=bearer(token)))
    assert "authorization" not in names_received(echo)
    echo = await echoed(await gateway.get("/fwd/x", headers=bearer(token)))
    assert received(echo, "Authorization") == [f"Bearer {token}"]


@pytest.mark.parametrize("hop", [
    ("Connection", "X-Secret", "X-Secret", "leak"),
    ("Connection", "x_secret", "X_Secret", "leak"),
    ("Keep-Alive", None, "Keep-Alive", "timeout=5"),
    ("TE", None, "TE", "trailers"),
    ("Trailer", None, "Trailer", "X-Foo"),
    ("Upgrade", None, "Upgrade", "h2c"),
    ("Proxy-Authorization", None, "Proxy-Authorization", "Basic eA=="),
    ("Proxy-Connection", None, "Proxy-Connection", "keep-alive"),
], ids=["named-in-connection", "named-underscore", "keep-alive", "te", "trailer",
        "upgrade-h2c", "proxy-authorization", "proxy-connection"])
async def test_hop_by_hop_request_headers_are_removed(gateway: Client, token: str,
                                                      hop: tuple[str, str | None, str, str]
                                                      ) -> None:
    """RFC 9110 §7.6.1: hop-by-hop headers and those named in Connection never go upstream."""
    first, first_value, name, value = hop
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), (name, value)])
    if first_value is not None:
        headers.add(first, first_value)
    echo = await echoed(await gateway.get("/api", headers=headers))
    assert name.lower().replace("_", "-") not in names_received(echo)


@pytest.mark.parametrize("spoof", [
    ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example"),
    ("X_Forwarded_Proto", "https"), ("Forwarded", "for=1.2.3.4;proto=https"),
    ("X-Real-IP", "1.2.3.4"), ("X-Original-URL", "/admin"), ("X-Rewrite-URL", "/admin"),
], ids=["xf-proto", "xf-host", "xf-proto-underscore", "forwarded", "x-real-ip",
        "x-original-url", "x-rewrite-url"])
async def test_forwarding_headers_are_set_by_the_gateway_only(gateway: Client, token: str,
                                                              spoof: tuple[str, str]) -> None:
    """X-Forwarded-Proto/Host are the gateway's; spoofable override headers are dropped."""
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), spoof])
    echo = await echoed(await gateway.get("/api", headers=headers))
    values = [v for k, v in echo["headers"]
              if k.lower().replace("_", "-") == spoof[0].lower().replace("_", "-")]
    assert spoof[1] not in values
    assert received(echo, "X-Forwarded-Proto") == ["http"]
    assert len(received(echo, "X-Forwarded-Host")) == 1


async def test_x_forwarded_for_gets_the_peer_appended(gateway: Client, token: str) -> None:
    """X-Forwarded-For keeps what came and appends the TCP peer."""
    headers = {**bearer(token), "X-Forwarded-For": "203.0.113.7"}
    echo = await echoed(await gateway.get("/api", headers=headers))
    assert received(echo, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    echo = await echoed(await gateway.get("/api", headers=bearer(token)))
    assert received(echo, "X-Forwarded-For") == ["127.0.0.1"]


async def test_via_is_added_both_ways(gateway: Client, token: str) -> None:
    """RFC 9110 §7.6.3: the gateway adds itself to Via in both directions."""
    response = await gateway.get("/api", headers=bearer(token))
    echo = await echoed(response)
    assert received(echo, "Via") == ["1.1 gateway"]
    assert response.headers["Via"] == "1.1 gateway"


@pytest.mark.parametrize(("raw", "expected"), [
    ("/a/./b/../c", "/a/c"), ("/a//b///c", "/a/b/c"), ("/a/%2e%2e/b", "/b"),
    ("/a/%2E/b", "/a/b"), ("/%61pi/x?q=/../y", "/api/x?q=/../y"), ("/x/", "/x/"),
], ids=["dots", "slashes", "encoded-dotdot", "encoded-dot", "unreserved-and-query",
        "trailing-slash"])
async def test_upstream_receives_the_normalised_path(gateway: Client, token: str, raw: str,
                                                     expected: str) -> None:
    """The path the route matched is the path the upstream receives."""
    status, echo = await send_raw(gateway, raw, bearer(token))
    assert status == 200
    assert echo["path_qs"] == expected


@pytest.mark.parametrize("raw", [
    "/public/..%2f..%2fsecret", "/public/%2e%2e/secret", "/public/../secret",
    "/public/./../secret", "/public//../secret", "/public/..;/secret", "/public%2f..%2fsecret",
    "/PUBLIC/../secret",
], ids=["encoded-slash", "encoded-dotdot", "dotdot", "dot-dotdot", "double-slash",
        "tomcat-semicolon", "encoded-slash-prefix", "uppercase"])
async def test_path_tricks_cannot_escape_a_public_prefix(gateway: Client, raw: str) -> None:
    """A path that leaves /public after normalisation is judged by its real route (401),
    and one that cannot be normalised safely is 400: never forwarded unauthenticated."""
    status, body = await send_raw(gateway, raw)
    assert status in (400, 401)
    assert body["error"] in ("unsafe_path", "missing_token")


@pytest.mark.parametrize("raw", ["/a%2fb", "/a%5cb", "/a%00b", "/a%0ab", "/a\\b", "/%252e%252e/"],
                         ids=["encoded-slash", "encoded-backslash", "nul", "newline",
                              "backslash", "double-encoded"])
async def test_unsafe_paths_are_400(gateway: Client, token: str, raw: str) -> None:
    """A path that cannot be normalised safely gets 400 unsafe_path."""
    status, body = await send_raw(gateway, raw, bearer(token))
    assert status == 400
    assert body["error"] == "unsafe_path"


@pytest.mark.parametrize(("path", "protected"), [
    ("/public", False), ("/public/", False), ("/public/x", False), ("/publicity", True),
    ("/public-x", True),
], ids=["exact", "slash", "below", "longer-word", "dash-suffix"])
async def test_prefixes_match_whole_segments(gateway: Client, path: str,
                                             protected: bool) -> None:
    """/public matches /public and /public/x, never /publicity."""
    response = await gateway.get(path)
    assert response.status == (401 if protected else 200)


async def test_strip_prefix_and_upstream_base_path(gateway: Client, token: str) -> None:
    """strip_prefix removes the route prefix; the upstream's base path is prepended."""
    echo = await echoed(await gateway.get("/strip/users/1?x=1", headers=bearer(token)))
    assert echo["path_qs"] == "/base/users/1?x=1"


async def test_request_body_streams_to_upstream_with_its_length(gateway: Client,
                                                                token: str) -> None:
    """A body with Content-Length arrives whole, with the gateway's own Content-Length."""
    body = b"x" * 50_000
    echo = await echoed(await gateway.post("/api", data=body, headers=bearer(token)))
    assert echo["body_length"] == 50_000
    assert received(echo, "Content-Length") == ["50000"]


async def test_chunked_request_body_streams_to_upstream(gateway: Client, token: str) -> None:
    """A chunked body is streamed upstream chunked, never with the client's framing copied."""
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"part-{i};".encode()
    echo = await echoed(await gateway.post("/api", data=chunks(), headers=bearer(token)))
    assert echo["body"] == "part-0;part-1;part-2;part-3;part-4;"
    assert received(echo, "Transfer-Encoding") == ["chunked"]


async def test_body_over_limit_with_content_length_is_413(gateway: Client, token: str) -> None:
    """limits.max_body: a declared length over the limit is refused before forwarding."""
    response = await gateway.post("/api", data=b"x" * (64 * 1024 + 1), headers=bearer(token))
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"


async def test_chunked_body_over_limit_is_refused(gateway: Client, token: str) -> None:
    """limits.max_body holds for chunked bodies too: counted as they pass, then 413."""
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 1024
    try:
        response = await gateway.post("/api", data=chunks(), headers=bearer(token))
    except aiohttp.ClientError:
        return  # the gateway may cut the connection while the client is still sending
    assert response.status == 413


async def test_dead_upstream_is_502_json(make_gateway: GatewayFactory,
                                         make_config: ConfigFactory, dead_port: int) -> None:
    """A refused connection upstream is a 502 with a JSON error, never a traceback."""
    config = make_config(routes=[{"prefix": "/", "upstream": f"http://127.0.0.1:{dead_port}",
                                  "auth": "none"}])
    client = await make_gateway(config)
    response = await client.get("/x")
    assert response.status == 502
    assert await response.json() == {"error": "bad_gateway",
                                     "message": "The upstream service could not be reached."}


async def test_slow_upstream_is_504_json(gateway: Client, token: str) -> None:
    """An upstream slower than upstream_timeouts.read is a 504 with a JSON error."""
    response = await gateway.get("/slow?seconds=3", headers=bearer(token))
    assert response.status == 504
    assert (await response.json())["error"] == "gateway_timeout"


async def test_upstream_dying_mid_body_reaches_client_incomplete(gateway: Client,
                                                                 token: str) -> None:
    """An upstream that dies mid-body is never turned into a complete 200."""
    response = await gateway.get("/die-mid-body", headers=bearer(token))
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


async def test_chunked_answer_streams_back(gateway: Client, token: str) -> None:
    """A streamed (chunked) upstream answer arrives whole, in order."""
    response = await gateway.get("/stream?chunks=4", headers=bearer(token))
    assert await response.text() == "chunk-0\nchunk-1\nchunk-2\nchunk-3\n"


@pytest.mark.parametrize("status", [200, 201, 204, 304, 404, 500, 503])
async def test_upstream_status_passes_through(gateway: Client, token: str, status: int) -> None:
    """The upstream's status reaches the client unchanged; 204/304 without a body."""
    response = await gateway.get(f"/status/{status}", headers=bearer(token))
    assert response.status == status
    if status in (204, 304):
        assert await response.read() == b""


async def test_head_answer_has_no_body(gateway: Client, token: str) -> None:
    """HEAD is forwarded and answered without a body."""
    response = await gateway.head("/api", headers=bearer(token))
    assert response.status == 200
    assert await response.read() == b""


async def special_upstream(aiohttp_server: Any) -> TestServer:
    """An upstream that redirects, compresses, sets cookies and sends hop-by-hop headers."""
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": "/elsewhere"})

    async def compressed(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"hello" * 100),
                            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"})

    async def cookie(request: web.Request) -> web.Response:
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("session", "upstream-secret")
        return response

    async def hop(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Connection": "X-Internal", "X-Internal": "1",
                                                "Keep-Alive": "timeout=5",
                                                "Proxy-Authenticate": "Basic"})
    app = web.Application()
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/gzip", compressed)
    app.router.add_get("/cookie", cookie)
    app.router.add_get("/hop", hop)
    server: TestServer = await aiohttp_server(app)
    return server


@pytest.fixture
async def special(aiohttp_server: Any, make_gateway: GatewayFactory,
                  make_config: ConfigFactory) -> Client:
    server = await special_upstream(aiohttp_server)
    upstream = str(server.make_url("")).rstrip("/")
    return await make_gateway(make_config(routes=[{"prefix": "/", "upstream": upstream,
                                                   "auth": "none"}]))


async def test_redirects_are_passed_back_not_followed(special: Client) -> None:
    """The upstream client never follows redirects: the client gets the 302."""
    response = await special.get("/redirect", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/elsewhere"


async def test_compressed_answers_pass_through_untouched(special: Client) -> None:
    """The upstream client never decompresses: the gzip bytes and header arrive as sent."""
    response = await special.get("/gzip", auto_decompress=False,
                                 headers={"Accept-Encoding": "gzip"})
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(await response.read()) == b"hello" * 100


async def test_upstream_cookies_are_not_kept_by_the_gateway(special: Client) -> None:
    """No cookie jar: a cookie set for one client is never sent upstream for another."""
    first = await special.get("/cookie")
    assert "session=upstream-secret" in first.headers["Set-Cookie"]
    special.session.cookie_jar.clear()
    second = await special.get("/cookie")
    assert (await second.json())["cookie"] is None


async def test_hop_by_hop_response_headers_are_removed(special: Client) -> None:
    """RFC 9110 §7.6.1 applies to answers too: Connection-named and hop headers dropped."""
    response = await special.get("/hop")
    assert response.status == 200
    for name in ("X-Internal", "Keep-Alive", "Proxy-Authenticate"):
        assert name not in response.headers


@pytest.fixture
async def raw_upstream(make_gateway: GatewayFactory, make_config: ConfigFactory
                       ) -> AsyncIterator[Callable[[bytes], Awaitable[Client]]]:
    """An upstream that answers any request with fixed raw bytes, then closes."""
    servers: list[asyncio.Server] = []

    async def start(answer: bytes) -> Client:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return await make_gateway(make_config(routes=[
            {"prefix": "/", "upstream": f"http://127.0.0.1:{port}", "auth": "none"}]))

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"NOT-HTTP garbage\r\n\r\n",
    b"",
], ids=["cl-and-te", "two-lengths", "negative-length", "bad-length", "garbage", "closed"])
async def test_broken_upstream_framing_is_502(raw_upstream: Callable[[bytes], Awaitable[Client]],
                                              answer: bytes) -> None:
    """An upstream answer with ambiguous or invalid framing is a 502, never relayed."""
    client = await raw_upstream(answer)
    response = await client.get("/x")
    assert response.status == 502
    assert (await response.json())["error"] == "bad_gateway"


async def test_revoked_token_is_refused_on_the_next_request(gateway: Client, token: str,
                                                            clock: FakeClock) -> None:
    """The revocation check runs on every request, even when the token was cached."""
    assert (await gateway.get("/api", headers=bearer(token))).status == 200
    assert (await gateway.post("/user/logout", headers=bearer(token))).status == 204
    assert (await gateway.get("/api", headers=bearer(token))).status == 401


async def test_expired_token_is_refused_even_after_a_cache_hit(gateway: Client, token: str,
                                                               clock: FakeClock) -> None:
    """A verified-and-cached token still expires at exp + leeway."""
    assert (await gateway.get("/api", headers=bearer(token))).status == 200
    clock.advance(3600 + 31)
    assert (await gateway.get("/api", headers=bearer(token))).status == 401


async def test_requests_the_parser_refuses_never_log_their_bytes(
        gateway: Client, token: str, caplog: pytest.LogCaptureFixture) -> None:
    """A request aiohttp's parser refuses is logged as one line, never quoting the token."""
    from gateway.observability import install_log_filters

    caplog.set_level(logging.DEBUG)
    install_log_filters()  # what `gateway serve` does when it configures logging
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(f"GET /api HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\x01\r\n\r\n"
                 .encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400"
    assert "request_rejected_by_parser" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


async def _raw_exchange(client: Client, head: str, body: bytes | None = None) -> bytes:
    """Send `head`; if `body` is given, send it once the gateway answered 100 Continue."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(head.encode())
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    if body is not None and first.startswith(b"HTTP/1.1 100"):
        writer.write(body)
        await writer.drain()
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    writer.close()
    return first


async def test_expect_100_continue_is_answered_after_authentication(gateway: Client,
                                                                    token: str) -> None:
    """`Expect: 100-continue` gets 100 Continue once the request is let through, and a
    refused request gets its final answer without the body ever being asked for."""
    head = ("POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"
            "Expect: 100-continue\r\n{auth}Connection: close\r\n\r\n")
    accepted = await _raw_exchange(gateway, head.format(
        auth=f"Authorization: Bearer {token}\r\n"), b"hello")
    assert accepted.startswith(b"HTTP/1.1 200")
    refused = await _raw_exchange(gateway, head.format(auth=""))
    assert refused.startswith(b"HTTP/1.1 401")


@pytest.mark.parametrize("host", ["a@evil.example", "evil.example/x?", "h h", "h:99999999"],
                         ids=["userinfo", "path-and-query", "space", "long-port"])
async def test_invalid_host_header_is_400(gateway: Client, token: str, host: str) -> None:
    """RFC 9112 §3.2: an invalid Host is refused, never forwarded as X-Forwarded-Host."""
    answer = await _raw_exchange(gateway, f"GET /api HTTP/1.1\r\nHost: {host}\r\n"
                                          f"Authorization: Bearer {token}\r\n"
                                          "Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("raw", ["/fwd%3Bx/secret", "/fwd%3bx/secret", "/fwd./secret",
                                 "/fwd../secret"],
                         ids=["encoded-semicolon", "encoded-semicolon-lower", "trailing-dot",
                              "trailing-dots"])
async def test_lenient_spellings_of_a_prefix_are_judged_by_its_route(
        make_gateway: GatewayFactory, make_config: ConfigFactory, raw: str) -> None:
    """`/admin%3Bx`, `/admin.` are judged by the `/admin` route (some upstreams read
    them as `/admin`), never by a less protected catch-all."""
    upstream = make_config().routes[0].upstream
    client = await make_gateway(make_config(routes=[
        {"prefix": "/fwd", "upstream": upstream, "auth": "required"},
        {"prefix": "/", "upstream": upstream, "auth": "none"}]))
    status, _ = await send_raw(client, raw)
    assert status in (400, 401)


async def test_trickled_request_body_times_out_with_408(
        make_gateway: GatewayFactory, make_config: ConfigFactory, token: str) -> None:
    """A body whose next byte does not come within limits.client_timeout is a 408, and
    the connection is not held for ever."""
    client = await make_gateway(make_config(limits={"max_body": "64KiB",
                                                    "client_timeout": "300ms"}))
    head = (f"POST /api HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 10\r\nConnection: close\r\n\r\nabc")
    answer = await _raw_exchange(client, head)
    assert answer.startswith(b"HTTP/1.1 408")


async def test_connection_trickling_its_headers_is_closed(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """Slowloris: a connection that has not sent a complete request head within
    listen.keepalive_timeout is closed."""
    client = await make_gateway(make_config(listen={"host": "127.0.0.1", "port": 0,
                                                    "keepalive_timeout": "500ms"}))
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    started = asyncio.get_running_loop().time()
    try:
        async with asyncio.timeout(5):
            for byte in b"GET /public/x HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 100:
                if reader.at_eof():
                    break
                writer.write(bytes([byte]))
                await asyncio.sleep(0.05)
            assert await reader.read() == b""
    except ConnectionError:
        pass  # closed while we were still writing: what the rule asks for
    finally:
        writer.close()
    assert asyncio.get_running_loop().time() - started < 3


async def test_own_answers_never_announce_aiohttp(gateway: Client) -> None:
    """The gateway's own answers (local endpoints, errors) say `Server: gateway`, not
    aiohttp's version banner."""
    for response in (await gateway.get("/healthz"), await gateway.get("/api")):
        await response.read()
        assert response.headers["Server"] == "gateway"
