"""Reading a client's request body: `Expect: 100-continue`, counted as it streams."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import PayloadTooLargeError

_CHUNK = 64 * 1024


class LimitedBody:
    """The request body, streamed and counted as it passes; over `max_body` stops it.

    The upstream clients wrap an error raised by a body generator in their own errors,
    so `exceeded` tells the caller that the upstream failure was really a 413.
    """

    def __init__(self, request: web.BaseRequest, max_body: int) -> None:
        self._request = request
        self._content = request.content
        self._max_body = max_body
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        await send_continue_if_expected(self._request)
        seen = 0
        async for chunk in self._content.iter_chunked(_CHUNK):
            seen += len(chunk)
            if seen > self._max_body:
                self.exceeded = True
                raise PayloadTooLargeError()
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
