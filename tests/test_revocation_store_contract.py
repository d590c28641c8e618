"""The RevocationStore contract, run over every store on real parts: memory, SQLite, Redis.

What all stores promise is pinned here once. What only one store does (SQLite's file, WAL and
change feed; Redis's pub/sub, reconnects and key expiry; the memory store's capacity) stays
in `test_revocation_<store>.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from gateway.errors import StoreUnavailableError
from gateway.revocation.memory import MemoryRevocationStore
from gateway.revocation.redis import RedisRevocationStore
from gateway.revocation.sqlite import SqliteRevocationStore
from tests.conftest import wait_until
from tests.fakes import FakeClock
from tests.redis_server import RedisServer

HOUR = 3600.0
MEMORY_CAPACITY = 100

Store = MemoryRevocationStore | SqliteRevocationStore | RedisRevocationStore
Options = Mapping[str, float]

ALL_STORES = ["memory", "sqlite", "redis"]
DURABLE_STORES = ["sqlite", "redis"]  # a store opened again still knows every revocation
SHARED_STORES = ["sqlite", "redis"]  # stores on one file / one Redis see each other's writes
PURGEABLE_STORES = ["memory", "sqlite"]  # they offer purge_expired(); Redis expires its keys

# The live store, and for durable stores also a new one opened on what the first stored.
LIVE_AND_AFTER_RESTART = pytest.mark.parametrize(
    ("kind", "restart"),
    [(name, False) for name in ALL_STORES] + [(name, True) for name in DURABLE_STORES],
    ids=[f"{name}-live" for name in ALL_STORES]
    + [f"{name}-after-restart" for name in DURABLE_STORES],
    indirect=["kind"],
)
CUTOFF_CASES = pytest.mark.parametrize(
    ("issued_offset", "revoked"),
    [(-10.0, True), (0.0, True), (0.000_01, False), (0.001, False)],
    ids=["before-cutoff", "at-cutoff", "10us-after-cutoff", "1ms-after-cutoff"],
)


class StoreKind:
    """How to open one kind of store on real parts, and how to make its writes fail."""

    ready_detail = ""
    """Pattern that `status().detail` matches once the store is started."""
    fail_fast_options: ClassVar[Options] = {}
    """Constructor options under which a refused write gives up quickly."""
    refusal_within = 0.0
    """Seconds within which a refused write must fail under `fail_fast_options`."""
    purge_only_options: ClassVar[Options] = {}
    """Constructor options under which only the purge task reads the clock."""

    def __init__(self) -> None:
        self.opened: list[Store] = []

    async def open(self, clock: FakeClock, **options: float) -> Store:
        """A started store; every store opened is closed at teardown."""
        store = self._make(clock, options)
        self.opened.append(store)
        await store.start()
        return store

    async def close_all(self) -> None:
        for store in self.opened:
            await store.close()

    def _make(self, clock: FakeClock, options: Options) -> Store:
        raise NotImplementedError

    def refusing(
        self, store: Store, clock: FakeClock
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """While inside, the store cannot make a revocation durable; afterwards it can."""
        raise NotImplementedError

    async def purge_now(self, store: Store) -> int:
        """Run the store's own purge once; returns what it reports as removed."""
        raise NotImplementedError


class MemoryKind(StoreKind):
    ready_detail = "memory"
    refusal_within = 0.3

    def _make(self, clock: FakeClock, options: Options) -> Store:
        return MemoryRevocationStore(clock=clock, max_entries=MEMORY_CAPACITY, **options)

    @contextlib.asynccontextmanager
    async def refusing(self, store: Store, clock: FakeClock) -> AsyncIterator[None]:
        """Full of live revocations: the memory store refuses rather than evict one."""
        for index in range(MEMORY_CAPACITY - len(store.cache)):
            await store.revoke_token(f"filler-{index}", clock() + 10.0)
        yield
        clock.advance(11.0)  # the fillers' tokens expire: room again

    async def purge_now(self, store: Store) -> int:
        assert isinstance(store, MemoryRevocationStore)
        return store.purge_expired()


