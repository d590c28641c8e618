"""Forward a request to its upstream and stream the answer back; map upstream failures.

Two upstream clients do the same job: the lean pool of `gateway.upstream` (the default for
plain-HTTP upstreams) and aiohttp's ClientSession (HTTPS upstreams, websockets, or
`upstream_client: aiohttp`). Both never follow redirects, never decompress, keep no cookies
and rebuild framing themselves (DESIGN §5). A failure before the answer starts becomes a
JSON 502/504; a failure after it started cuts the client connection, so the client sees an
incomplete message, never a complete-looking one.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.config import Config, Route
from gateway.errors import PayloadTooLargeError, UpstreamError, UpstreamTimeoutError
from gateway.headers import filter_response_headers
from gateway.keys import request_id_key
from gateway.middleware import SERVER_NAME
from gateway.observability import Metrics
from gateway.request_body import LimitedBody
from gateway.routing import upstream_of
from gateway.services import Services
from gateway.upstream import (
    UpstreamFailure,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
    encode_request_head,
)

log = logging.getLogger(__name__)
_BODYLESS_STATUSES = frozenset({204, 304})
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def create_client_session(config: Config) -> aiohttp.ClientSession:
    """aiohttp's pooled client: no redirects, no decompression, no cookie jar."""
    timeouts = config.upstream_timeouts
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=15,
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


def create_upstream_pool(config: Config) -> UpstreamPool:
    timeouts = config.upstream_timeouts
    return UpstreamPool(connect_timeout=timeouts.connect, read_timeout=timeouts.read)


def _request_body(request: web.BaseRequest, headers: CIMultiDict[str],
                  max_body: int, client_timeout: float) -> LimitedBody | None:
    """Check the declared length and set the gateway's own framing headers."""
    if not request.body_exists:
        if request.method in _METHODS_WITH_BODY:
            headers["Content-Length"] = "0"
        return None
    if request.content_length is not None:
        if request.content_length > max_body:
            raise PayloadTooLargeError()
        headers["Content-Length"] = str(request.content_length)
    return LimitedBody(request, max_body, client_timeout)


async def forward(request: web.BaseRequest, services: Services, route: Route, target: str,
                  headers: CIMultiDict[str]) -> web.StreamResponse:
    """Send the request upstream and stream the answer back to the client."""
    limits = services.config.limits
    body = _request_body(request, headers, limits.max_body, limits.client_timeout)
    upstream = upstream_of(route)
    pool = services.pool
    if pool is not None and upstream.is_plain_http:
        return await _forward_with_pool(request, pool, upstream.address, upstream.authority,
                                        target, headers, body, services.metrics)
    assert services.session is not None  # noqa: S101 - created by the cleanup context
    url = URL(upstream.origin + target, encoded=True)
    return await _forward_with_session(request, services.session, url, headers, body,
                                       services.metrics)


def upstream_error(exc: BaseException, origin: object, metrics: Metrics) -> UpstreamError:
    """Translate a failure before the answer started: timeout 504, else 502."""
    if isinstance(exc, TimeoutError | UpstreamTimeout):  # ServerTimeoutError is both
        metrics.upstream_errors["timeout"] += 1
        return UpstreamTimeoutError()
    metrics.upstream_errors["connect"] += 1
    log.warning("upstream_failed upstream=%s error=%s", origin, type(exc).__name__)
    return UpstreamError()


async def _forward_with_pool(request: web.BaseRequest, pool: UpstreamPool,
                             address: tuple[str, int], host: str, target: str,
                             headers: CIMultiDict[str], body: LimitedBody | None,
                             metrics: Metrics) -> web.StreamResponse:
    chunked = body is not None and "Content-Length" not in headers
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    head = encode_request_head(request.method, target, host, headers.items())
    try:
        upstream = await pool.request(address, head, is_head=request.method == "HEAD",
                                      body=body.chunks() if body else None, chunked=chunked)
    except UpstreamFailure as exc:
        if body is not None and body.failure is not None:
            raise body.failure from exc
        raise upstream_error(exc, host, metrics) from exc
    try:
        return await _relay_from_pool(request, upstream, metrics)
    finally:
        upstream.release()


