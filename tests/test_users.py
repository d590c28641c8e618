"""Password hashing, checking and the users file (DESIGN.md §3 users, §4 /user/login)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import argon2
import bcrypt
import pytest

from gateway.config import Users
from gateway.errors import ConfigError
from gateway.users import (
    InlineCredentials,
    PasswordChecker,
    build_credentials,
    hash_password,
    load_users_file,
    verify_password,
)

PASSWORD = "correct horse battery staple"
# Real-cost argon2id hash, made once: hashing takes ~0.1-0.5 s.
ARGON2_HASH = hash_password(PASSWORD)
# Cheap argon2id and bcrypt hashes where the cost is not what a test is about.
CHEAP_ARGON2_HASH = argon2.PasswordHasher(time_cost=1, memory_cost=1024,
                                          parallelism=1).hash(PASSWORD)
BCRYPT_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
LONG_72 = "p" * 72
BCRYPT_72_HASH = bcrypt.hashpw(LONG_72.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_hash_password_makes_an_argon2id_hash_that_verifies() -> None:
    """hash_password gives argon2id; the right password verifies, a wrong one does not."""
    assert ARGON2_HASH.startswith("$argon2id$")
    assert PASSWORD not in ARGON2_HASH
    assert verify_password(PASSWORD, ARGON2_HASH) is True
    assert verify_password(PASSWORD + "!", ARGON2_HASH) is False


def test_same_password_hashes_differently_each_time() -> None:
    """Every hash has its own salt."""
    assert hash_password(PASSWORD) != ARGON2_HASH


@pytest.mark.parametrize(
    ("password", "hashed", "expected"),
    [(PASSWORD, BCRYPT_HASH, True), ("wrong", BCRYPT_HASH, False),
     (PASSWORD, CHEAP_ARGON2_HASH, True), ("", CHEAP_ARGON2_HASH, False),
     (PASSWORD.upper(), CHEAP_ARGON2_HASH, False)],
    ids=["bcrypt-right", "bcrypt-wrong", "argon2-right", "argon2-empty", "argon2-case"],
)
def test_verify_password_checks_argon2_and_bcrypt(
    password: str, hashed: str, expected: bool
) -> None:
    """Existing bcrypt `$2b$` hashes verify as well as argon2id ones."""
    assert verify_password(password, hashed) is expected


@pytest.mark.parametrize("password", [LONG_72 + "p", LONG_72 + "x", LONG_72 * 2, "\u00e9" * 40],
                         ids=["73-bytes-same-prefix", "73-bytes-other-tail", "144-bytes",
                              "80-utf8-bytes"])
def test_password_over_72_bytes_never_matches_bcrypt(password: str) -> None:
    """bcrypt reads 72 bytes: longer passwords are refused (False), never truncated or raised."""
    assert verify_password(LONG_72, BCRYPT_72_HASH) is True
    assert verify_password(password, BCRYPT_72_HASH) is False


def test_password_over_72_bytes_costs_a_whole_bcrypt_check() -> None:
    """Refusing a too-long password at once would tell a timing observer that the user
    exists (an unknown user costs a whole hash): the refusal spends the hash's cost too."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=8)).decode()
    started = time.perf_counter()
    assert verify_password("wrong password", hashed) is False
    wrong = time.perf_counter() - started
    started = time.perf_counter()
    assert verify_password("x" * 100, hashed) is False
    too_long = time.perf_counter() - started
    assert too_long > wrong / 3, (too_long, wrong)  # ~1x with the fix, ~1/10,000 without


@pytest.mark.parametrize("hashed", ["$argon2id$garbage", "plaintext", "", "$2b$04$short"],
                         ids=["broken-argon2", "plaintext", "empty", "broken-bcrypt"])
def test_unusable_hash_is_a_failed_check_not_a_crash(hashed: str) -> None:
    """A stored hash that cannot be read verifies nothing (and the password is not it)."""
    assert verify_password(hashed, hashed) is False
    assert verify_password(PASSWORD, hashed) is False


# --- PasswordChecker --------------------------------------------------------------------

@pytest.fixture(scope="module")
def checker() -> Iterator[PasswordChecker]:
    """One checker for the module: its constructor spends one real hash on the dummy."""
    checker = PasswordChecker(InlineCredentials({"marco": ARGON2_HASH,
                                                 "cheap": CHEAP_ARGON2_HASH,
                                                 "old": BCRYPT_HASH}))
    yield checker
    checker.close()


