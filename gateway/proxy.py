"""Forward a request to its upstream and stream the answer back; map upstream failures.

The upstream client never follows redirects, never decompresses, keeps no cookies and
rebuilds framing itself (DESIGN §5). A failure before the answer starts becomes a JSON
502/504; a failure after it started cuts the client connection, so the client sees an
incomplete message, never a complete-looking one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import Config, Route
from gateway.errors import PayloadTooLargeError, UpstreamError, UpstreamTimeoutError
from gateway.headers import filter_response_headers
from gateway.observability import Metrics

log = logging.getLogger(__name__)
_BODYLESS_STATUSES = frozenset({204, 304})
_CHUNK = 64 * 1024


def create_client_session(config: Config) -> aiohttp.ClientSession:
    """One pooled client per app: no redirects, no decompression, no cookie jar."""
    timeouts = config.upstream_timeouts
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30,
                                     ttl_dns_cache=10)
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        # SECURITY: the client's headers go through unchanged; adding Accept-Encoding
        # would let the upstream compress an answer the client cannot read.
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.connect,
                                      sock_connect=timeouts.connect, sock_read=timeouts.read),
        raise_for_status=False,
    )


def upstream_origin(route: Route) -> str:
    """`scheme://host[:port]` of a route's upstream (the base path goes in the target)."""
    url = URL(route.upstream)
    return str(url.origin())


class _LimitedBody:
    """The request body, streamed and counted as it passes; over `max_body` stops it.

    aiohttp's client wraps an error raised by a body generator in a connection error, so
    `exceeded` tells the caller that the upstream failure was really a 413.
    """

    def __init__(self, content: aiohttp.StreamReader, max_body: int) -> None:
        self._content = content
        self._max_body = max_body
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._content.iter_chunked(_CHUNK):
            seen += len(chunk)
            if seen > self._max_body:
                self.exceeded = True
                raise PayloadTooLargeError()
            yield chunk


async def forward(request: web.Request, session: aiohttp.ClientSession, url: URL,
                  headers: CIMultiDict[str], max_body: int,
                  metrics: Metrics) -> web.StreamResponse:
    """Send the request upstream and stream the answer back to the client."""
    body = None
    if request.body_exists:
        if request.content_length is not None:
            if request.content_length > max_body:
                raise PayloadTooLargeError()
            headers["Content-Length"] = str(request.content_length)
        body = _LimitedBody(request.content, max_body)
    try:
        upstream = await session.request(request.method, url, headers=headers,
                                         data=body.chunks() if body else None,
                                         allow_redirects=False, compress=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if body is not None and body.exceeded:
            raise PayloadTooLargeError() from exc
        raise _upstream_error(exc, url, metrics) from exc
    try:
        return await _relay(request, upstream, metrics)
    finally:
        upstream.release()


def _upstream_error(exc: Exception, url: URL, metrics: Metrics) -> UpstreamError:
    """Translate a client failure before the answer started: timeout 504, else 502."""
    if isinstance(exc, TimeoutError):  # before ClientError: ServerTimeoutError is both
        metrics.upstream_errors.labels("timeout").inc()
        return UpstreamTimeoutError()
    metrics.upstream_errors.labels("connect").inc()
    log.warning("upstream_failed url=%s error=%s", url.origin(), type(exc).__name__)
    return UpstreamError()


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse,
                 metrics: Metrics) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=filter_response_headers(upstream.headers))
    has_body = request.method != "HEAD" and upstream.status not in _BODYLESS_STATUSES
    if upstream.content_length is not None and upstream.status not in _BODYLESS_STATUSES:
        response.content_length = upstream.content_length
    await response.prepare(request)
    if not has_body:
        await response.write_eof()
        return response
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
        metrics.upstream_errors.labels("mid_body").inc()
        log.warning("upstream_body_failed error=%s", type(exc).__name__)
        upstream.close()
        _abort_client(request)
        return response  # already sent in part: no error answer can follow it
    await response.write_eof()
    return response


def _abort_client(request: web.Request) -> None:
    """Cut the client connection so a truncated answer cannot look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()
