"""The endpoints the gateway serves itself, over real sockets (DESIGN §4)."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.auth_api import login_limit_key
from gateway.revocation.sqlite import SqliteRevocationStore
from tests.conftest import (
    PASSWORD,
    ConfigFactory,
    GatewayFactory,
    bearer,
    login,
    services_of,
)
from tests.fakes import FakeClock

Client = TestClient[Any, Any]


async def test_login_returns_token_as_json_with_no_store(gateway: Client) -> None:
    """Login answers 200 `{"token": ...}`, JSON with charset, never cached."""
    response = await gateway.post("/user/login", json={"username": "marco",
                                                       "password": PASSWORD})
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    assert set(body) == {"token"}
    payload = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[1] + "=="))
    assert set(payload) == {"iss", "sub", "iat", "exp", "jti"}
    assert payload["sub"] == "marco"


async def test_wrong_password_and_unknown_user_get_the_same_answer(gateway: Client) -> None:
    """A wrong password and an unknown user are indistinguishable: same status and body."""
    wrong = await gateway.post("/user/login", json={"username": "marco", "password": "nope"})
    unknown = await gateway.post("/user/login", json={"username": "nobody", "password": "nope"})
    assert wrong.status == unknown.status == 401
    assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"] \
        == 'Bearer realm="gateway"'
    assert await wrong.json() == await unknown.json() == {
        "error": "invalid_credentials", "message": "The username or password is not valid."}


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", b'"marco"', b"{}", b'{"username": "marco"}',
    b'{"username": 1, "password": "x"}', b'{"username": "marco", "password": null}',
    b'{"username": "marco", "password": "a", "password": "b"}',
    b'{"username": "marco", "password": NaN}', b"\xff\xfe",
], ids=["not-json", "array", "string", "empty-object", "missing-password", "number-username",
        "null-password", "duplicate-key", "nan", "not-utf8"])
async def test_malformed_login_body_is_400_json(gateway: Client, body: bytes) -> None:
    """A login body that is not a JSON object of two strings is a 400 with a JSON error."""
    response = await gateway.post("/user/login", data=body,
                                  headers={"Content-Type": "application/json"})
    assert response.status == 400
    assert (await response.json())["error"] == "malformed_body"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          None], ids=["text", "form", "none"])
async def test_login_requires_json_content_type(gateway: Client,
                                                content_type: str | None) -> None:
    """/user/login takes application/json only: anything else is 415."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = await gateway.post("/user/login", data=b'{"username":"marco","password":"x"}',
                                  headers=headers, skip_auto_headers=["Content-Type"])
    assert response.status == 415
    assert (await response.json())["error"] == "unsupported_media_type"


async def test_login_body_over_16kib_is_413(gateway: Client) -> None:
    """A login body over 16 KiB is refused with 413 before it is parsed."""
    big = json.dumps({"username": "marco", "password": "x" * 17000})
    response = await gateway.post("/user/login", data=big,
                                  headers={"Content-Type": "application/json"})
    assert response.status == 413
    assert (await response.json())["error"] == "payload_too_large"


async def test_chunked_login_body_over_16kib_is_413(gateway: Client) -> None:
    """The 16 KiB cap holds for a chunked body with no Content-Length too."""
    async def chunks() -> Any:
        yield b'{"username": "marco", "password": "'
        for _ in range(20):
            yield b"x" * 1024
        yield b'"}'
    response = await gateway.post("/user/login", data=chunks(),
                                  headers={"Content-Type": "application/json"})
    assert response.status == 413


async def test_failed_logins_per_username_are_limited_with_retry_after(
        make_gateway: GatewayFactory, make_config: ConfigFactory, clock: FakeClock) -> None:
    """Past login_limit.max_failures for one username: 429 with Retry-After, even with the
    right password, until the window has passed."""
    client = await make_gateway(make_config(login_limit={"max_failures": 2, "window": "60s"}))
    for _ in range(2):
        response = await client.post("/user/login", json={"username": "marco", "password": "x"})
        assert response.status == 401
    limited = await client.post("/user/login", json={"username": "marco", "password": PASSWORD})
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert (await limited.json())["error"] == "rate_limited"
    other = await client.post("/user/login", json={"username": "alice", "password": PASSWORD})
    assert other.status == 429, "the client address is over the limit too"
    clock.advance(61)
    assert (await client.post("/user/login", json={"username": "marco",
                                                   "password": PASSWORD})).status == 200