class SqliteKind(StoreKind):
    ready_detail = "sqlite"
    fail_fast_options: ClassVar[Options] = {"busy_timeout": 0.05}
    refusal_within = 0.05 + 0.3
    # The change-feed follower reads the clock too; an hour apart it stays out of the way.
    purge_only_options: ClassVar[Options] = {"sync_interval": HOUR}

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _make(self, clock: FakeClock, options: Options) -> Store:
        return SqliteRevocationStore(self.path, clock=clock, **{"sync_interval": 0.01, **options})

    @contextlib.asynccontextmanager
    async def refusing(self, store: Store, clock: FakeClock) -> AsyncIterator[None]:
        """Another worker holds the write lock on the same file."""
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            yield
            other.execute("ROLLBACK")

    async def purge_now(self, store: Store) -> int:
        assert isinstance(store, SqliteRevocationStore)
        return await store.purge_expired()


class RedisKind(StoreKind):
    ready_detail = r"in sync \(\d+ entries\)"
    fail_fast_options: ClassVar[Options] = {"socket_timeout": 0.5}
    refusal_within = 0.5 + 0.3

    def __init__(self, server: RedisServer) -> None:
        super().__init__()
        self.server = server

    def _make(self, clock: FakeClock, options: Options) -> Store:
        # Redis keeps a cutoff for at least the longest token lifetime; with the 5 s
        # lifetime of these tests the caller's expiry (10 s or an hour) is the one kept.
        unknown = set(options) - {"purge_interval", "socket_timeout"}
        assert not unknown, unknown
        return RedisRevocationStore(
            self.server.url,
            clock=clock,
            longest_token_lifetime=5.0,
            purge_interval=options.get("purge_interval", 60.0),
            socket_timeout=options.get("socket_timeout", 2.0),
        )

    @contextlib.asynccontextmanager
    async def refusing(self, store: Store, clock: FakeClock) -> AsyncIterator[None]:
        """Redis is frozen (SIGSTOP): connected, answering nothing."""
        self.server.stop()
        try:
            yield
        finally:
            self.server.cont()


@pytest.fixture(params=ALL_STORES)
async def kind(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreKind]:
    """One kind of store; Redis is a private real server (skipped or failed when missing)."""
    made: StoreKind
    if request.param == "memory":
        made = MemoryKind()
    elif request.param == "sqlite":
        made = SqliteKind(tmp_path / "data" / "revocations.db")
    else:
        made = RedisKind(request.getfixturevalue("redis_server"))
    yield made
    await made.close_all()


class FailingOnceClock(FakeClock):
    """A fake clock whose next reading raises, to prove the purge task survives errors."""

    fail_next = False

    def __call__(self) -> float:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("clock broke")
        return self.now


async def restarted(kind: StoreKind, store: Store, clock: FakeClock) -> Store:
    """Close `store` and open a new one on the same file or Redis, as a gateway restart does."""
    await store.close()
    return await kind.open(clock)


async def test_revoked_token_id_is_revoked_and_another_is_not(
    kind: StoreKind, clock: FakeClock
) -> None:
    """A revoked jti is rejected, also when revoked twice; another jti of its subject is not."""
    store = await kind.open(clock)
    await store.revoke_token("jti-a", clock() + HOUR)
    await store.revoke_token("jti-a", clock() + HOUR)  # logout is repeatable
    assert store.is_revoked("jti-a", "marco", clock())
    assert not store.is_revoked("jti-b", "marco", clock())


@LIVE_AND_AFTER_RESTART
@CUTOFF_CASES
async def test_logout_all_rejects_tokens_issued_up_to_the_cutoff(
    kind: StoreKind, clock: FakeClock, restart: bool, issued_offset: float, revoked: bool
) -> None:
    """logout_all rejects the subject's tokens issued at or before the cutoff, none after."""
    cutoff = clock()
    store = await kind.open(clock)
    await store.revoke_subject("marco", cutoff, cutoff + HOUR)
    store = await restarted(kind, store, clock) if restart else store
    assert store.is_revoked("any-jti", "marco", cutoff + issued_offset) is revoked
    assert not store.is_revoked("any-jti", "other-user", cutoff - 10.0)