@pytest.mark.parametrize(
    ("username", "password", "expected"),
    [("cheap", PASSWORD, True), ("old", PASSWORD, True), ("cheap", "wrong", False),
     ("old", "wrong", False), ("nobody", PASSWORD, False), ("", "", False)],
    ids=["argon2-right", "bcrypt-right", "argon2-wrong", "bcrypt-wrong", "unknown-user",
         "empty"],
)
async def test_check_is_true_only_for_known_user_with_right_password(
    checker: PasswordChecker, username: str, password: str, expected: bool
) -> None:
    """check() accepts exactly a known user with the matching password."""
    assert await checker.check(username, password) is expected


async def cpu_seconds(checker: PasswordChecker, username: str, password: str) -> float:
    """Process CPU time of one check (hashing runs on a pool thread of this process)."""
    start = time.process_time()
    assert await checker.check(username, password) is False
    return time.process_time() - start


async def test_unknown_user_costs_a_real_hash_verification(checker: PasswordChecker) -> None:
    """An unknown user is checked against a dummy hash: CPU cost matches a wrong password."""
    # CPU time, not wall time: a loaded machine slows both but does not skew the ratio, and
    # skipping the hash would make the unknown-user check ~1000 times cheaper, far below 1/2.
    known = min([await cpu_seconds(checker, "marco", "wrong") for _ in range(2)])
    unknown = min([await cpu_seconds(checker, "nobody", "wrong") for _ in range(2)])
    assert known > 0.005
    assert unknown >= known / 2


# --- users file and credential stores ---------------------------------------------------

def test_users_file_maps_names_to_hashes(tmp_path: Path) -> None:
    """users.file is a YAML map `username: hash`."""
    path = tmp_path / "users.yaml"
    path.write_text(f"alice: '{CHEAP_ARGON2_HASH}'\nbob: '{BCRYPT_HASH}'\n")
    store = load_users_file(path)
    assert store.password_hash("alice") == CHEAP_ARGON2_HASH
    assert store.password_hash("bob") == BCRYPT_HASH
    assert store.password_hash("carol") is None


BAD_USERS_FILES = [
    ("- alice\n- bob\n", "a-list"), ("just text\n", "a-string"), ("", "empty"),
    ("alice: [x]\n", "hash-not-a-string"), ("1: '$argon2id$x'\n", "name-not-a-string"),
    ("alice: plaintext-password\n", "not-a-hash"), ("alice: '$1$md5$x'\n", "md5-crypt"),
    ("alice: [unclosed\n", "invalid-yaml"),
    ("alice: '$argon2id$a'\nalice: '$argon2id$b'\n", "duplicate-username"),
]


@pytest.mark.parametrize("text", [t for t, _ in BAD_USERS_FILES],
                         ids=[i for _, i in BAD_USERS_FILES])
def test_bad_users_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    """A users file that is not a clean `name: argon2/bcrypt hash` map is refused."""
    path = tmp_path / "users.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_users_file(path)
    assert info.value.problems[0].startswith("users.file: ")


def test_missing_users_file_is_a_config_error(tmp_path: Path) -> None:
    """A users file that cannot be read is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError) as info:
        load_users_file(tmp_path / "absent.yaml")
    assert info.value.problems[0].startswith("users.file: ")


def test_build_credentials_merges_inline_and_file_users(tmp_path: Path) -> None:
    """Inline users and users.file users are both known; the file wins on a clash."""
    path = tmp_path / "users.yaml"
    path.write_text(f"alice: '{BCRYPT_HASH}'\nbob: '{BCRYPT_HASH}'\n")
    users = Users(inline={"alice": CHEAP_ARGON2_HASH, "carol": CHEAP_ARGON2_HASH}, file=path)
    store = build_credentials(users)
    assert store.password_hash("alice") == BCRYPT_HASH
    assert store.password_hash("bob") == BCRYPT_HASH
    assert store.password_hash("carol") == CHEAP_ARGON2_HASH
    assert store.password_hash("dave") is None


async def test_a_login_flood_is_shed_with_login_busy_not_queued_forever() -> None:
    """Beyond max_pending checks in flight, a login is refused at once (503 login_busy)."""
    import asyncio

    from gateway.errors import LoginBusyError
    from gateway.users import InlineCredentials, PasswordChecker

    checker = PasswordChecker(InlineCredentials({}), workers=1, max_pending=2)
    try:
        first = asyncio.create_task(checker.check("a", "x"))
        second = asyncio.create_task(checker.check("b", "x"))
        await asyncio.sleep(0)  # both are now in flight
        with pytest.raises(LoginBusyError):
            await checker.check("c", "x")
        assert await first is False and await second is False
        assert await checker.check("d", "x") is False, "room again once they finished"
    finally:
        checker.close()
