"""The middleware stack: request id, metrics/timing, and the one place errors become JSON."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import request_id_key, services_key

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
               413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
               431: "headers_too_large"}


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep a well-formed client X-Request-Id, else make one; it is logged and forwarded."""
    incoming = request.headers.get("X-Request-Id", "")
    request[request_id_key] = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
    return await handler(request)


async def add_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer, proxied or local, carries the request id."""
    request_id = request.get(request_id_key)
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by status and time it."""
    metrics = request.app[services_key].metrics
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        metrics.requests.labels("all", str(status)).inc()
        metrics.duration.labels("all").observe(time.perf_counter() - started)


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """The gateway's one error format: `{"error": code, "message": sentence}`."""
    body = json.dumps({"error": code, "message": message}).encode()
    response = web.Response(status=status, body=body, headers=headers)
    response.content_type = "application/json"
    response.charset = "utf-8"
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every GatewayError, aiohttp HTTP error or surprise into a JSON answer."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.status, exc.code, exc.message, dict(exc.headers()))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.reason, headers)
    except Exception:
        log.exception("internal_error method=%s path=%s request_id=%s", request.method,
                      request.raw_path.partition("?")[0][:256], request.get(request_id_key))
        return error_response(500, "internal_error", "The gateway failed to handle the request.")