async def test_failed_logins_with_long_usernames_are_limited_on_fixed_size_keys(
        make_gateway: GatewayFactory, make_config: ConfigFactory) -> None:
    """A 15 KiB username is limited like any other, and the limiter holds a fixed-size key
    for it (100,000 such names must not hold gigabytes)."""
    client = await make_gateway(make_config(login_limit={"max_failures": 2, "window": "60s"}))
    long_name = "m" * 15_000
    for _ in range(2):
        response = await client.post("/user/login", json={"username": long_name,
                                                          "password": "x"})
        assert response.status == 401
    assert len(login_limit_key(long_name)) < 64
    limited = await client.post("/user/login", json={"username": long_name, "password": "x"})
    assert limited.status == 429
    assert login_limit_key(long_name) in services_of(client).login_limiter._failures
    assert all(len(key) < 64 for key in services_of(client).login_limiter._failures)


async def test_logout_revokes_the_token_everywhere(gateway: Client) -> None:
    """After /user/logout (204, empty) the token gets 401 invalid_token on protected routes."""
    token = await login(gateway)
    assert (await gateway.get("/anything", headers=bearer(token))).status == 200
    response = await gateway.post("/user/logout", headers=bearer(token))
    assert response.status == 204
    assert await response.read() == b""
    for path in ("/anything", "/fwd/x", "/strip/y"):
        rejected = await gateway.get(path, headers=bearer(token))
        assert rejected.status == 401
        assert 'error="invalid_token"' in rejected.headers["WWW-Authenticate"]
        assert (await rejected.json())["error"] == "invalid_token"


async def test_logout_is_idempotent(gateway: Client) -> None:
    """Repeating /user/logout with the same token is 204 again."""
    token = await login(gateway)
    assert (await gateway.post("/user/logout", headers=bearer(token))).status == 204
    assert (await gateway.post("/user/logout", headers=bearer(token))).status == 204


