"""Attacks on the gateway's auth side, each over a real gateway on loopback.

Tokens are forged with the gateway's own test secret where a forger would need it (another
gateway sharing the key), so that only the rule under test can refuse them.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient

from gateway.revocation.memory import MemoryRevocationStore
from gateway.revocation.sqlite import SqliteRevocationStore
from tests.conftest import (
    PASSWORD,
    TEST_SECRET,
    ConfigFactory,
    GatewayFactory,
    bearer,
    login,
    services_of,
)
from tests.fakes import FakeClock

Client = TestClient[Any, Any]
JSON = {"Content-Type": "application/json"}


def forge(clock: FakeClock, *, secret: str = TEST_SECRET, **overrides: Any) -> str:
    """A token signed with `secret` holding the claims this gateway issues, plus overrides."""
    payload: dict[str, Any] = {"iss": "gateway", "sub": "marco", "iat": clock(),
                               "exp": clock() + 600, "jti": "forged-jti-0123456789"}
    payload.update(overrides)
    return jwt.encode(payload, secret, algorithm="HS256")


def payload_of(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return data


async def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    """`response` is the gateway's JSON error `{"error", "message"}` with this status."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    return body


# --- login --------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    '{"username": "marco", "password": "\\ud800"}',
    '{"username": "marco", "password": "ok\\udfff"}',
    '{"username": "\\ud800", "password": "x"}',
], ids=["password-lone-high-surrogate", "password-lone-low-surrogate",
        "username-lone-surrogate"])
async def test_login_with_a_lone_surrogate_is_a_400_never_a_500(
        gateway: Client, body: str, caplog: pytest.LogCaptureFixture) -> None:
    """JSON `\\ud800` escapes decode to strings no password hash can take: 400, no crash."""
    response = await gateway.post("/user/login", data=body.encode(), headers=JSON)
    await assert_error(response, 400, "malformed_body")
    assert "internal_error" not in caplog.text