def _response_headers(request: web.BaseRequest, upstream: CIMultiDict[str] | CIMultiDictProxy[str]
                      ) -> CIMultiDict[str]:
    """The upstream's answer headers as the client gets them, with the request id."""
    headers = filter_response_headers(upstream)
    headers["X-Request-Id"] = request[request_id_key]
    headers.setdefault("Server", SERVER_NAME)  # the upstream's own, else not aiohttp's
    return headers


async def _relay_from_pool(request: web.BaseRequest, upstream: UpstreamResponse,
                           metrics: Metrics) -> web.StreamResponse:
    raw_headers = CIMultiDict(upstream.headers)
    headers = _response_headers(request, raw_headers)
    status = upstream.status
    if request.method == "HEAD" or status in _BODYLESS_STATUSES:
        # A HEAD answer's length describes the body a GET would get; its framing was not
        # checked (there is no body), so only a plain number is passed on.
        length = raw_headers.get("Content-Length", "")
        return await _bodyless(request, status, headers,
                               int(length) if length.isdigit() and length.isascii()
                               and status not in _BODYLESS_STATUSES else None)
    if upstream.complete:  # the whole (small) body came with the headers: one write
        return web.Response(status=status, headers=headers, body=upstream.read_buffered())
    response = web.StreamResponse(status=status, headers=headers)
    declared = raw_headers.get("Content-Length")  # checked by the parser: a plain number
    if declared is not None:
        response.content_length = int(declared)
    await response.prepare(request)
    try:
        async for chunk in upstream.iter_chunks():
            await response.write(chunk)
    except UpstreamFailure as exc:
        return _cut_short(request, response, exc, metrics)
    await response.write_eof()
    return response


async def _bodyless(request: web.BaseRequest, status: int, headers: CIMultiDict[str],
                    length: int | None) -> web.StreamResponse:
    response = web.StreamResponse(status=status, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    await response.write_eof()
    return response


def _cut_short(request: web.BaseRequest, response: web.StreamResponse, exc: BaseException,
               metrics: Metrics) -> web.StreamResponse:
    """The answer broke off upstream: cut the client connection so it cannot look whole."""
    metrics.upstream_errors["mid_body"] += 1
    log.warning("upstream_body_failed error=%s", type(exc).__name__)
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response  # already sent in part: no error answer can follow it


async def _forward_with_session(request: web.BaseRequest, session: aiohttp.ClientSession,
                                url: URL, headers: CIMultiDict[str], body: LimitedBody | None,
                                metrics: Metrics) -> web.StreamResponse:
    try:
        upstream = await session.request(request.method, url, headers=headers,
                                         data=body.chunks() if body else None,
                                         allow_redirects=False, compress=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if body is not None and body.failure is not None:
            raise body.failure from exc
        raise upstream_error(exc, url.origin(), metrics) from exc
    if not 100 <= upstream.status <= 599:
        # RFC 9110 §15: aiohttp's client takes any three digits, as the pool's parser does
        upstream.close()
        invalid = UpstreamProtocolError(f"the upstream sent the invalid status {upstream.status}")
        raise upstream_error(invalid, url.origin(), metrics) from invalid
    try:
        return await _relay_from_session(request, upstream, metrics)
    finally:
        upstream.release()


async def _relay_from_session(request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                              metrics: Metrics) -> web.StreamResponse:
    headers = _response_headers(request, upstream.headers)
    if request.method == "HEAD" or upstream.status in _BODYLESS_STATUSES:
        length = (upstream.content_length
                  if upstream.status not in _BODYLESS_STATUSES else None)
        return await _bodyless(request, upstream.status, headers, length)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=headers)
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
        upstream.close()
        return _cut_short(request, response, exc, metrics)
    await response.write_eof()
    return response