def assert_newer_cutoff_holds(store: Store, newer: float) -> None:
    """The later cutoff `newer` is in force: tokens up to it are revoked, none after."""
    assert store.is_revoked("jti", "marco", newer - 50.0)
    assert store.is_revoked("jti", "marco", newer)
    assert not store.is_revoked("jti", "marco", newer + 0.000_01)


@LIVE_AND_AFTER_RESTART
async def test_cutoff_only_moves_forward(kind: StoreKind, clock: FakeClock, restart: bool) -> None:
    """An older logout_all stored after a newer one un-revokes nothing, also once reloaded."""
    now = clock()
    store = await kind.open(clock)
    await store.revoke_subject("marco", now, now + HOUR)
    await store.revoke_subject("marco", now - 100.0, now + HOUR)
    store = await restarted(kind, store, clock) if restart else store
    assert_newer_cutoff_holds(store, now)


@pytest.mark.parametrize("kind", DURABLE_STORES, indirect=True)
async def test_revocations_are_loaded_before_start_returns_after_a_restart(
    kind: StoreKind, clock: FakeClock
) -> None:
    """A store opened again is ready with every logout and logout_all made before it."""
    cutoff = clock()
    first = await kind.open(clock)
    await first.revoke_token("jti-a", cutoff + HOUR)
    await first.revoke_subject("alice smith", cutoff, cutoff + HOUR)
    reopened = await restarted(kind, first, clock)
    assert reopened.status().ready
    assert reopened.is_revoked("jti-a", "marco", cutoff)
    assert not reopened.is_revoked("jti-b", "marco", cutoff)
    assert reopened.is_revoked("jti-other", "alice smith", cutoff - HOUR)
    assert not reopened.is_revoked("jti-other", "bob", cutoff - HOUR)


@pytest.mark.parametrize("kind", SHARED_STORES, indirect=True)
async def test_revocations_reach_another_running_store_within_half_a_second(
    kind: StoreKind, clock: FakeClock
) -> None:
    """Another store on the same file / Redis learns a logout and a logout_all while running."""
    writer, reader = await kind.open(clock), await kind.open(clock)
    cutoff = clock()
    await writer.revoke_token("jti-a", cutoff + HOUR)
    await wait_until(lambda: reader.is_revoked("jti-a", "x", cutoff), 0.5, "reader sees the logout")
    await writer.revoke_subject("alice smith", cutoff, cutoff + HOUR)
    await wait_until(
        lambda: reader.is_revoked("jti-b", "alice smith", cutoff), 0.5, "reader sees logout_all"
    )
    assert not reader.is_revoked("jti-b", "x", cutoff)
    assert not reader.is_revoked("jti-b", "alice smith", cutoff + 0.000_01)


@pytest.mark.parametrize("kind", SHARED_STORES, indirect=True)
async def test_older_cutoff_from_another_store_never_replaces_a_newer_one(
    kind: StoreKind, clock: FakeClock
) -> None:
    """A late logout_all with an earlier cutoff, written by another gateway, changes nothing."""
    a, b = await kind.open(clock), await kind.open(clock)
    cutoff = clock()
    await a.revoke_subject("marco", cutoff, cutoff + HOUR)
    await wait_until(lambda: b.is_revoked("t1", "marco", cutoff), 0.5, "b sees a's cutoff")
    await b.revoke_subject("marco", cutoff - 60.0, cutoff + HOUR)
    # Written after the older cutoff: once `a` has it, it has applied the older one too.
    await b.revoke_token("marker", cutoff + HOUR)
    await wait_until(lambda: a.is_revoked("marker", "x", cutoff), 0.5, "a sees b's writes")
    c = await kind.open(clock)
    for store in (a, b, c):
        assert_newer_cutoff_holds(store, cutoff)


