"""Several gateways on one Redis (issue 3): revocations hold across replicas, and fail closed.

Every test runs real in-process gateways (served as `gateway serve` serves them, on loopback
sockets) against a private redis-server that it may kill, freeze and restart; the real clock
drives staleness.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import Config
from gateway.revocation.redis import RedisRevocationStore
from tests.conftest import ConfigFactory, GatewayFactory, bearer, login, services_of
from tests.redis_server import RedisServer

MAX_STALENESS = 1.0
SOCKET_TIMEOUT = 2.0  # the store's default: what a production logout waits at most
Client = TestClient[Any, Any]




class Replicas:
    """Starts gateways that share one Redis and one key prefix, each with its own store."""

    def __init__(self, make_gateway: GatewayFactory, config: Config, url: str) -> None:
        self._make_gateway = make_gateway
        self.config = config
        self.url = url
        self.prefix = f"test-{uuid.uuid4().hex}:"

    async def start(self) -> Client:
        """A new gateway with a new store (real clock, 1 s max_staleness); started and ready."""
        tokens = self.config.tokens
        store = RedisRevocationStore(
            self.url, clock=time.time, key_prefix=self.prefix, max_staleness=MAX_STALENESS,
            socket_timeout=SOCKET_TIMEOUT, longest_token_lifetime=tokens.ttl + tokens.leeway)
        client: Client = await self._make_gateway(self.config, clock=time.time,
                                                  revocations=store)
        return client


@pytest.fixture
def replicas(redis_server: RedisServer, make_gateway: GatewayFactory,
             make_config: ConfigFactory) -> Replicas:
    config = make_config(revocation={"store": "redis", "url": redis_server.url,
                                     "max_staleness": "1s"})
    return Replicas(make_gateway, config, redis_server.url)


async def status_of(client: Client, path: str, token: str | None = None) -> int:
    """GET `path` (with the token as Bearer, if any) and return the status."""
    response = await client.get(path, headers=bearer(token) if token else {})
    await response.read()
    return response.status


async def post_status(client: Client, path: str, token: str) -> int:
    response = await client.post(path, headers=bearer(token))
    await response.read()
    return response.status


async def wait_for_status(client: Client, path: str, token: str | None, expected: int,
                          within: float, what: str) -> float:
    """Poll until `path` answers `expected`; fail after `within` s. Returns seconds taken."""
    started = time.monotonic()
    while (status := await status_of(client, path, token)) != expected:
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: still {status}, not {expected}, after {within}s")
        await asyncio.sleep(0.002)
    return time.monotonic() - started


async def retry_until_204(client: Client, path: str, token: str, within: float) -> int:
    """What a client does with a 503 + Retry-After: try again. Returns the 503s seen."""
    started, refused = time.monotonic(), 0
    while (status := await post_status(client, path, token)) != 204:
        assert status == 503, status
        refused += 1
        if time.monotonic() - started > within:
            pytest.fail(f"{path} still 503 after {within}s")
        await asyncio.sleep(0.05)
    return refused


async def test_logout_on_one_gateway_holds_on_another_within_milliseconds(
        replicas: Replicas) -> None:
    """A token logged out on gateway A is rejected (401) by gateway B within a second."""
    a, b = await replicas.start(), await replicas.start()
    token = await login(a)
    other = await login(a)
    assert await status_of(b, "/api", token) == 200  # same secret: B accepts A's token
    assert (await (await b.get("/readyz")).json())["status"] == "ready"
    response = await a.post("/user/logout", headers=bearer(token))
    assert response.status == 204
    assert await response.read() == b""
    took = await wait_for_status(b, "/api", token, 401, 2.0, "B rejects A's logout")
    assert took < 1.0, f"propagation took {took * 1000:.1f} ms (typically < 50 ms)"
    response = await b.get("/api", headers=bearer(token))
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="gateway", error="invalid_token"'
    assert (await response.json())["error"] == "invalid_token"
    assert await status_of(b, "/api", other) == 200  # only that token


async def test_logout_all_holds_on_another_gateway_and_spares_later_tokens(
        replicas: Replicas) -> None:
    """logout_all on A holds on B, and a token B issues 1 ms after A's 204 is accepted."""
    a, b = await replicas.start(), await replicas.start()
    from_a, from_b = await login(a), await login(b)
    bystander = await login(b, "alice")
    assert await post_status(a, "/user/logout_all", from_a) == 204
    await asyncio.sleep(0.001)
    right_after, _ = services_of(b).issuer.issue("marco")  # B's own issuer, 1 ms later
    logged_in_after = await login(b)
    await wait_for_status(b, "/api", from_a, 401, 1.0, "B rejects marco's token from A")
    assert await status_of(b, "/api", from_b) == 401
    for token in (right_after, logged_in_after):
        assert await status_of(b, "/api", token) == 200
        assert await status_of(a, "/api", token) == 200
    assert await status_of(b, "/api", bystander) == 200


async def test_restarted_gateway_still_rejects_tokens_revoked_before(
        replicas: Replicas) -> None:
    """A gateway (re)started after a logout loads it from Redis before it serves."""
    a, b = await replicas.start(), await replicas.start()
    revoked, cut_off, valid = await login(a), await login(a, "alice"), await login(a)
    assert await post_status(a, "/user/logout", revoked) == 204
    assert await post_status(a, "/user/logout_all", cut_off) == 204
    await wait_for_status(b, "/api", revoked, 401, 1.0, "B rejects the token")
    await b.close()
    restarted = await replicas.start()
    assert await status_of(restarted, "/api", revoked) == 401  # no wait: loaded at start
    assert await status_of(restarted, "/api", cut_off) == 401
    assert await status_of(restarted, "/api", valid) == 200


