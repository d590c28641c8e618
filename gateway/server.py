"""The gateway's aiohttp server: aiohttp's low-level `web.Server` with two changes.

**A client that stops taking its answer is disconnected** (nginx's `send_timeout`). A
client that asks for an answer and never reads it would otherwise hold its connection, the
upstream connection behind it and the answer's buffered bytes for ever: the gateway waits
for the socket to drain, and no read timeout runs while it does. The transport tells its
protocol when the send buffer passes the high-water mark (`pause_writing`) and when it has
drained below the low-water mark (`resume_writing`); a buffer that stays full for
`limits.client_timeout` aborts the connection. Nothing runs per request: one timer per
stall, none while the client keeps up.

**A request aiohttp's parser refuses gets the gateway's JSON error** instead of aiohttp's
plain-text page, which quotes the offending line (a whole token can be in it) and names
aiohttp's version in `Server`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.middleware import SERVER_NAME, error_response

log = logging.getLogger(__name__)


class SendStallTimer:
    """Aborts a transport whose writing stays paused for `timeout` seconds."""

    __slots__ = ("_handle", "_loop", "_timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.Transport | None) -> None:
        """Writing paused: the client has `timeout` seconds to take some of the answer."""
        if self._handle is None and transport is not None:
            self._handle = self._loop.call_later(self._timeout, _abort_stalled, transport,
                                                 self._timeout)

    def stop(self) -> None:
        """Writing resumed (the client reads) or the connection is gone."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _abort_stalled(transport: asyncio.Transport, timeout: float) -> None:
    log.info("client_send_stalled seconds=%g: the client took none of its answer; "
             "connection closed", timeout)
    transport.abort()


class GatewayRequestHandler(RequestHandler):
    """aiohttp's per-connection handler, closed when its client stops reading, answering
    what its parser refuses in the gateway's error format."""

    __slots__ = ("_send_stall",)

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 send_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._send_stall = SendStallTimer(loop, send_timeout)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._send_stall.start(self.transport)

    def resume_writing(self) -> None:
        self._send_stall.stop()
        super().resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._send_stall.stop()
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        # aiohttp's own logs the error (the bytes are filtered out by
        # observability.MalformedRequestFilter) and refuses once an answer has started
        super().handle_error(request, status, exc, message)
        if status == 500:
            code, text = "internal_error", "The gateway failed to handle the request."
        else:
            code, text = "bad_request", "The request is not valid HTTP/1.1."
        response = error_response(status, code, text, {"Server": SERVER_NAME})
        response.force_close()
        return response


class GatewayServer(web.Server):
    """aiohttp's low-level server whose connections are closed when their client keeps the
    send buffer full for `send_timeout` seconds."""

    def __init__(self, handler: Any, *, send_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.send_timeout = send_timeout

    def __call__(self) -> RequestHandler:
        return GatewayRequestHandler(self, loop=self._loop, send_timeout=self.send_timeout,
                                   **self._kwargs)