async def test_logout_leaves_other_tokens_of_the_user_valid(gateway: Client,
                                                            clock: FakeClock) -> None:
    """Logout revokes one token (by jti), not the user's other sessions."""
    first = await login(gateway)
    clock.advance(0.001)
    second = await login(gateway)
    assert (await gateway.post("/user/logout", headers=bearer(first))).status == 204
    assert (await gateway.get("/x", headers=bearer(second))).status == 200


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic bWFyY286eA=="},
], ids=["missing", "garbage", "basic"])
async def test_logout_without_a_valid_token_is_401(gateway: Client,
                                                   headers: dict[str, str]) -> None:
    """/user/logout needs a token this gateway signed."""
    response = await gateway.post("/user/logout", headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="gateway"')


async def test_logout_all_with_bearer_revokes_every_earlier_token(gateway: Client,
                                                                  clock: FakeClock) -> None:
    """logout_all revokes all the user's tokens issued up to now, not other users' ones."""
    first = await login(gateway)
    clock.advance(0.001)
    second = await login(gateway)
    alice = await login(gateway, "alice")
    clock.advance(0.001)
    assert (await gateway.post("/user/logout_all", headers=bearer(second))).status == 204
    for token in (first, second):
        assert (await gateway.get("/x", headers=bearer(token))).status == 401
    assert (await gateway.get("/x", headers=bearer(alice))).status == 200


async def test_token_issued_just_after_logout_all_is_valid(gateway: Client,
                                                           clock: FakeClock) -> None:
    """A token issued after the 204 of logout_all, within the same second, stays valid."""
    token = await login(gateway)
    assert (await gateway.post("/user/logout_all", headers=bearer(token))).status == 204
    clock.advance(0.001)
    fresh = await login(gateway)
    assert (await gateway.get("/x", headers=bearer(fresh))).status == 200
    assert (await gateway.get("/x", headers=bearer(token))).status == 401


async def test_logout_all_by_header_from_trusted_network(make_gateway: GatewayFactory,
                                                         make_config: ConfigFactory,
                                                         clock: FakeClock) -> None:
    """A trusted internal caller may name the user in X-Auth-UserId (the original API)."""
    client = await make_gateway(make_config(trusted_networks=["127.0.0.0/8"]))
    token = await login(client)
    clock.advance(0.001)
    response = await client.post("/user/logout_all", headers={"X-Auth-UserId": "marco"})
    assert response.status == 204
    assert (await client.get("/x", headers=bearer(token))).status == 401


async def test_logout_all_by_header_is_refused_from_untrusted_callers(gateway: Client) -> None:
    """Without trusted_networks, X-Auth-UserId on logout_all is ignored: 401, nothing revoked."""
    token = await login(gateway)
    response = await gateway.post("/user/logout_all", headers={"X-Auth-UserId": "marco"})
    assert response.status == 401
    assert (await gateway.get("/x", headers=bearer(token))).status == 200


async def test_auth_endpoints_refuse_other_methods_with_405(gateway: Client) -> None:
    """/user/* are POST only: another method is 405 with Allow and a JSON body."""
    response = await gateway.get("/user/login")
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert (await response.json())["error"] == "method_not_allowed"


async def test_logs_never_hold_a_token_or_password(gateway: Client,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Logins, logouts and failures log a jti or fingerprint, never the token or password."""
    caplog.set_level(logging.DEBUG)
    token = await login(gateway)
    await gateway.post("/user/login", json={"username": "marco", "password": "wrong-pw-123"})
    await gateway.post("/user/logout", headers=bearer(token))
    await gateway.get("/x", headers=bearer(token))
    text = caplog.text
    assert "login_succeeded" in text and "logout" in text
    for secret in (token, token.split(".")[2], PASSWORD, "wrong-pw-123"):
        assert secret not in text


async def test_health_and_readiness(gateway: Client) -> None:
    """/healthz answers while alive; /readyz reports the store ready."""
    assert (await gateway.get("/healthz")).status == 200
    ready = await gateway.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


async def test_metrics_count_logins(gateway: Client) -> None:
    """/metrics is Prometheus text and counts successful logins."""
    await login(gateway)
    text = await (await gateway.get("/metrics")).text()
    assert 'gateway_logins_total{result="succeeded"} 1.0' in text


async def test_auth_verify_answers_204_with_identity(gateway: Client) -> None:
    """/auth/verify (forward-auth for other proxies) answers 204 + X-Auth-UserId, or 401."""
    token = await login(gateway)
    ok = await gateway.get("/auth/verify", headers=bearer(token))
    assert ok.status == 204
    assert ok.headers["X-Auth-UserId"] == "marco"
    assert (await gateway.get("/auth/verify")).status == 401


async def test_revocation_survives_a_gateway_restart_with_sqlite(
        make_gateway: GatewayFactory, make_config: ConfigFactory, tmp_path: Any,
        clock: FakeClock) -> None:
    """With the SQLite store, a token revoked before a restart stays revoked after it."""
    config = make_config(revocation={"store": "sqlite", "path": str(tmp_path / "rev.db")})
    first = await make_gateway(config)
    token = await login(first)
    assert (await first.post("/user/logout", headers=bearer(token))).status == 204
    await first.close()
    second = await make_gateway(config, revocations=SqliteRevocationStore(
        tmp_path / "rev.db", clock=clock))
    assert (await second.get("/x", headers=bearer(token))).status == 401


@pytest.mark.parametrize("start", [1_800_000_000.0000006, 1_800_000_000.0000004],
                         ids=["rounds-up", "rounds-down"])
async def test_token_issued_at_the_cutoff_instant_is_revoked(
        make_gateway: GatewayFactory, make_config: ConfigFactory, start: float) -> None:
    """A token issued at the very instant of logout_all is revoked, however iat rounds."""
    clock = FakeClock(start)
    client = await make_gateway(make_config(), clock=clock)
    token = await login(client)
    assert (await client.post("/user/logout_all", headers=bearer(token))).status == 204
    assert (await client.get("/x", headers=bearer(token))).status == 401


async def test_rs256_gateway_publishes_its_public_key_and_signs_with_it(
        make_gateway: GatewayFactory, make_config: ConfigFactory, tmp_path: Any) -> None:
    """With RS256, /.well-known/jwks.json holds the public key (no private parts) whose
    kid the issued tokens carry, and those tokens open protected routes."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "signing.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    client = await make_gateway(make_config(tokens={"algorithm": "RS256", "ttl": "1h",
                                                    "private_key_file": str(pem)}))
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    assert len(jwks["keys"]) == 1
    published = jwks["keys"][0]
    assert published["alg"] == "RS256" and "d" not in published
    token = await login(client)
    assert jwt.get_unverified_header(token)["kid"] == published["kid"]
    public = jwt.PyJWK(published).key
    assert jwt.decode(token, public, algorithms=["RS256"], issuer="gateway")["sub"] == "marco"
    assert (await client.get("/x", headers=bearer(token))).status == 200