async def test_concurrent_failed_logins_cannot_exceed_the_failure_limit(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """login_limit.max_failures bounds the password guesses per window even when the
    guesses arrive at once: checks in flight count against the limit."""
    client = await make_gateway(make_config(login_limit={"max_failures": 3, "window": "60s"}))
    guesses = [client.post("/user/login", json={"username": "marco", "password": f"guess{i}"})
               for i in range(12)]
    statuses = sorted(r.status for r in await asyncio.gather(*guesses))
    assert statuses.count(401) <= 3, statuses
    assert set(statuses) == {401, 429}, statuses
    assert services_of(client).metrics.logins["failed"] <= 3


async def test_concurrent_logins_of_many_users_from_one_address_all_succeed(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """Checks in flight count against the username only: users behind one proxy or NAT
    logging in at the same moment are not refused by the per-address limit."""
    client = await make_gateway(make_config(login_limit={"max_failures": 2, "window": "60s"}))
    logins = [client.post("/user/login", json={"username": name, "password": PASSWORD})
              for name in ("marco", "alice") * 3]
    statuses = [r.status for r in await asyncio.gather(*logins)]
    assert statuses.count(200) >= 4, statuses  # two of each user at least
    assert statuses.count(429) <= 2, statuses  # only same-user concurrency is limited


async def test_login_limit_still_lets_a_lone_right_password_through(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """A check in flight blocks only while it runs: after it, the next login is judged on
    the failures recorded (none after a success)."""
    client = await make_gateway(make_config(login_limit={"max_failures": 1, "window": "60s"}))
    for _ in range(3):
        await login(client)


async def test_gzip_login_body_is_never_inflated(gateway: Client) -> None:
    """A gzip login body is read as the bytes sent (not JSON: 400), never decompressed."""
    body = gzip.compress(json.dumps({"username": "marco", "password": PASSWORD}).encode())
    response = await gateway.post("/user/login", data=body,
                                  headers={**JSON, "Content-Encoding": "gzip"})
    await assert_error(response, 400, "malformed_body")


@pytest.mark.parametrize("body", [
    b"[" * 5000 + b"]" * 5000,
    b'{"username": ' + b"[" * 5000 + b"]" * 5000 + b', "password": "x"}',
    b'{"username": ["marco"], "password": "x"}',
    b'{"username": "marco", "password": {"$ne": 1}}',
    b'{"username": "marco", "password": 12345}',
    b'{"username": "marco", "password": true}',
    b'{"username": "marco", "password": "x", "username": "alice"}',
    b'{"username": "marco", "password": "x"} trailing',
    b"",
], ids=["deep-array", "deep-username", "array-username", "object-password",
        "number-password", "bool-password", "duplicate-username", "trailing-garbage", "empty"])
async def test_odd_login_bodies_are_400_json(gateway: Client, body: bytes) -> None:
    """Whatever the shape of a login body, a malformed one is a JSON 400, never a 500."""
    response = await gateway.post("/user/login", data=body, headers=JSON)
    await assert_error(response, 400, "malformed_body")


async def raw_exchange(client: Client, request: bytes) -> bytes:
    """Send `request` on a new connection; the answer's head and its JSON body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return head + await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def test_one_megabyte_login_body_is_413_before_any_password_check(
        gateway: Client) -> None:
    """A 1 MiB login body is refused by its announced length with 413, before the body is
    read or any password check is spent on it."""
    head = (b"POST /user/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1048600\r\nConnection: close\r\n\r\n")
    answer = await raw_exchange(gateway, head + b'{"username": "' + b"m" * 1000)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"error": "payload_too_large"' in answer
    assert services_of(gateway).metrics.logins["failed"] == 0


@pytest.mark.parametrize("username", ["Marco", "marco ", "\uff4d\uff41\uff52\uff43\uff4f",
                                      "marc\u006f\u0301", "marco\x00"],
                         ids=["case", "trailing-space", "fullwidth", "combining-mark", "nul"])
async def test_lookalike_usernames_are_other_users(gateway: Client, username: str) -> None:
    """Usernames compare exactly: no case folding or Unicode normalisation lets a
    lookalike log in with the real user's password."""
    response = await gateway.post("/user/login", json={"username": username,
                                                       "password": PASSWORD})
    await assert_error(response, 401, "invalid_credentials")


# --- tokens at the HTTP edge ------------------------------------------------------------------

@pytest.mark.parametrize("subject", ["marco,admin", "admin, marco", ","],
                         ids=["comma-list", "comma-space", "comma-only"])
async def test_token_whose_subject_holds_a_comma_never_becomes_an_identity(
        gateway: Client, clock: FakeClock, subject: str) -> None:
    """A `sub` with a comma (read upstream as a list of users) is refused like a username
    with one: this gateway never issues it, so it is not one of its tokens."""
    token = forge(clock, sub=subject)
    await assert_error(await gateway.get("/x", headers=bearer(token)), 401, "invalid_token")
    verify = await gateway.get("/auth/verify", headers=bearer(token))
    await assert_error(verify, 401, "invalid_token")
    maybe = await (await gateway.get("/maybe/x", headers=bearer(token))).json()
    assert not any(name.lower() == "x-auth-userid" for name, _ in maybe["headers"])


async def test_token_of_another_issuer_sharing_the_key_is_refused(gateway: Client,
                                                                  clock: FakeClock) -> None:
    """A token signed with this gateway's key for another issuer opens nothing, and
    logging it out stores nothing."""
    token = forge(clock, iss="other-gateway")
    await assert_error(await gateway.get("/x", headers=bearer(token)), 401, "invalid_token")
    await assert_error(await gateway.post("/user/logout", headers=bearer(token)),
                       401, "invalid_token")
    store = services_of(gateway).revocations
    assert isinstance(store, MemoryRevocationStore)
    assert len(store.cache) == 0


@pytest.mark.parametrize("header", [
    {"alg": "HS256", "jku": "http://127.0.0.1:1/jwks.json"},
    {"alg": "HS256", "x5u": "http://127.0.0.1:1/cert.pem"},
    {"alg": "HS256", "kid": "../../../../dev/null"},
    {"alg": "HS256", "jwk": {"kty": "oct", "k": "AAAA"}},
], ids=["jku", "x5u", "kid-path", "embedded-jwk"])
async def test_key_pointing_headers_never_choose_the_key(gateway: Client, clock: FakeClock,
                                                         header: dict[str, Any]) -> None:
    """jku/x5u/kid/jwk never pick the verifying key: a token signed with a key the header
    points at is refused."""
    payload = {"iss": "gateway", "sub": "marco", "iat": clock(), "exp": clock() + 60,
               "jti": "jti-0123456789"}
    token = jwt.encode(payload, b"\x00\x00\x00" * 11, algorithm="HS256",
                       headers={k: v for k, v in header.items() if k != "alg"})
    await assert_error(await gateway.get("/x", headers=bearer(token)), 401, "invalid_token")


@pytest.mark.parametrize("authorization", [
    ["Bearer"], ["Bearer "], ["bearer"], ["Basic bWFyY286eA=="], ["Bearer a b"],
    ["Bearer\t{token}"], ["Token {token}"],
], ids=["bearer-alone", "bearer-space", "lowercase-alone", "basic", "two-words", "tab",
        "other-scheme"])
async def test_malformed_authorization_is_a_401_json(gateway: Client,
                                                     authorization: list[str]) -> None:
    """An Authorization header that is not `Bearer <token>` is a 401 JSON error."""
    token = await login(gateway)
    values = [value.format(token=token) for value in authorization]
    response = await gateway.get("/x", headers=[("Authorization", v) for v in values])
    body = await assert_error(response, 401, "invalid_token")
    assert token not in body["message"]


async def test_lowercase_bearer_scheme_and_header_name_are_accepted(gateway: Client) -> None:
    """RFC 9110: the scheme and the field name are case-insensitive."""
    token = await login(gateway)
    response = await gateway.get("/x", headers={"authorization": f"bEaReR {token}"})
    assert response.status == 200


@pytest.mark.parametrize("method", ["GET", "POST"], ids=["fast-path", "aiohttp-handler"])
async def test_two_authorization_headers_are_refused_even_when_one_is_valid(
        gateway: Client, method: str) -> None:
    """Exactly one Authorization header, whatever the case of the names: a valid token
    next to another value (or itself) is 401, on both serving paths."""
    token = await login(gateway)
    for second in (f"authorization: Bearer {token}", "AUTHORIZATION: Bearer x",
                   f"Authorization: Bearer {token}"):
        answer = await raw_exchange(gateway, (
            f"{method} /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
            f"{second}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").encode())
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        assert b'"error": "invalid_token"' in answer


async def test_expired_token_in_the_verified_cache_is_refused_after_the_leeway(
        gateway: Client, clock: FakeClock) -> None:
    """A token served from the verified-token cache still expires at exp + leeway."""
    token = await login(gateway)
    assert (await gateway.get("/x", headers=bearer(token))).status == 200
    clock.advance(3600 + 29)
    assert (await gateway.get("/x", headers=bearer(token))).status == 200
    clock.advance(1.001)
    await assert_error(await gateway.get("/x", headers=bearer(token)), 401, "invalid_token")


# --- revocation -------------------------------------------------------------------------------

async def test_logout_with_an_expired_token_is_401_and_stores_nothing(
        gateway: Client, clock: FakeClock) -> None:
    """An expired token cannot be logged out (401) and leaves no entry in the store."""
    token = await login(gateway)
    clock.advance(3600 + 31)
    await assert_error(await gateway.post("/user/logout", headers=bearer(token)),
                       401, "invalid_token")
    store = services_of(gateway).revocations
    assert isinstance(store, MemoryRevocationStore)
    assert len(store.cache) == 0


async def test_logout_of_a_cached_token_is_checked_on_the_next_request(gateway: Client) -> None:
    """The verified-token cache never skips the revocation check: every route and
    /auth/verify refuse a cached token once it is logged out."""
    token = await login(gateway)
    for path in ("/x", "/auth/verify"):
        assert (await gateway.get(path, headers=bearer(token))).status in (200, 204)
    assert (await gateway.post("/user/logout", headers=bearer(token))).status == 204
    for path in ("/x", "/auth/verify", "/fwd/y"):
        await assert_error(await gateway.get(path, headers=bearer(token)), 401, "invalid_token")
    await assert_error(await gateway.post("/user/logout_all", headers=bearer(token)),
                       401, "invalid_token")


async def test_logout_all_of_one_user_leaves_another_users_tokens_alone(
        gateway: Client, clock: FakeClock) -> None:
    """logout_all of alice revokes only alice's tokens; marco's, older or newer, stay valid."""
    marco = await login(gateway)
    alice = await login(gateway, "alice")
    clock.advance(0.001)  # well past the float precision of a 1.8e9 s clock (~0.24 us)
    assert (await gateway.post("/user/logout_all", headers=bearer(alice))).status == 204
    clock.advance(0.001)  # well past the float precision of a 1.8e9 s clock (~0.24 us)
    fresh_alice = await login(gateway, "alice")
    assert (await gateway.get("/x", headers=bearer(marco))).status == 200
    assert (await gateway.get("/x", headers=bearer(fresh_alice))).status == 200
    await assert_error(await gateway.get("/x", headers=bearer(alice)), 401, "invalid_token")


@contextmanager
def locked_database(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock on `path` from another connection: the store cannot commit."""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.rollback()
        conn.close()


async def test_logout_while_sqlite_cannot_commit_is_an_honest_503(
        make_gateway: GatewayFactory, make_config: ConfigFactory, tmp_path: Path,
        clock: FakeClock) -> None:
    """A logout SQLite cannot commit answers 503 + Retry-After, JSON, and revokes nothing."""
    path = tmp_path / "rev.db"
    config = make_config(revocation={"store": "sqlite", "path": str(path)})
    store = SqliteRevocationStore(path, clock=clock, busy_timeout=0.2)
    client = await make_gateway(config, revocations=store)
    token = await login(client)
    with locked_database(path):
        for endpoint in ("/user/logout", "/user/logout_all"):
            response = await client.post(endpoint, headers=bearer(token))
            await assert_error(response, 503, "store_unavailable")
            assert response.headers["Retry-After"] == "1"
    assert (await client.get("/x", headers=bearer(token))).status == 200
    assert (await client.post("/user/logout", headers=bearer(token))).status == 204
    await assert_error(await client.get("/x", headers=bearer(token)), 401, "invalid_token")


async def test_logout_all_survives_a_restart_with_sqlite(
        make_gateway: GatewayFactory, make_config: ConfigFactory, tmp_path: Path,
        clock: FakeClock) -> None:
    """logout_all is durable: after a restart the old token is refused, a newer one works."""
    path = tmp_path / "rev.db"
    config = make_config(revocation={"store": "sqlite", "path": str(path)})
    first = await make_gateway(config)
    old = await login(first)
    assert (await first.post("/user/logout_all", headers=bearer(old))).status == 204
    clock.advance(0.001)  # well past the float precision of a 1.8e9 s clock (~0.24 us)
    new = await login(first)
    await first.close()
    second = await make_gateway(config)
    await assert_error(await second.get("/x", headers=bearer(old)), 401, "invalid_token")
    assert (await second.get("/x", headers=bearer(new))).status == 200


# --- logs ---------------------------------------------------------------------------------

async def test_no_failure_path_logs_a_token_or_a_password(
        gateway: Client, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """Bad, forged, revoked and expired tokens and failed logins log neither the token
    nor the password, whole or as its signature."""
    caplog.set_level(logging.DEBUG)
    token = await login(gateway)
    forged = forge(clock, iss="other")
    password = "hunter2-wrong-password"
    await gateway.post("/user/login", json={"username": "marco", "password": password})
    await gateway.post("/user/login", json={"username": "nobody", "password": password})
    await gateway.post("/user/login", data=b'{"username": "marco", "password": "' +
                       password.encode() + b'"', headers=JSON)
    for headers in (bearer(forged), bearer(token + "x"), [("Authorization", bearer(token)
                    ["Authorization"])] * 2):
        await gateway.get("/x", headers=headers)
        await gateway.post("/user/logout", headers=headers)
    await gateway.post("/user/logout", headers=bearer(token))
    await gateway.get("/x", headers=bearer(token))
    clock.advance(7200)
    await gateway.get("/x", headers=bearer(token))
    for secret in (token, token.split(".")[2], forged, forged.split(".")[2], PASSWORD,
                   password):
        assert secret not in caplog.text


async def test_embedded_gateway_never_logs_a_token_the_parser_refuses(
        aiohttp_client: Any, make_config: ConfigFactory, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    """create_app (the embedded form, no `gateway serve` logging set-up) keeps a token in a
    header aiohttp's parser refuses (a trailing control byte) out of the logs."""
    from gateway.app import create_app

    server_log = logging.getLogger("aiohttp.server")
    saved = server_log.filters[:]
    for installed in saved:
        server_log.removeFilter(installed)  # as in a fresh process that never ran `serve`
    try:
        caplog.set_level(logging.DEBUG)
        client = await aiohttp_client(create_app(
            make_config(), clock=clock,
            revocations=MemoryRevocationStore(clock=clock, max_entries=10)))
        token = await login(client)
        reader, writer = await asyncio.open_connection(client.host, client.port)
        writer.write(f"GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\x01\r\n"
                     "Connection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.0 400 ") or answer.startswith(b"HTTP/1.1 400 ")
        assert token not in caplog.text and token.split(".")[2] not in caplog.text
    finally:
        for installed in server_log.filters[:]:
            server_log.removeFilter(installed)
        for installed in saved:
            server_log.addFilter(installed)