async def test_redis_outage_fails_closed_and_recovers(
        replicas: Replicas, redis_server: RedisServer) -> None:
    """Redis down: honest 503 on logout, cache then fail closed; back: ready within 5 s."""
    a, b = await replicas.start(), await replicas.start()
    revoked, honest, written_later = await login(a), await login(a), await login(a)
    alices = await login(a, "alice")
    assert await post_status(a, "/user/logout", revoked) == 204
    await wait_for_status(b, "/api", revoked, 401, 1.0, "B rejects the revoked token")

    redis_server.kill()
    # Cut off for less than max_staleness: B answers from its cache.
    assert await status_of(b, "/api", revoked) == 401
    assert await status_of(b, "/api", honest) == 200
    started = time.monotonic()
    response = await a.post("/user/logout", headers=bearer(honest))
    took = time.monotonic() - started
    assert response.status == 503, await response.text()
    assert took < 3.0, f"logout took {took:.2f}s to fail"
    assert response.headers["Retry-After"].isdigit()
    assert (await response.json())["error"] == "store_unavailable"

    # Past max_staleness: fail closed, except where no token is needed.
    await wait_for_status(b, "/api", honest, 503, MAX_STALENESS + 2.0, "B fails closed")
    response = await b.get("/api", headers=bearer(honest))
    assert response.headers["Retry-After"].isdigit()
    assert (await response.json())["error"] == "store_unavailable"
    assert await status_of(b, "/api", revoked) == 401  # a known revocation stays a 401
    response = await b.get("/readyz")
    assert response.status == 503
    assert "unreachable" in (await response.json())["revocations"]
    assert await status_of(b, "/public/x") == 200
    response = await b.get("/maybe/x", headers=bearer(honest))
    assert response.status == 200  # auth: optional forwards as anonymous
    assert not [v for k, v in (await response.json())["headers"] if k == "X-Auth-UserId"]

    redis_server.start()  # same port, empty
    restarted = time.monotonic()
    await retry_until_204(a, "/user/logout", written_later, 5.0)  # B may still be cut off
    await wait_for_status(b, "/readyz", None, 200, 5.0, "B ready after Redis returned")
    await wait_for_status(a, "/readyz", None, 200, 5.0, "A ready after Redis returned")
    await wait_for_status(b, "/api", written_later, 401, 1.0, "B honours A's new logout")
    took = time.monotonic() - restarted
    assert took < 5.0, f"recovery took {took:.2f}s"
    assert await post_status(a, "/user/logout_all", alices) == 204  # script cache was lost
    await wait_for_status(b, "/api", alices, 401, 1.0, "B honours A's logout_all")
    # The 503 was honest: that logout was never stored, so the token is still valid.
    assert await status_of(b, "/api", honest) == 200
    assert await status_of(a, "/api", honest) == 200
    assert await status_of(b, "/api", revoked) == 401  # still in B's cache


async def test_frozen_redis_makes_logout_fail_within_the_socket_timeout(
        replicas: Replicas, redis_server: RedisServer) -> None:
    """Frozen Redis: logout is a 503 within the socket timeout, never a hang; SIGCONT heals."""
    a, b = await replicas.start(), await replicas.start()
    first, second, alices = await login(a), await login(a), await login(a, "alice")
    redis_server.stop()
    try:
        started = time.monotonic()
        response = await a.post("/user/logout", headers=bearer(first))
        took = time.monotonic() - started
        assert response.status == 503, await response.text()
        assert took < SOCKET_TIMEOUT + 1.0, f"logout hung for {took:.2f}s"
        assert (await response.json())["error"] == "store_unavailable"
        await wait_for_status(b, "/api", second, 503, MAX_STALENESS + 2.0, "B goes stale")
    finally:
        redis_server.cont()
    await retry_until_204(a, "/user/logout", first, 5.0)
    await wait_for_status(b, "/api", second, 200, 5.0, "B in sync after SIGCONT")
    await wait_for_status(b, "/api", first, 401, 1.0, "B rejects the token")
    # The connections that timed out must not hand stale replies to later commands.
    assert await post_status(a, "/user/logout_all", alices) == 204
    await wait_for_status(b, "/api", alices, 401, 1.0, "B rejects alice's earlier token")
    await asyncio.sleep(0.001)
    assert await status_of(b, "/api", await login(b, "alice")) == 200
    assert await post_status(a, "/user/logout", second) == 204
    await wait_for_status(b, "/api", second, 401, 1.0, "B rejects the second token")


async def test_concurrent_logouts_all_hold_on_another_gateway(replicas: Replicas) -> None:
    """20 logouts sent at once to A all answer 204, and B rejects every one of those tokens."""
    a, b = await replicas.start(), await replicas.start()
    tokens = [await login(a, "marco" if i % 2 else "alice") for i in range(20)]
    assert {await status_of(b, "/api", token) for token in tokens} == {200}
    statuses = await asyncio.gather(*(post_status(a, "/user/logout", t) for t in tokens))
    assert statuses == [204] * 20
    for token in tokens:
        await wait_for_status(b, "/api", token, 401, 1.0, "B rejects each token")
        assert await status_of(a, "/api", token) == 401
