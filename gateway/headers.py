"""Pure header rewriting for both directions of the proxy: hop-by-hop removal, identity
stripping and injection, X-Forwarded-* and Via. No I/O; one pass over the headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from multidict import CIMultiDict, MultiMapping

__all__ = ["HOP_BY_HOP", "build_upstream_headers", "filter_response_headers"]

# SECURITY: RFC 9110 §7.6.1 - connection-specific fields, plus the proxy-* ones that are meant
# for this hop only (a client's Proxy-Authorization must never reach the upstream).
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})
# SECURITY: DESIGN.md §5 - the proxy rebuilds framing itself (request smuggling otherwise).
_FRAMING = frozenset({"content-length", "transfer-encoding"})
# Set by the gateway itself, so whatever the client sent is a spoof.
_GATEWAY_SET = frozenset({"x-forwarded-proto", "x-forwarded-host", "x-request-id"})
# Forwarding and URL-override headers some upstream frameworks trust; no client may set them.
_SPOOFABLE = frozenset({
    "forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server",
    "x-original-url", "x-rewrite-url",
})
# Values kept and the gateway's own entry appended (RFC 9110 §7.6.3 for Via).
_REQUEST_APPENDED = frozenset({"x-forwarded-for", "via"})
_REQUEST_DROP = HOP_BY_HOP | _FRAMING | _GATEWAY_SET | _SPOOFABLE | {"expect", "host"}
_RESPONSE_DROP = HOP_BY_HOP | _FRAMING
_VIA_ENTRY = "1.1 gateway"
# RFC 9110 §5.5 allows HTAB in a field value; any other control character is refused.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def normalise_name(name: str) -> str:
    """A header name as the gateway compares it: lowercase, with `_` read as `-`.

    Some servers (WSGI/CGI) turn `X-Auth_UserId` into the same variable as `X-Auth-UserId`.
    """
    return name.lower().replace("_", "-")


@cache
def _request_drop_set(identity: str, forward_authorization: bool) -> frozenset[str]:
    """Normalised names removed from every forwarded request (cached: few distinct keys)."""
    # SECURITY: DESIGN.md §5 - every spelling of the identity header is stripped, then injected.
    drop = _REQUEST_DROP | {identity}
    if not forward_authorization:
        drop |= {"authorization"}
    return drop


def _tokens(values: Iterable[str]) -> frozenset[str]:
    """Normalised header names listed in `Connection` header values (RFC 9110 §7.6.1)."""
    tokens = (token.strip() for value in values for token in value.split(","))
    return frozenset(normalise_name(token) for token in tokens if token)


def _copy(
    fields: list[tuple[str, str]], drop: frozenset[str], appended: frozenset[str]
) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
    """Copy every field not in `drop`, in order; collect the values of `appended` ones."""
    out: list[tuple[str, str]] = []
    collected: dict[str, list[str]] = {name: [] for name in appended}
    for name, value in fields:
        lower = name.lower()
        normal = lower.replace("_", "-") if "_" in lower else lower
        if normal in drop:
            continue
        if normal in appended:
            # SECURITY: only the exact spelling is appended to; `X_Forwarded_For` is dropped,
            # so no upstream can read a client-chosen value under a look-alike name.
            if lower == normal:
                collected[normal].append(value)
            continue
        out.append((name, value))
    return out, collected


def _joined(values: list[str], entry: str | None) -> str | None:
    """The list-valued header `values` with `entry` appended, or None when both are empty."""
    parts = values if entry is None else [*values, entry]
    return ", ".join(parts) if parts else None


def build_upstream_headers(
    headers: MultiMapping[str],
    *,
    identity: str | None,
    identity_header: str,
    forward_authorization: bool,
    peer: str | None,
    scheme: str,
    host: str | None,
    request_id: str | None,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request's `headers` (see `upstream_fields`)."""
    return CIMultiDict(upstream_fields(
        list(headers.items()), identity=identity, identity_header=identity_header,
        forward_authorization=forward_authorization, peer=peer, scheme=scheme, host=host,
        request_id=request_id, websocket=websocket))


