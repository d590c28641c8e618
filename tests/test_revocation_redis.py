"""RedisRevocationStore on real Redis: key expiry, prefixes, reloads, reconnects, failing closed.

Normal paths use the machine Redis at REDIS_URL; faults use a private redis-server per test.
What every store promises is in test_revocation_store_contract.py.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.clock import Clock
from gateway.errors import StoreUnavailableError
from gateway.revocation.redis import RedisRevocationStore
from tests.conftest import wait_until
from tests.fakes import FakeClock
from tests.redis_server import RedisServer, redis_unavailable

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
HOUR = 3600.0


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except RedisError as exc:
        redis_unavailable(f"no Redis answers at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL



@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex}:"


@pytest.fixture
async def admin(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client on REDIS_URL that deletes this test's keys afterwards."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    for start in range(0, len(keys), 1000):
        await client.delete(*keys[start : start + 1000])
    await client.aclose()


class StoreMaker:
    """Builds started stores and closes every one of them at teardown."""

    def __init__(self) -> None:
        self.made: list[RedisRevocationStore] = []

    async def __call__(
        self,
        url: str,
        prefix: str,
        *,
        clock: Clock = time.time,
        max_staleness: float = 30.0,
        socket_timeout: float = 2.0,
        purge_interval: float = 60.0,
        start: bool = True,
    ) -> RedisRevocationStore:
        store = RedisRevocationStore(
            url,
            clock=clock,
            key_prefix=prefix,
            max_staleness=max_staleness,
            socket_timeout=socket_timeout,
            purge_interval=purge_interval,
        )
        self.made.append(store)
        if start:
            await store.start()
        return store


@pytest.fixture
async def make_store() -> AsyncIterator[StoreMaker]:
    maker = StoreMaker()
    yield maker
    for store in maker.made:
        await store.close()


def answers(store: RedisRevocationStore, jti: str, subject: str = "nobody") -> bool | None:
    """`is_revoked` for a token issued an hour ago, or None where it fails closed."""
    try:
        return store.is_revoked(jti, subject, time.time() - HOUR)
    except StoreUnavailableError:
        return None


async def test_entries_expire_with_the_tokens_they_cover(
    redis_url: str, prefix: str, admin: aioredis.Redis, make_store: StoreMaker
) -> None:
    """Redis holds a revocation only while its tokens can still verify (PTTL bounded)."""
    store = RedisRevocationStore(
        redis_url, clock=time.time, key_prefix=prefix, longest_token_lifetime=120.0
    )
    make_store.made.append(store)
    await store.start()
    now = time.time()
    await store.revoke_token("jti-1", now + 60)
    await store.revoke_subject("alice", now, now + 30)
    token_ttl = await admin.pttl(f"{prefix}rt:jti-1")
    subject_ttl = await admin.pttl(f"{prefix}rs:alice")
    assert 50_000 < token_ttl <= 60_001
    assert 110_000 < subject_ttl <= 120_001  # at least the longest token lifetime


async def test_other_prefixes_are_ignored_even_with_glob_characters(
    redis_url: str, prefix: str, admin: aioredis.Redis, make_store: StoreMaker
) -> None:
    """The key prefix is literal: `p*:` never loads the keys of `px:`."""
    glob_prefix, other_prefix = f"{prefix}p*:", f"{prefix}px:"
    other = await make_store(redis_url, other_prefix)
    await other.revoke_token("jti-1", time.time() + HOUR)
    store = await make_store(redis_url, glob_prefix)
    assert answers(store, "jti-1") is False


async def test_reload_of_many_keys(
    redis_url: str, prefix: str, admin: aioredis.Redis, make_store: StoreMaker
) -> None:
    """start() loads every live revocation, here 20,000 of them, within a few seconds."""
    count, expires_ms = 20_000, int((time.time() + HOUR) * 1000)
    async with admin.pipeline(transaction=False) as pipe:
        for index in range(count):
            pipe.set(f"{prefix}rt:jti-{index}", str(expires_ms / 1000), pxat=expires_ms)
        pipe.set(f"{prefix}rs:alice", f"{time.time()} {expires_ms / 1000}", pxat=expires_ms)
        await pipe.execute()
    started = time.monotonic()
    store = await make_store(redis_url, prefix)
    assert time.monotonic() - started < 5.0
    assert len(store.cache) == count + 1
    assert answers(store, f"jti-{count - 1}") is True
    assert answers(store, "jti-x", "alice") is True


async def test_is_revoked_fails_closed_before_first_load(
    redis_url: str, prefix: str, make_store: StoreMaker
) -> None:
    """Until the first full load, every unknown token gets 503, never a guess."""
    store = await make_store(redis_url, prefix, start=False)
    with pytest.raises(StoreUnavailableError):
        store.is_revoked("jti-1", "alice", time.time())
    assert not store.status().ready


async def test_start_gives_up_when_redis_is_unreachable(dead_port: int, prefix: str) -> None:
    """start() raises a clear StoreUnavailableError after a bounded wait, not forever."""
    store = RedisRevocationStore(
        f"redis://:secret@127.0.0.1:{dead_port}/0",
        clock=time.time,
        key_prefix=prefix,
        start_timeout=0.5,
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="unreachable") as caught:
        await store.start()
    assert time.monotonic() - started < 2.0
    assert "secret" not in caught.value.message
    assert not store.status().ready


async def test_revoke_fails_fast_when_redis_is_killed(
    redis_server: RedisServer, prefix: str, make_store: StoreMaker
) -> None:
    """With Redis gone, logout answers 503 within 3 s and claims nothing."""
    store = await make_store(redis_server.url, prefix)
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        await store.revoke_token("jti-1", time.time() + HOUR)
    assert time.monotonic() - started < 3.0
    assert caught.value.headers()["Retry-After"] == "1"
    assert answers(store, "jti-1") is False


async def test_cache_answers_until_max_staleness_then_fails_closed(
    redis_server: RedisServer, prefix: str, make_store: StoreMaker, clock: FakeClock
) -> None:
    """Cut off from Redis, the cache serves up to max_staleness; after that misses get 503."""
    store = await make_store(redis_server.url, prefix, clock=clock, max_staleness=30.0)
    await store.revoke_token("revoked", clock() + HOUR)
    redis_server.kill()
    await wait_until(lambda: "unreachable" in store.status().detail, 3.0, "link loss seen")
    clock.advance(29.0)
    assert answers(store, "revoked") is True
    assert answers(store, "other") is False
    assert store.status().ready
    clock.advance(2.0)
    assert answers(store, "other") is None
    assert answers(store, "revoked") is True  # a known revocation is still a 401
    assert not store.status().ready
    assert "unreachable" in store.status().detail


async def test_store_recovers_within_five_seconds_after_restart(
    redis_server: RedisServer, prefix: str, make_store: StoreMaker
) -> None:
    """After Redis returns, the store is ready again within 5 s and has what it missed."""
    b = await make_store(redis_server.url, prefix, max_staleness=1.0, socket_timeout=0.5)
    redis_server.kill()
    await wait_until(lambda: answers(b, "x") is None, 5.0, "B fails closed while cut off")
    assert not b.status().ready
    redis_server.restart()
    restarted = time.monotonic()
    a = await make_store(redis_server.url, prefix)
    await a.revoke_token("while-away", time.time() + HOUR)
    await wait_until(lambda: b.status().ready, 5.0, "B ready after restart")
    await wait_until(lambda: answers(b, "while-away") is True, 5.0, "B has A's revocation")
    assert time.monotonic() - restarted < 5.0
    assert answers(b, "x") is False


async def test_reconnect_reloads_revocations_whose_messages_were_missed(
    redis_server: RedisServer, prefix: str, make_store: StoreMaker
) -> None:
    """Pub/sub drops messages while disconnected, so every reconnect reloads the full set."""
    store = await make_store(redis_server.url, prefix)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        expires_at = time.time() + HOUR
        # Written without PUBLISH: only a reload can find it.
        await admin.set(f"{prefix}rt:missed", repr(expires_at), pxat=int(expires_at * 1000))
        await asyncio.sleep(0.1)
        assert answers(store, "missed") is False
        # By id: whether a RESP3 subscriber counts as TYPE pubsub depends on the version.
        for client in await admin.client_list():
            if int(client["sub"]) > 0:
                await admin.client_kill_filter(_id=client["id"])
    finally:
        await admin.aclose()
    await wait_until(lambda: answers(store, "missed") is True, 5.0, "reload after reconnect")


async def test_frozen_redis_makes_the_cache_stale(
    redis_server: RedisServer, prefix: str, make_store: StoreMaker
) -> None:
    """A Redis that accepts but never answers is noticed by the PING check: fail closed."""
    store = await make_store(redis_server.url, prefix, max_staleness=1.0, socket_timeout=0.5)
    redis_server.stop()
    took = await wait_until(lambda: answers(store, "x") is None, 3.0, "stale while frozen")
    assert took > 0.5  # it kept answering from the cache at first
    redis_server.cont()
    await wait_until(lambda: answers(store, "x") is False, 5.0, "in sync after SIGCONT")
