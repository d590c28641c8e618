"""Pure header rewriting for both directions of the proxy: hop-by-hop removal, identity
stripping and injection, X-Forwarded-* and Via. No I/O; one pass over the headers.
"""

from __future__ import annotations

import re
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
_RESPONSE_APPENDED = frozenset({"via"})
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


def _connection_tokens(headers: MultiMapping[str]) -> frozenset[str]:
    """Normalised header names listed in every `Connection` header (RFC 9110 §7.6.1)."""
    tokens = (token.strip() for value in headers.getall("Connection", ()) for token in
              value.split(","))
    return frozenset(normalise_name(token) for token in tokens if token)


def _drop_set(base: frozenset[str], headers: MultiMapping[str], upgrade: bool) -> frozenset[str]:
    """`base` plus the headers the sender named in Connection; Upgrade kept for websockets."""
    drop = base
    if "Connection" in headers:
        # SECURITY: RFC 9110 §7.6.1 - a field named in Connection is hop-by-hop.
        drop = drop | _connection_tokens(headers)
    return drop - {"upgrade"} if upgrade else drop


def _copy(
    headers: MultiMapping[str], drop: frozenset[str], appended: frozenset[str]
) -> tuple[CIMultiDict[str], dict[str, list[str]]]:
    """Copy every header not in `drop`, in order; collect the values of `appended` ones."""
    out: CIMultiDict[str] = CIMultiDict()
    collected: dict[str, list[str]] = {name: [] for name in appended}
    for name, value in headers.items():
        lower = name.lower()
        normal = lower.replace("_", "-")
        if normal in drop:
            continue
        if normal in appended:
            # SECURITY: only the exact spelling is appended to; `X_Forwarded_For` is dropped,
            # so no upstream can read a client-chosen value under a look-alike name.
            if lower == normal:
                collected[normal].append(value)
            continue
        out.add(name, value)
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
    """The headers to send upstream for a client request's `headers`.

    Removes hop-by-hop, framing and spoofable headers and every spelling of the identity
    header, then injects what the gateway vouches for, last, so nothing the client sent
    (not even `Connection: X-Auth-UserId`) can remove it.
    """
    _refuse_control_characters(identity, peer, host, request_id, scheme)
    base = _request_drop_set(normalise_name(identity_header), forward_authorization)
    out, appended = _copy(headers, _drop_set(base, headers, websocket), _REQUEST_APPENDED)
    if websocket and "Upgrade" in out:
        out.add("Connection", "Upgrade")
    _add_if_set(out, "X-Forwarded-For", _joined(appended["x-forwarded-for"], peer))
    _add_if_set(out, "Via", _joined(appended["via"], _VIA_ENTRY))
    out.add("X-Forwarded-Proto", scheme)
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
    drop = _drop_set(_RESPONSE_DROP, headers, keep_upgrade)
    out, appended = _copy(headers, drop, _RESPONSE_APPENDED)
    if keep_upgrade and "Upgrade" in out:
        out.add("Connection", "Upgrade")
    _add_if_set(out, "Via", _joined(appended["via"], _VIA_ENTRY))
    return out


def _add_if_set(out: CIMultiDict[str], name: str, value: str | None) -> None:
    if value is not None:
        out.add(name, value)


def _refuse_control_characters(*values: str | None) -> None:
    """Injected values must not be able to split a header (tokens.py already refuses them)."""
    # SECURITY: RFC 9110 §5.5 - CR, LF and NUL in a field value allow header injection.
    if _CONTROL.search("".join(value for value in values if value is not None)):
        raise ValueError("an injected header value contains a control character")
