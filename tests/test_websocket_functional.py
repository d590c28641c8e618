"""WebSocket upgrades through the gateway, against the echo upstream's /ws."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ConfigFactory, GatewayFactory, bearer, login
from tests.fakes import FakeClock

Client = TestClient[Any, Any]


@pytest.fixture(params=["fast", "aiohttp"])
def upstream_client(request: pytest.FixtureRequest) -> str:
    """Every proxy rule holds with both upstream clients."""
    value: str = request.param
    return value


async def test_websocket_relays_frames_with_injected_identity(gateway: Client) -> None:
    """An authenticated upgrade reaches upstream with identity, and frames flow both ways."""
    token = await login(gateway)
    headers = {**bearer(token), "X-Auth-UserId": "admin"}
    async with gateway.ws_connect("/ws", headers=headers, protocols=("chat",)) as ws:
        hello = await ws.receive_json(timeout=5)
        identity = [v for k, v in hello["headers"] if k.lower() == "x-auth-userid"]
        assert identity == ["marco"]
        assert ws.protocol == "chat"
        await ws.send_str("ping-text")
        assert await ws.receive_str(timeout=5) == "ping-text"
        await ws.send_bytes(b"\x00\x01binary")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01binary"


async def test_websocket_upgrade_without_token_is_401(gateway: Client) -> None:
    """The upgrade is authenticated like any request: no token, no socket."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gateway.ws_connect("/ws")
    assert caught.value.status == 401


async def test_websocket_closes_when_its_token_is_revoked(
        make_gateway: GatewayFactory, make_config: ConfigFactory, clock: FakeClock) -> None:
    """A socket opened with a token that is then revoked is closed with 1008."""
    client = await make_gateway(make_config())
    token = await login(client)
    async with client.ws_connect("/ws", headers=bearer(token)) as ws:
        await ws.receive_json(timeout=5)
        assert (await client.post("/user/logout", headers=bearer(token))).status == 204
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1008


async def test_websocket_to_dead_upstream_is_502(make_gateway: GatewayFactory,
                                                 make_config: ConfigFactory,
                                                 dead_port: int) -> None:
    """An upstream that refuses the websocket gives a 502 before the client upgrades."""
    config = make_config(routes=[{"prefix": "/", "upstream": f"http://127.0.0.1:{dead_port}",
                                  "auth": "none"}])
    client = await make_gateway(config)
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/ws")
    assert caught.value.status == 502
