"""Reading a client's request body: `Expect: 100-continue`, counted as it streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import GatewayError, PayloadTooLargeError, RequestTimeoutError


class LimitedBody:
    """The request body, streamed and counted as it passes.

    Over `max_body` is a 413; no byte from the client for `read_timeout` seconds is a 408
    (a slowly trickled body must not hold a connection and an upstream forever). The
    upstream clients wrap an error raised by a body generator in their own errors, so
    `failure` tells the caller what the upstream failure really was.
    """

    def __init__(self, request: web.BaseRequest, max_body: int, read_timeout: float) -> None:
        self._request = request
        self._content = request.content
        self._max_body = max_body
        self._read_timeout = read_timeout
        self.failure: GatewayError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        await send_continue_if_expected(self._request)
        seen = 0
        while True:
            try:
                async with asyncio.timeout(self._read_timeout):
                    chunk = await self._content.readany()
            except TimeoutError:
                self.failure = RequestTimeoutError()
                raise self.failure from None
            if not chunk:
                return
            seen += len(chunk)
            if seen > self._max_body:
                self.failure = PayloadTooLargeError()
                raise self.failure
            yield chunk

    async def read_all(self) -> bytes:
        """The whole body (for small bodies the gateway reads itself, e.g. a login)."""
        return b"".join([chunk async for chunk in self.chunks()])


async def send_continue_if_expected(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` just before the body is read (RFC 9110 §10.1.1).

    Only then: a request refused before its body is needed (a 401, a 413) gets its final
    answer without the client ever sending the body.
    """
    if (request.version >= (1, 1) and request.writer is not None
            and request.headers.get("Expect", "").lower() == "100-continue"):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
