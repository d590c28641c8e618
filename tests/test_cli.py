"""The command line (DESIGN.md §2): check-config, hash-password, and the generated secret."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import SECRET_FILE, resolve_secret
from gateway.config import Config, Secret, parse_config
from gateway.errors import ConfigError
from gateway.users import verify_password

SECRET = "cli-test-secret-0123456789-abcdefghijklmnopqrs"
HASH = "$argon2id$v=19$m=65536,t=3,p=4$" + "A" * 22 + "$" + "B" * 43
TIMEOUT = 60.0


def run_gateway(cwd: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` as a real process, without GATEWAY_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "DEMO_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", *args], input=stdin, capture_output=True,
        cwd=cwd, env=env, timeout=TIMEOUT, check=False,
    )
    return subprocess.CompletedProcess(completed.args, completed.returncode,
                                       completed.stdout.decode(), completed.stderr.decode())


def config_yaml(tmp_path: Path, *, tokens: str = "{ttl: 1h}", extra: str = "",
                routes: str = "[{prefix: /, upstream: 'http://127.0.0.1:8080'}]") -> str:
    return (f"tokens: {tokens}\n"
            f"users: {{inline: {{marco: '{HASH}'}}}}\n"
            "revocation: {store: memory}\n"
            f"data_dir: {tmp_path / 'data'}\n"
            f"routes: {routes}\n" + extra)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# --- check-config -----------------------------------------------------------------------

def test_check_config_accepts_a_valid_file_without_writing_anything(tmp_path: Path) -> None:
    """check-config on a valid file exits 0 and does not create the generated secret."""
    path = write(tmp_path, config_yaml(tmp_path))
    result = run_gateway(tmp_path, "check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert not (tmp_path / "data" / SECRET_FILE).exists()


def test_check_config_lists_every_problem_with_its_key_path(tmp_path: Path) -> None:
    """check-config exits 2 and prints each problem on its own stderr line, by key path."""
    short = "tiny-secret"
    path = write(tmp_path, config_yaml(
        tmp_path, tokens=f"{{secret: {short}, ttl: soon}}",
        routes="[{prefix: api, upstream: 'http://127.0.0.1:8080'},"
               " {prefix: /, upstream: 'ftp://127.0.0.1'}]",
        extra="colour: blue\nlisten: {port: 70000}\n"))
    result = run_gateway(tmp_path, "check-config", "--config", str(path))
    assert result.returncode == 2
    assert "OK" not in result.stdout
    lines = [line.strip() for line in result.stderr.splitlines()]
    for key_path in ("colour: unknown key", "listen.port: ", "tokens.secret: ", "tokens.ttl: ",
                     "routes[0].prefix: ", "routes[1].upstream: "):
        assert any(line.startswith(key_path) for line in lines), (key_path, result.stderr)
    assert short not in result.stderr


@pytest.mark.parametrize(
    ("setup", "expected"),
    [(lambda p: None, "gateway.yaml: cannot read it"),
     (lambda p: p.write_text("listen: {port: 1}\nlisten: {port: 2}\n"), "duplicate key"),
     (lambda p: p.write_text(config_yaml(p.parent, tokens="{algorithm: RS256, "
                                                          "private_key_file: k.pem}")),
      "tokens"),
     (lambda p: p.write_text("? [a, b]\n: 1\n"), "gateway.yaml: not valid YAML")],
    ids=["missing-file", "duplicate-key", "unusable-key-file", "unhashable-yaml-key"],
)
def test_check_config_exits_2_on_unreadable_or_unusable_config(
    tmp_path: Path, setup: Any, expected: str
) -> None:
    """Unreadable files and unusable keys are config errors too: exit 2 with a problem line."""
    (tmp_path / "k.pem").write_text("not a PEM key")
    path = tmp_path / "gateway.yaml"
    setup(path)
    result = run_gateway(tmp_path, "check-config", "-c", str(path))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


# --- hash-password ----------------------------------------------------------------------

@pytest.mark.parametrize(
    ("stdin", "password", "not_password"),
    [(b"pw\n", "pw", "pw\n"), (b"pw\n\n", "pw\n", "pw")],
    ids=["one-newline-stripped", "only-one-newline-stripped"],
)
def test_hash_password_prints_one_argon2id_line(
    tmp_path: Path, stdin: bytes, password: str, not_password: str
) -> None:
    """hash-password prints only the argon2id hash of stdin minus one trailing newline."""
    result = run_gateway(tmp_path, "hash-password", stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    assert result.stdout.count("\n") == 1
    hashed = result.stdout.rstrip("\n")
    assert hashed.startswith("$argon2id$")
    assert verify_password(password, hashed)
    assert not verify_password(not_password, hashed)


@pytest.mark.parametrize("stdin", [b"", b"\n"], ids=["empty", "newline-only"])
def test_hash_password_refuses_an_empty_password(tmp_path: Path, stdin: bytes) -> None:
    """An empty password (after stripping one newline) exits 2 and prints no hash."""
    result = run_gateway(tmp_path, "hash-password", stdin=stdin)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "empty" in result.stderr


# --- the generated secret ---------------------------------------------------------------

def make_config(tmp_path: Path, **tokens: Any) -> Config:
    data = {
        "tokens": {"ttl": "1h", **tokens},
        "users": {"inline": {"marco": HASH}},
        "revocation": {"store": "memory"},
        "data_dir": str(tmp_path / "data"),
        "routes": [{"prefix": "/", "upstream": "http://127.0.0.1:8080"}],
    }
    return parse_config(data, {}, tmp_path)


def test_secret_is_generated_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    """Without tokens.secret, serve makes data_dir/jwt-secret once (0600) and reuses it."""
    config = make_config(tmp_path)
    path = tmp_path / "data" / SECRET_FILE
    first = resolve_secret(config, create=True)
    assert first is not None
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == first.reveal()
    assert len(first.reveal().encode()) >= 32
    content = path.read_bytes()
    second = resolve_secret(config, create=True)
    assert second == first
    assert path.read_bytes() == content


def test_check_mode_does_not_create_the_secret_file(tmp_path: Path) -> None:
    """With create=False (check-config) no file is written, yet a usable secret comes back."""
    secret = resolve_secret(make_config(tmp_path), create=False)
    assert secret is not None
    assert len(secret.reveal().encode()) >= 32
    assert not (tmp_path / "data" / SECRET_FILE).exists()


def test_configured_secret_wins_over_the_file(tmp_path: Path) -> None:
    """A configured tokens.secret is used as is, even when a generated file exists."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / SECRET_FILE).write_text("file-secret-" + "f" * 40 + "\n")
    config = make_config(tmp_path, secret=SECRET)
    assert resolve_secret(config, create=True) == Secret(SECRET)


def test_short_secret_file_is_a_config_error(tmp_path: Path) -> None:
    """A jwt-secret file holding fewer than 32 bytes is refused as a tokens.secret problem."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / SECRET_FILE).write_text("zq7x-tiny\n")
    with pytest.raises(ConfigError) as info:
        resolve_secret(make_config(tmp_path), create=True)
    assert info.value.problems[0].startswith("tokens.secret: ")
    assert "zq7x-tiny" not in str(info.value)


def test_hash_password_strips_a_crlf_line_ending(tmp_path: Path) -> None:
    """`printf 'pw\\r\\n' | gateway hash-password` hashes `pw`, as a user typed it."""
    result = run_gateway(tmp_path, "hash-password", stdin=b"pw\r\n")
    assert result.returncode == 0
    assert verify_password("pw", result.stdout.strip())


def test_hash_password_refuses_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """A password that is not UTF-8 is an error (exit 2), never a traceback."""
    result = run_gateway(tmp_path, "hash-password", stdin=b"\xff\xfe")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
