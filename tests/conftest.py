"""Shared fixtures: a fake clock, free ports, a real echo upstream, a real gateway."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import argon2
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer

from gateway.app import Gateway, create_gateway
from gateway.config import Config, parse_config
from gateway.demo import create_echo_app
from gateway.fastpath import build_server
from gateway.revocation.memory import MemoryRevocationStore
from gateway.services import Services
from tests.fakes import FakeClock
from tests.redis_server import REDIS_SERVER, RedisServer, redis_unavailable

TEST_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
PASSWORD = "correct horse battery staple"
# Cheap argon2id parameters keep the suite fast; the cost lives in the hash itself, so the
# gateway's code path is the same as with the production defaults.
_HASH = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)

GatewayFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ConfigFactory = Callable[..., Config]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server a test may kill, freeze (SIGSTOP) and restart."""
    if not os.access(REDIS_SERVER, os.X_OK):
        redis_unavailable(f"{REDIS_SERVER} is not installed")
    with RedisServer() as server:
        yield server


@pytest.fixture
def dead_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def echo_upstream(aiohttp_server: Any) -> TestServer:
    """The bundled echo app: answers with the method, path, headers and body it received."""
    server: TestServer = await aiohttp_server(create_echo_app())
    return server


def base_config_data(upstream: str, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A valid configuration as YAML-shaped data: routes to `upstream`, users marco/alice."""
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "tokens": {"secret": TEST_SECRET, "ttl": "1h", "leeway": "30s"},
        "users": {"inline": {"marco": _HASH, "alice": _HASH}},
        "revocation": {"store": "memory"},
        "access_log": "all",
        "data_dir": str(tmp_path / "data"),
        "upstream_timeouts": {"connect": "2s", "read": "1s"},
        "limits": {"max_body": "64KiB"},
        "routes": [
            {"prefix": "/public", "upstream": upstream, "auth": "none"},
            {"prefix": "/maybe", "upstream": upstream, "auth": "optional"},
            {"prefix": "/fwd", "upstream": upstream, "forward_authorization": True},
            {"prefix": "/strip", "upstream": upstream + "/base", "strip_prefix": True},
            {"prefix": "/", "upstream": upstream, "auth": "required"},
        ],
    }
    data.update(overrides)
    return data


@pytest.fixture
def upstream_client() -> str:
    """Which upstream client the gateway uses; proxy tests run against both."""
    return "fast"


@pytest.fixture
def make_config(echo_upstream: TestServer, tmp_path: Path,
                upstream_client: str) -> ConfigFactory:
    """Build a Config pointing at the echo upstream; keyword arguments replace sections."""
    upstream = str(echo_upstream.make_url("")).rstrip("/")

    def build(**overrides: Any) -> Config:
        overrides.setdefault("upstream_client", upstream_client)
        return parse_config(base_config_data(upstream, tmp_path, **overrides), {}, tmp_path)

    return build


class GatewayTestServer(BaseTestServer):
    """The gateway served exactly as `gateway serve` serves it (`build_server`: the fast
    path in front of aiohttp's handler), on a loopback port."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self.gateway = gateway

    async def _make_runner(self, **_test_options: Any) -> web.ServerRunner:
        await self.gateway.start()
        return web.ServerRunner(build_server(self.gateway), shutdown_timeout=5.0)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.gateway.close()


def services_of(client: TestClient[Any, Any]) -> Services:
    """The running gateway's parts, for tests that look inside (metrics, issuer)."""
    server = client.server
    assert isinstance(server, GatewayTestServer)
    return server.gateway.services


@pytest.fixture
def make_gateway(aiohttp_client: Any, make_config: ConfigFactory,
                 clock: FakeClock) -> GatewayFactory:
    """Start a real gateway on a loopback port (memory store unless one is given), served
    as `gateway serve` serves it."""

    async def start(config: Config | None = None, **kwargs: Any) -> TestClient[Any, Any]:
        config = config or make_config()
        kwargs.setdefault("clock", clock)
        if "revocations" not in kwargs and config.revocation.store == "memory":
            kwargs["revocations"] = MemoryRevocationStore(clock=kwargs["clock"],
                                                          max_entries=1000)
        server = GatewayTestServer(create_gateway(config, **kwargs))
        client: TestClient[Any, Any] = await aiohttp_client(server)
        return client

    return start


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> TestClient[Any, Any]:
    return await make_gateway()


async def login(client: TestClient[Any, Any], username: str = "marco",
                password: str = PASSWORD) -> str:
    """Log in through the real endpoint and return the token."""
    response = await client.post("/user/login", json={"username": username,
                                                      "password": password})
    assert response.status == 200, await response.text()
    token: str = (await response.json())["token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> float:
    """Poll `predicate` until true; fail after `within` seconds. Returns the seconds taken.

    Polling is the point: the state changes in a background task or another process,
    neither of which can set an asyncio.Event for the test.
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"{what}: not within {within}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - started