async def revoke_short_and_long_lived(store: Store, now: float) -> None:
    """Two revocations whose tokens expire in 10 s, two whose tokens live an hour."""
    await store.revoke_token("short", now + 10.0)
    await store.revoke_subject("short-user", now, now + 10.0)
    await store.revoke_token("long", now + HOUR)
    await store.revoke_subject("long-user", now, now + HOUR)


def assert_only_long_lived_remain(store: Store, now: float) -> None:
    assert len(store.cache) == 2
    assert not store.is_revoked("short", "x", now)
    assert not store.is_revoked("jti", "short-user", now)
    assert store.is_revoked("long", "x", now)
    assert store.is_revoked("jti", "long-user", now)


async def test_background_purge_drops_expired_revocations_and_keeps_live_ones(
    kind: StoreKind, clock: FakeClock
) -> None:
    """Without anyone calling it, the store forgets revocations of expired tokens, only those."""
    store = await kind.open(clock, purge_interval=0.01)
    now = clock()
    await revoke_short_and_long_lived(store, now)
    clock.advance(11.0)
    await wait_until(lambda: len(store.cache) == 2, 2.0, "background purge")
    assert_only_long_lived_remain(store, now)


@pytest.mark.parametrize("kind", PURGEABLE_STORES, indirect=True)
async def test_purge_expired_drops_expired_revocations_and_reports_how_many(
    kind: StoreKind, clock: FakeClock
) -> None:
    """purge_expired() removes the two expired revocations, says 2, and keeps the live ones."""
    store = await kind.open(clock)
    now = clock()
    await revoke_short_and_long_lived(store, now)
    clock.advance(11.0)
    assert await kind.purge_now(store) == 2
    assert_only_long_lived_remain(store, now)


@pytest.mark.parametrize("kind", ALL_STORES, indirect=True)
async def test_background_purge_logs_a_failed_round_and_keeps_purging(
    kind: StoreKind, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in one purge round is logged and the next round still purges."""
    clock = FailingOnceClock()
    store = await kind.open(clock, purge_interval=0.01, **kind.purge_only_options)
    await store.revoke_token("short", clock() + 10.0)
    clock.advance(11.0)
    with caplog.at_level(logging.ERROR, logger="gateway.revocation"):
        clock.fail_next = True
        await wait_until(lambda: len(store.cache) == 0, 2.0, "purge after the failed round")
    assert not clock.fail_next
    assert "revocation_purge_failed" in caplog.text


async def test_status_is_ready_once_started(kind: StoreKind, clock: FakeClock) -> None:
    """After start() returns, /readyz reports the store ready and names it."""
    status = (await kind.open(clock)).status()
    assert status.ready
    assert re.fullmatch(kind.ready_detail, status.detail), status.detail


async def test_close_leaves_no_background_task_running(kind: StoreKind, clock: FakeClock) -> None:
    """close() ends every task start() began, so nothing purges or follows after shutdown."""
    before = asyncio.all_tasks()
    store = await kind.open(clock, purge_interval=0.01)
    started = asyncio.all_tasks() - before
    assert started
    await store.close()
    assert all(task.done() for task in started), started


async def test_refused_write_fails_fast_claims_nothing_and_succeeds_once_possible(
    kind: StoreKind, clock: FakeClock
) -> None:
    """A logout the store cannot make durable is a quick 503, never a revocation; later it works."""
    store = await kind.open(clock, **kind.fail_fast_options)
    writes: list[Callable[[], Awaitable[None]]] = [
        lambda: store.revoke_token("jti-refused", clock() + HOUR),
        lambda: store.revoke_subject("refused-user", clock(), clock() + HOUR),
    ]
    async with kind.refusing(store, clock):
        for write in writes:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                await write()
            assert time.monotonic() - started < kind.refusal_within
        assert not store.is_revoked("jti-refused", "refused-user", clock() - 1.0)
    for write in writes:
        await write()
    assert store.is_revoked("jti-refused", "x", clock())
    assert store.is_revoked("jti", "refused-user", clock() - 1.0)
