"""Failed-login limiting (DESIGN.md §4: 429 with Retry-After per username and client address)."""

from __future__ import annotations

import pytest

from gateway.auth_api import address_limit_key
from gateway.ratelimit import FailureLimiter
from tests.fakes import FakeClock

MAX = 3
WINDOW = 60.0
START = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def limiter(clock: FakeClock) -> FailureLimiter:
    return FailureLimiter(max_failures=MAX, window=WINDOW, clock=clock)


@pytest.mark.parametrize("failures", [0, 1, MAX - 1], ids=["none", "one", "max-minus-one"])
def test_below_max_failures_nothing_is_blocked(
    limiter: FailureLimiter, failures: int
) -> None:
    """Fewer than max_failures failures inside the window do not block."""
    for _ in range(failures):
        limiter.record_failure("user:marco")
    assert limiter.retry_after("user:marco") is None


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [(0.0, 60), (10.0, 40), (0.4, 60), (19.7, 21)],
    ids=["all-at-once", "ten-seconds-apart", "sub-second-apart", "fractional-wait-rounds-up"],
)
def test_at_max_failures_the_key_is_blocked_until_the_oldest_leaves_the_window(
    limiter: FailureLimiter, clock: FakeClock, spacing: float, expected: int
) -> None:
    """At max_failures, Retry-After is the whole seconds (rounded up) until a slot frees."""
    for i in range(MAX):
        clock.advance(spacing if i else 0.0)
        limiter.record_failure("user:marco")
    retry_after = limiter.retry_after("user:marco")
    assert retry_after == expected
    assert 1 <= retry_after <= WINDOW


def test_retry_after_is_at_least_one_second(limiter: FailureLimiter, clock: FakeClock) -> None:
    """Just before the window frees a slot, Retry-After is still 1, never 0."""
    for _ in range(MAX):
        limiter.record_failure("user:marco")
    clock.advance(WINDOW - 0.001)
    assert limiter.retry_after("user:marco") == 1


def test_window_slides(limiter: FailureLimiter, clock: FakeClock) -> None:
    """Failures older than the window stop counting; newer ones keep counting."""
    for _ in range(MAX):
        limiter.record_failure("user:marco")
        clock.advance(10)
    # failures at +0, +10, +20; now +30
    assert limiter.retry_after("user:marco") == 30
    clock.advance(30)  # +60: the first failure leaves the window
    assert limiter.retry_after("user:marco") is None
    limiter.record_failure("user:marco")  # +10, +20, +60
    assert limiter.retry_after("user:marco") == 10
    clock.advance(10)  # +70: +10 leaves
    assert limiter.retry_after("user:marco") is None


def test_long_idle_key_starts_from_zero(limiter: FailureLimiter, clock: FakeClock) -> None:
    """After a whole quiet window, the earlier failures are forgotten entirely."""
    for _ in range(MAX):
        limiter.record_failure("user:marco")
    clock.advance(WINDOW * 10)
    assert limiter.retry_after("user:marco") is None
    for _ in range(MAX - 1):
        limiter.record_failure("user:marco")
    assert limiter.retry_after("user:marco") is None


def test_keys_are_independent(limiter: FailureLimiter) -> None:
    """Failures of one username or address never block another."""
    for _ in range(MAX):
        limiter.record_failure("user:marco", "ip:203.0.113.7")
    assert limiter.retry_after("user:marco") == WINDOW
    assert limiter.retry_after("ip:203.0.113.7") == WINDOW
    assert limiter.retry_after("user:alice") is None
    assert limiter.retry_after("user:alice", "ip:198.51.100.1") is None


def test_any_blocked_key_blocks_and_the_longest_wait_wins(
    limiter: FailureLimiter, clock: FakeClock
) -> None:
    """retry_after over several keys (username, address) answers the longest wait."""
    for _ in range(MAX):
        limiter.record_failure("user:marco")
    clock.advance(20)
    for _ in range(MAX):
        limiter.record_failure("ip:203.0.113.7")
    assert limiter.retry_after("user:marco") == 40
    assert limiter.retry_after("user:marco", "ip:203.0.113.7") == 60
    assert limiter.retry_after("user:alice", "user:marco") == 40


def test_reset_unblocks_only_that_key(limiter: FailureLimiter) -> None:
    """reset (after a successful login) forgets that key's failures, and only that key's."""
    for _ in range(MAX):
        limiter.record_failure("user:marco", "ip:203.0.113.7")
    limiter.reset("user:marco")
    assert limiter.retry_after("user:marco") is None
    assert limiter.retry_after("ip:203.0.113.7") == WINDOW
    limiter.reset("user:never-seen")  # resetting an unknown key is harmless
    for _ in range(MAX - 1):
        limiter.record_failure("user:marco")
    assert limiter.retry_after("user:marco") is None


def test_attempts_in_flight_count_until_they_end(limiter: FailureLimiter) -> None:
    """Checks in flight count as failures (concurrent guesses cannot all pass the check);
    once ended, only the failures recorded count."""
    limiter.record_failure("user:marco")
    for _ in range(MAX - 1):
        limiter.begin("user:marco", "ip:203.0.113.7")
    assert limiter.retry_after("user:marco") == 1
    assert limiter.retry_after("ip:203.0.113.7") is None
    limiter.end("user:marco", "ip:203.0.113.7")
    assert limiter.retry_after("user:marco") is None
    limiter.begin("user:marco")
    limiter.record_failure("user:marco")
    limiter.end("user:marco")
    limiter.end("user:marco", "ip:203.0.113.7")
    assert limiter.retry_after("user:marco") is None
    limiter.record_failure("user:marco")
    assert limiter.retry_after("user:marco") == WINDOW


@pytest.mark.parametrize(("first", "second", "same"), [
    ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff", True),   # one /64
    ("2001:db8:1:2::1", "2001:db8:1:3::1", False),                  # the next /64
    ("::ffff:203.0.113.7", "203.0.113.7", True),                     # IPv4-mapped
    ("203.0.113.7", "203.0.113.8", False),                           # IPv4: per address
], ids=["ipv6-same-64", "ipv6-other-64", "ipv4-mapped", "ipv4-neighbours"])
def test_login_address_key_counts_an_ipv6_client_by_its_64(first: str, second: str,
                                                            same: bool) -> None:
    """An IPv6 host usually holds a whole /64: keyed per address it would get 2^64 limits."""
    assert (address_limit_key(first) == address_limit_key(second)) is same


def test_login_address_key_of_an_unparsable_remote_is_still_a_key() -> None:
    assert address_limit_key(None) == "addr:unknown"
    assert address_limit_key("unix-socket") == "addr:unix-socket"
