"""RevocationCache: entries live until their expiry second, and purge drops exactly those."""

from __future__ import annotations

import pytest

from gateway.revocation import RevocationCache

NOW = 1_800_000_000.0


def test_entry_is_kept_until_the_next_whole_second_never_shorter() -> None:
    """An id revoked until 10.2 s from now stays revoked at 10.2 s and goes at 11 s."""
    cache = RevocationCache()
    cache.add_token("a", NOW + 10.2)
    assert cache.purge(NOW + 10.2) == 0
    assert cache.is_revoked("a", "marco", NOW)
    assert cache.purge(NOW + 11.0) == 1
    assert not cache.is_revoked("a", "marco", NOW)


def test_revoking_again_until_later_survives_the_purge_of_the_earlier_second() -> None:
    """An id revoked again with a later expiry is not dropped when its first second is due."""
    cache = RevocationCache()
    cache.add_token("a", NOW + 10.0)
    cache.add_token("a", NOW + 100.0)
    assert cache.purge(NOW + 50.0) == 0
    assert cache.is_revoked("a", "marco", NOW)
    assert cache.purge(NOW + 100.0) == 1
    assert len(cache) == 0


def test_revoking_again_until_earlier_never_shortens_the_entry() -> None:
    """A later revocation with an earlier expiry leaves the longer one in place."""
    cache = RevocationCache()
    cache.add_token("a", NOW + 100.0)
    cache.add_token("a", NOW + 10.0)
    assert cache.purge(NOW + 50.0) == 0
    assert cache.is_revoked("a", "marco", NOW)


def test_revoking_the_same_id_twice_counts_it_once() -> None:
    """The same id and expiry twice is one entry, purged once."""
    cache = RevocationCache()
    cache.add_token("a", NOW + 10.0)
    cache.add_token("a", NOW + 10.0)
    assert len(cache) == 1
    assert cache.purge(NOW + 10.0) == 1


@pytest.mark.parametrize("purge_at", [0.0, 1.0, 499.0, 500.0, 999.0, 1000.0],
                         ids=lambda s: f"now+{s:g}s")
def test_purge_drops_exactly_the_expired_entries(purge_at: float) -> None:
    """Of entries expiring over 1,000 seconds, a purge drops those due and keeps the rest."""
    cache = RevocationCache()
    for index in range(1000):
        cache.add_token(f"jti-{index}", NOW + index + 1)
    cache.add_cutoff("marco", NOW, NOW + 500.0)
    expected = int(purge_at) + (1 if purge_at >= 500.0 else 0)
    assert cache.purge(NOW + purge_at) == expected
    assert len(cache) == 1001 - expected
    for index in range(1000):
        assert cache.has_token(f"jti-{index}") is (NOW + index + 1 > NOW + purge_at)
    assert cache.has_subject("marco") is (purge_at < 500.0)


def test_purging_twice_drops_nothing_the_second_time() -> None:
    """A purge with nothing newly due removes nothing and keeps every live entry."""
    cache = RevocationCache()
    cache.add_token("short", NOW + 5.0)
    cache.add_token("long", NOW + 500.0)
    assert cache.purge(NOW + 10.0) == 1
    assert cache.purge(NOW + 10.0) == 0
    assert cache.has_token("long")


def test_an_id_revoked_after_its_minute_was_purged_is_purged_later_too() -> None:
    """A revocation arriving with an expiry already purged past is still dropped later."""
    cache = RevocationCache()
    cache.add_token("a", NOW + 5.0)
    assert cache.purge(NOW + 120.0) == 1
    cache.add_token("late", NOW + 30.0)  # e.g. a slow replica's old row
    assert cache.has_token("late")
    assert cache.purge(NOW + 120.0) == 1
    assert not cache.has_token("late")


def test_nothing_is_left_behind_once_every_entry_expired() -> None:
    """The purge leaves no bookkeeping of expired seconds: memory stays bounded by live ids."""
    cache = RevocationCache()
    for index in range(500):
        cache.add_token(f"jti-{index}", NOW + index * 7.3)
        cache.add_token(f"jti-{index}", NOW + index * 7.3 + 90.0)  # revoked again, later
    assert cache.purge(NOW + 10_000.0) == 500
    assert len(cache) == 0
    # white-box: the per-second floats and per-minute lists went with their entries
    assert not cache._expiries and not cache._buckets and not cache._upcoming
