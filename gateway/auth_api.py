"""The endpoints the gateway serves itself: /user/login, /user/logout, /user/logout_all."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
from typing import Any

from aiohttp import web

from gateway.authentication import authenticate, bearer_token, verify_bearer
from gateway.errors import (
    BadCredentialsError,
    MalformedBodyError,
    MissingTokenError,
    PayloadTooLargeError,
    RateLimitedError,
    UnsupportedMediaTypeError,
)
from gateway.request_body import LimitedBody
from gateway.services import Services
from gateway.tokens import fingerprint, is_valid_subject, issue_time

log = logging.getLogger(__name__)
MAX_LOGIN_BODY = 16 * 1024
LOGIN_BODY_TIMEOUT = 10.0  # 16 KiB need not trickle in for longer
JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def login_limit_key(username: str) -> str:
    """The failed-login limiter's key for `username`: a fixed-size digest, so that up to
    100,000 usernames of up to 16 KiB each cannot hold gigabytes in the limiter."""
    digest = hashlib.blake2b(username.encode(), digest_size=16).hexdigest()
    return f"user:{digest}"


def address_limit_key(remote: str | None) -> str:
    """The failed-login limiter's key for a client address. An IPv6 client counts by its
    /64: one host usually holds a whole /64, and keying each address would give it 2^64
    fresh limits."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return f"addr:{remote or 'unknown'}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"addr:{address.ipv4_mapped}"
        return f"addr:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"addr:{address}"


async def login(request: web.BaseRequest, services: Services) -> web.Response:
    """Exchange a username and password for a token (200), or 401/400/413/415/429."""
    username, password = _parse_credentials(await _read_login_body(request))
    peer = request.remote or "unknown"
    limit_keys = (login_limit_key(username), address_limit_key(request.remote))
    retry_after = services.login_limiter.retry_after(*limit_keys)
    if retry_after is not None:
        services.metrics.logins["rate_limited"] += 1
        raise RateLimitedError(retry_after)
    # SECURITY: a check in flight counts against the username's limit, so concurrent
    # guesses cannot all pass `retry_after` before the first of them fails. Not against the
    # address's: many users behind one proxy or NAT log in at once (guesses spread over
    # usernames are bounded by the pending checks, then by their recorded failures).
    services.login_limiter.begin(limit_keys[0])
    try:
        matches = await services.passwords.check(username, password)
    finally:
        services.login_limiter.end(limit_keys[0])
    if not matches:
        services.login_limiter.record_failure(*limit_keys)
        services.metrics.logins["failed"] += 1
        log.info("login_failed user_fp=%s peer=%s", fingerprint(username), peer)
        raise BadCredentialsError()
    services.login_limiter.reset(limit_keys[0])
    token, claims = services.issuer.issue(username)
    services.metrics.logins["succeeded"] += 1
    log.info("login_succeeded user=%s jti=%s peer=%s", username, claims.token_id, peer)
    return web.Response(
        body=json.dumps({"token": token}).encode(),
        headers={"Content-Type": JSON_CONTENT_TYPE, "Cache-Control": "no-store",
                 "Pragma": "no-cache"})


async def _read_login_body(request: web.BaseRequest) -> bytes:
    if request.content_type != "application/json":
        raise UnsupportedMediaTypeError()
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        raise PayloadTooLargeError("The login body must be at most 16 KiB.")
    try:
        return await LimitedBody(request, MAX_LOGIN_BODY, LOGIN_BODY_TIMEOUT).read_all()
    except PayloadTooLargeError:
        raise PayloadTooLargeError("The login body must be at most 16 KiB.") from None


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise MalformedBodyError(f"The JSON body repeats the key {key!r}.")
        result[key] = value
    return result


def _no_constants(name: str) -> None:
    raise MalformedBodyError(f"The JSON body holds {name}, which is not JSON.")


def _parse_credentials(body: bytes) -> tuple[str, str]:
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_unique_object,
                          parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        if isinstance(exc, MalformedBodyError):
            raise
        raise MalformedBodyError("The body is not valid UTF-8 JSON.") from None
    if not isinstance(data, dict):
        raise MalformedBodyError("The body must be a JSON object.")
    username, password = data.get("username"), data.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        raise MalformedBodyError("`username` and `password` must both be strings.")
    if not _is_unicode_text(username) or not _is_unicode_text(password):
        raise MalformedBodyError("`username` and `password` must be valid Unicode text.")
    return username, password


def _is_unicode_text(value: str) -> bool:
    """False for a string holding a lone surrogate (JSON's `\\ud800` escape decodes to
    one): it has no UTF-8 form, so no password hash could take it (it was a 500)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def logout(request: web.BaseRequest, services: Services) -> web.Response:
    """Revoke the Bearer token sent; 204 once the revocation is durable (repeatable)."""
    claims = verify_bearer(services, request.headers)
    await services.revocations.revoke_token(
        claims.token_id, claims.expires_at + services.config.tokens.leeway)
    services.metrics.revocations["token"] += 1
    log.info("logout user=%s jti=%s", claims.subject, claims.token_id)
    return web.Response(status=204)


async def logout_all(request: web.BaseRequest, services: Services) -> web.Response:
    """Revoke every token of a user issued up to now; 204 once durable."""
    subject = _logout_all_subject(services, request)
    now = issue_time(services.clock())
    lifetime = services.config.tokens.ttl + services.config.tokens.leeway
    await services.revocations.revoke_subject(subject, now, now + lifetime)
    services.metrics.revocations["subject"] += 1
    log.info("logout_all user=%s peer=%s", subject, request.remote)
    return web.Response(status=204)


def _logout_all_subject(services: Services, request: web.BaseRequest) -> str:
    """The subject of the Bearer token; or X-Auth-UserId, from trusted callers only.

    SECURITY: DESIGN §4: the header form is honoured only from `trusted_networks`.
    """
    if bearer_token(request.headers) is not None:
        return authenticate(services, request.headers).subject
    asserted = request.headers.getall(services.config.identity_header, [])
    if asserted and _is_trusted(services, request.remote):
        if len(asserted) != 1 or not is_valid_subject(asserted[0]):
            raise MalformedBodyError(
                f"Send exactly one valid {services.config.identity_header} header.")
        return asserted[0]
    raise MissingTokenError()


def _is_trusted(services: Services, remote: str | None) -> bool:
    if remote is None or not services.config.trusted_networks:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in services.config.trusted_networks)
