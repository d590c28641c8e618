"""What every request gets around its handler: a request id, errors as JSON, metrics."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.errors import GatewayError
from gateway.keys import request_id_key
from gateway.observability import Metrics, request_started_key

log = logging.getLogger(__name__)
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
SERVER_NAME = "gateway"
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away; never sent
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
               413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
               431: "headers_too_large"}


def new_request_id() -> str:
    """Unique per process and cheap: a random per-process prefix and a counter."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def safe_request_id(incoming: str | None) -> str | None:
    """A client's X-Request-Id when it is safe to log and forward, else None."""
    if incoming is not None and _SAFE_REQUEST_ID.fullmatch(incoming):
        return incoming
    return None


def error_body(code: str, message: str) -> bytes:
    """The gateway's one error format: `{"error": code, "message": sentence}`."""
    return json.dumps({"error": code, "message": message}).encode()


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    """An error answer in the gateway's one format (see `error_body`)."""
    response = web.Response(status=status, body=error_body(code, message), headers=headers)
    response.content_type = "application/json"
    response.charset = "utf-8"
    return response


def with_request_handling(handler: Handler, metrics: Metrics) -> Handler:
    """Wrap the gateway's one handler with everything every request gets, in order:

    1. a request id (a well-formed client `X-Request-Id` is kept), answered and forwarded;
    2. errors -> JSON: every GatewayError, aiohttp HTTP error or surprise becomes
       `{"error", "message"}` (this is the only place that writes that body);
    3. metrics: every answer counted by status and timed.

    One wrapper rather than an aiohttp middleware stack: the gateway has one handler, and
    each middleware layer would only add a coroutine frame and a wrapper per request.
    """

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        request_id = safe_request_id(request.headers.get("X-Request-Id")) or new_request_id()
        request[request_id_key] = request_id
        started = request[request_started_key] = time.perf_counter()
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc.status, exc.code, exc.message, dict(exc.headers()))
        except ConnectionResetError:  # the client went away mid-request: nobody to answer
            log.info("client_disconnected request_id=%s", request_id)
            response = web.Response(status=CLIENT_CLOSED)
        except web.HTTPException as exc:
            response = _http_exception_response(exc)
        except Exception:
            log.exception("internal_error method=%s path=%s request_id=%s", request.method,
                          request.raw_path.partition("?")[0][:256], request_id)
            response = error_response(500, "internal_error",
                                      "The gateway failed to handle the request.")
        if not response.prepared:
            response.headers["X-Request-Id"] = request_id
            # aiohttp would announce itself and its version
            response.headers.setdefault("Server", SERVER_NAME)
        metrics.observe(response.status, time.perf_counter() - started)
        return response

    return handle


def _http_exception_response(exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:
        return exc
    code = _HTTP_CODES.get(exc.status, "http_error")
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return error_response(exc.status, code, exc.reason, headers)
