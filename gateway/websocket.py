"""WebSocket proxying: the upgrade is authenticated like any request, then frames are
relayed both ways. A token that expires or is revoked closes the socket (1008)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, MultiMapping
from yarl import URL

from gateway.errors import StoreUnavailableError, UpstreamError
from gateway.services import Services
from gateway.tokens import Claims

log = logging.getLogger(__name__)
# The client's handshake fields: aiohttp's client makes its own key, version and extensions.
_HANDSHAKE = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
              "Sec-WebSocket-Protocol", "Upgrade", "Connection")
POLICY_VIOLATION = 1008
CHECK_INTERVAL = 1.0


def is_websocket_upgrade(headers: MultiMapping[str], method: str) -> bool:
    """A GET asking to upgrade to websocket (RFC 6455 §4.1)."""
    if method != "GET" or headers.get("Upgrade", "").lower() != "websocket":
        return False
    tokens = {t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(",")}
    return "upgrade" in tokens


async def proxy_websocket(request: web.BaseRequest, services: Services, url: URL,
                          headers: CIMultiDict[str], claims: Claims | None) -> web.StreamResponse:
    """Open the upstream socket first (a refusal is a JSON 502), then upgrade the client."""
    assert services.session is not None  # noqa: S101 - created by the cleanup context
    for name in _HANDSHAKE:
        headers.popall(name, None)
    protocols = [p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ())
                 for p in v.split(",") if p.strip()]
    try:
        upstream = await services.session.ws_connect(
            url.with_scheme("wss" if url.scheme == "https" else "ws"), headers=headers,
            protocols=protocols, autoping=True, max_msg_size=services.config.limits.max_body)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("websocket_upstream_failed url=%s error=%s", url.origin(),
                    type(exc).__name__)
        raise UpstreamError("The upstream refused the websocket.") from exc
    client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else (),
                                   max_msg_size=services.config.limits.max_body)
    try:
        await client.prepare(request)
        await _relay_until_closed(client, upstream, services, claims)
    finally:
        await upstream.close()
        await client.close()
    return client


async def _relay_until_closed(client: web.WebSocketResponse,
                              upstream: aiohttp.ClientWebSocketResponse,
                              services: Services, claims: Claims | None) -> None:
    tasks = [asyncio.create_task(_pump(client, upstream)),
             asyncio.create_task(_pump(upstream, client))]
    if claims is not None:
        tasks.append(asyncio.create_task(_watch_token(client, services, claims)))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _pump(source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
    """Copy frames from `source` to `sink` until either side closes."""
    async for message in source:
        if message.type is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is WSMsgType.ERROR:
            break
    code = source.close_code or 1000
    await sink.close(code=code if 1000 <= code < 5000 else 1011)


async def _watch_token(client: web.WebSocketResponse, services: Services,
                       claims: Claims) -> None:
    """Close the socket once its token expires or is revoked (checked every second)."""
    leeway = services.config.tokens.leeway
    while True:
        await asyncio.sleep(CHECK_INTERVAL)
        try:
            revoked = services.revocations.is_revoked(claims.token_id, claims.subject,
                                                      claims.issued_at)
        except StoreUnavailableError:
            revoked = True  # fail closed
        if revoked or services.clock() > claims.expires_at + leeway:
            log.info("websocket_closed_token_invalid jti=%s", claims.token_id)
            await client.close(code=POLICY_VIOLATION, message=b"token no longer valid")
            return
