"""MemoryRevocationStore: its capacity, refusing rather than evicting.

What every store promises is in test_revocation_store_contract.py.
"""

from __future__ import annotations

import pytest

from gateway.errors import StoreUnavailableError
from gateway.revocation.memory import MemoryRevocationStore
from tests.fakes import FakeClock

HOUR = 3600.0


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


def test_rejects_non_positive_capacity(clock: FakeClock) -> None:
    """A store that could hold nothing is a configuration mistake, refused at construction."""
    with pytest.raises(ValueError, match="max_entries"):
        MemoryRevocationStore(clock=clock, max_entries=0)
