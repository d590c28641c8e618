"""`create_app()`: the same gateway inside a `web.Application`, for embedding (STYLE.md).

Every other functional test serves the gateway as `gateway serve` does (`build_server`);
these pin that the embedded form applies the same rules.
"""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.revocation.memory import MemoryRevocationStore
from tests.conftest import ConfigFactory, bearer, login
from tests.fakes import FakeClock


async def embedded(aiohttp_client: Any, make_config: ConfigFactory,
                   clock: FakeClock) -> TestClient[Any, Any]:
    store = MemoryRevocationStore(clock=clock, max_entries=100)
    client: TestClient[Any, Any] = await aiohttp_client(
        create_app(make_config(), clock=clock, revocations=store))
    return client


async def test_embedded_app_logs_in_and_proxies_with_the_identity(
        aiohttp_client: Any, make_config: ConfigFactory, clock: FakeClock) -> None:
    client = await embedded(aiohttp_client, make_config, clock)
    token = await login(client)
    response = await client.post("/api/items", json={"a": 1},
                                 headers={**bearer(token), "X-Auth-UserId": "admin"})
    assert response.status == 200
    echo = await response.json()
    assert [v for k, v in echo["headers"] if k.lower() == "x-auth-userid"] == ["marco"]
    assert echo["body"] == '{"a": 1}'


async def test_embedded_app_refuses_a_revoked_token(
        aiohttp_client: Any, make_config: ConfigFactory, clock: FakeClock) -> None:
    client = await embedded(aiohttp_client, make_config, clock)
    token = await login(client)
    assert (await client.post("/user/logout", headers=bearer(token))).status == 204
    response = await client.get("/api/items", headers=bearer(token))
    assert response.status == 401
    assert (await response.json())["error"] == "invalid_token"