def upstream_fields(
    fields: list[tuple[str, str]],
    *,
    identity: str | None,
    identity_header: str,
    forward_authorization: bool,
    peer: str | None,
    scheme: str,
    host: str | None,
    request_id: str | None,
    websocket: bool = False,
) -> list[tuple[str, str]]:
    """The (name, value) fields to send upstream for a client request's `fields`.

    Removes hop-by-hop, framing and spoofable headers and every spelling of the identity
    header, then injects what the gateway vouches for, last, so nothing the client sent
    (not even `Connection: X-Auth-UserId`) can remove it.
    """
    _refuse_control_characters(identity, peer, host, request_id, scheme)
    drop = _request_drop_set(normalise_name(identity_header), forward_authorization)
    connection = [value for name, value in fields if name.lower() == "connection"]
    if connection:
        # SECURITY: RFC 9110 §7.6.1 - a field named in Connection is hop-by-hop.
        drop = drop | _tokens(connection)
    if websocket:
        drop = drop - {"upgrade"}
    out, appended = _copy(fields, drop, _REQUEST_APPENDED)
    if websocket and any(name.lower() == "upgrade" for name, _ in out):
        out.append(("Connection", "Upgrade"))
    _add_if_set(out, "X-Forwarded-For", _joined(appended["x-forwarded-for"], peer))
    _add_if_set(out, "Via", _joined(appended["via"], _VIA_ENTRY))
    out.append(("X-Forwarded-Proto", scheme))
    _add_if_set(out, "X-Forwarded-Host", host)
    _add_if_set(out, "X-Request-Id", request_id)
    _add_if_set(out, identity_header, identity)
    return out


def filter_response_headers(
    headers: MultiMapping[str], *, keep_upgrade: bool = False
) -> CIMultiDict[str]:
    """The upstream answer's headers as the client gets them: hop-by-hop and framing removed.

    Repeated headers (Set-Cookie) stay in order; Via gains the gateway's entry. With
    `keep_upgrade` (a websocket 101) Upgrade is kept and `Connection: Upgrade` sent.
    """
    out = CIMultiDict(response_fields(list(headers.items()), keep_upgrade=keep_upgrade))
    if keep_upgrade and "Upgrade" in out:
        out.add("Connection", "Upgrade")
    return out


def response_fields(fields: list[tuple[str, str]], *,
                    keep_upgrade: bool = False) -> list[tuple[str, str]]:
    """`filter_response_headers` on a list of (name, value) pairs, without `Connection:
    Upgrade` (the fast path writes these pairs straight into the client's answer)."""
    drop = _RESPONSE_DROP
    connection = [value for name, value in fields if name.lower() == "connection"]
    if connection:
        # SECURITY: RFC 9110 §7.6.1 - a field named in Connection is hop-by-hop.
        drop = drop | _tokens(connection)
    if keep_upgrade:
        drop = drop - {"upgrade"}
    out: list[tuple[str, str]] = []
    via: list[str] = []
    for name, value in fields:
        lower = name.lower()
        normal = lower.replace("_", "-") if "_" in lower else lower
        if normal in drop:
            continue
        if normal == "via":
            if lower == normal:  # SECURITY: a look-alike spelling is dropped, not appended to
                via.append(value)
            continue
        out.append((name, value))
    out.append(("Via", _joined(via, _VIA_ENTRY) or _VIA_ENTRY))
    return out


def _add_if_set(out: list[tuple[str, str]], name: str, value: str | None) -> None:
    if value is not None:
        out.append((name, value))


def _refuse_control_characters(*values: str | None) -> None:
    """Injected values must not be able to split a header (tokens.py already refuses them)."""
    # SECURITY: RFC 9110 §5.5 - CR, LF and NUL in a field value allow header injection.
    if _CONTROL.search("".join(value for value in values if value is not None)):
        raise ValueError("an injected header value contains a control character")
