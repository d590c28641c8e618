"""MemoryRevocationStore: revocation semantics, expiry purge, and refusing rather than evicting."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.errors import StoreUnavailableError
from gateway.revocation import StoreStatus
from gateway.revocation.memory import MemoryRevocationStore
from tests.fakes import FakeClock

HOUR = 3600.0


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[MemoryRevocationStore]:
    memory = MemoryRevocationStore(clock=clock, max_entries=100)
    await memory.start()
    yield memory
    await memory.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition()` until true; TimeoutError at the deadline instead of hanging."""
    # Polling is the point: the state changes in a background task or another process,
    # neither of which can set an asyncio.Event for the test.
    async with asyncio.timeout(2.0):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_revoked_jti_is_revoked_and_other_jti_is_not(
    store: MemoryRevocationStore, clock: FakeClock
) -> None:
    """A revoked jti is rejected; a different jti of the same subject is not."""
    await store.revoke_token("jti-a", clock() + HOUR)
    assert store.is_revoked("jti-a", "marco", clock())
    assert not store.is_revoked("jti-b", "marco", clock())


@pytest.mark.parametrize(
    ("issued_offset", "revoked"),
    [(-10.0, True), (0.0, True), (0.001, False)],
    ids=["before-cutoff", "at-cutoff", "1ms-after-cutoff"],
)
async def test_logout_all_cutoff_rejects_tokens_issued_up_to_it(
    store: MemoryRevocationStore, clock: FakeClock, issued_offset: float, revoked: bool
) -> None:
    """logout_all rejects tokens issued at or before the cutoff, accepts one 1 ms after."""
    cutoff = clock()
    await store.revoke_subject("marco", cutoff, cutoff + HOUR)
    assert store.is_revoked("any-jti", "marco", cutoff + issued_offset) is revoked
    assert not store.is_revoked("any-jti", "other-user", cutoff - 10.0)


async def test_cutoff_only_moves_forward(store: MemoryRevocationStore, clock: FakeClock) -> None:
    """An older logout_all arriving later does not un-revoke tokens of a newer one."""
    now = clock()
    await store.revoke_subject("marco", now, now + HOUR)
    await store.revoke_subject("marco", now - 100.0, now + HOUR)
    assert store.is_revoked("jti", "marco", now - 50.0)
    assert store.is_revoked("jti", "marco", now)


async def test_purge_drops_expired_entries_and_keeps_live_ones(
    store: MemoryRevocationStore, clock: FakeClock
) -> None:
    """Entries past their token's expiry are purged; live entries stay revoked."""
    now = clock()
    await store.revoke_token("short", now + 10.0)
    await store.revoke_subject("short-user", now, now + 10.0)
    await store.revoke_token("long", now + HOUR)
    await store.revoke_subject("long-user", now, now + HOUR)
    clock.advance(11.0)
    assert store.purge_expired() == 2
    assert len(store.cache) == 2
    assert not store.is_revoked("short", "x", now)
    assert not store.is_revoked("jti", "short-user", now)
    assert store.is_revoked("long", "x", now)
    assert store.is_revoked("jti", "long-user", now)


async def test_background_task_purges_expired_entries(clock: FakeClock) -> None:
    """start() runs the purge periodically, without anyone calling it."""
    store = MemoryRevocationStore(clock=clock, max_entries=10, purge_interval=0.01)
    await store.start()
    try:
        await store.revoke_token("short", clock() + 10.0)
        await store.revoke_token("long", clock() + HOUR)
        clock.advance(11.0)
        await wait_until(lambda: len(store.cache) == 1)
        assert store.is_revoked("long", "x", clock())
    finally:
        await store.close()


class FailingOnceClock(FakeClock):
    """A fake clock whose next reading raises, to prove the purge task survives errors."""

    fail_next = False

    def __call__(self) -> float:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("clock broke")
        return self.now


async def test_background_purge_logs_errors_and_keeps_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in one purge round is logged and the next round still purges."""
    clock = FailingOnceClock()
    store = MemoryRevocationStore(clock=clock, max_entries=10, purge_interval=0.01)
    await store.revoke_token("short", clock() + 10.0)
    clock.advance(11.0)
    clock.fail_next = True
    with caplog.at_level(logging.ERROR, logger="gateway.revocation.memory"):
        await store.start()
        try:
            await wait_until(lambda: len(store.cache) == 0)
        finally:
            await store.close()
    assert "revocation_purge_failed" in caplog.text


async def test_full_store_refuses_new_revocation_while_entries_live(clock: FakeClock) -> None:
    """When full of live revocations, a new one gets StoreUnavailableError; none is evicted."""
    store = MemoryRevocationStore(clock=clock, max_entries=2)
    await store.revoke_token("a", clock() + HOUR)
    await store.revoke_subject("marco", clock(), clock() + HOUR)
    with pytest.raises(StoreUnavailableError, match="full"):
        await store.revoke_token("c", clock() + HOUR)
    with pytest.raises(StoreUnavailableError, match="full"):
        await store.revoke_subject("other", clock(), clock() + HOUR)
    assert store.is_revoked("a", "x", clock())
    assert store.is_revoked("jti", "marco", clock())
    assert not store.is_revoked("c", "x", clock())


async def test_full_store_accepts_again_once_entries_expired(clock: FakeClock) -> None:
    """A full store purges expired entries itself and then accepts the new revocation."""
    store = MemoryRevocationStore(clock=clock, max_entries=2)
    await store.revoke_token("a", clock() + 10.0)
    await store.revoke_token("b", clock() + 10.0)
    clock.advance(11.0)
    await store.revoke_token("c", clock() + HOUR)
    await store.revoke_subject("marco", clock(), clock() + HOUR)
    assert store.is_revoked("c", "x", clock())
    assert store.is_revoked("jti", "marco", clock())
    assert len(store.cache) == 2


async def test_repeated_revocation_succeeds_when_full(clock: FakeClock) -> None:
    """Repeating a logout or logout_all already stored needs no room, so a full store accepts it."""
    store = MemoryRevocationStore(clock=clock, max_entries=2)
    await store.revoke_token("a", clock() + HOUR)
    await store.revoke_subject("marco", clock(), clock() + HOUR)
    await store.revoke_token("a", clock() + HOUR)
    await store.revoke_subject("marco", clock() + 5.0, clock() + HOUR)
    assert store.is_revoked("jti", "marco", clock() + 5.0)
    assert len(store.cache) == 2


async def test_status_is_ready(store: MemoryRevocationStore) -> None:
    """The memory store is always ready and says what it is."""
    assert store.status() == StoreStatus(ready=True, detail="memory")


async def test_close_stops_the_purge_task(clock: FakeClock) -> None:
    """close() cancels the background task so no purge runs after shutdown."""
    store = MemoryRevocationStore(clock=clock, max_entries=10, purge_interval=0.01)
    await store.start()
    task = store._purge_task
    assert task is not None
    await store.close()
    assert task.done()
    assert store._purge_task is None


def test_rejects_non_positive_capacity(clock: FakeClock) -> None:
    """A store that could hold nothing is a configuration mistake, refused at construction."""
    with pytest.raises(ValueError, match="max_entries"):
        MemoryRevocationStore(clock=clock, max_entries=0)
