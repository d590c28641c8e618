"""Path normalisation and the route table: the one path the gateway matches is the one it sends.

Pure and fast: these functions run on every proxied request and do no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gateway.config import Route
from gateway.errors import UnsafePathError

__all__ = ["RouteTable", "normalise_path", "upstream_target"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 §3.3 pchar without pct-encoded; a segment's first character is neither `.` nor `;`.
_PCHAR = "A-Za-z0-9\\-._~!$&'()*+,;=:@"
_FIRST_PCHAR = "A-Za-z0-9\\-_~!$&'()*+,=:@"

# A path made only of plain segments (no escapes, no dot segments, no empty segments, no
# segment starting with `;`) is already normal: most requests take this exit.
_ALREADY_NORMAL = re.compile(rf"(?:/[{_FIRST_PCHAR}][{_PCHAR}]*)*/?")
_RAW_REFUSED = re.compile(r"[\x00-\x1f\x7f\\]")
_RAW_TO_ENCODE = re.compile(rf"[^{_PCHAR}/%]+")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Checked after unreserved escapes are decoded, so `%25%32%65` is caught as `%252e`.
_DOUBLE_ENCODED = re.compile(r"%25(?:2[EF]|5C)", re.IGNORECASE)
# Overlong UTF-8 (`%C0%AE` is `.`, `%C0%AF` is `/` to a lax decoder); never valid UTF-8.
_OVERLONG_UTF8 = re.compile(r"%C[01]|%E0%[89]|%F0%8", re.IGNORECASE)
_DOT_WITH_PARAMS = re.compile(r"\.\.?(?:;|%3B)", re.IGNORECASE)


def _escape_replacement(byte: int) -> str | None:
    """What `%XX` for this byte becomes: the character, the uppercased escape, or None (refuse)."""
    char = chr(byte)
    if char in _UNRESERVED:
        return char
    # SECURITY: RFC 3986 §2.2 - an encoded `/` or `\` is data to us but a separator to many
    # upstreams; control characters (NUL, CR, LF) split or truncate paths downstream.
    if char in "/\\" or byte < 0x20 or byte == 0x7F:
        return None
    return f"%{byte:02X}"


_ESCAPES: dict[str, str | None] = {
    f"{byte:02X}": _escape_replacement(byte) for byte in range(256)
}


def normalise_path(raw_path: str) -> tuple[str, str]:
    """Split aiohttp's `request.raw_path` into `(normalised path, raw query)`.

    The gateway matches routes on the normalised path and sends that same path upstream,
    so the upstream can never see a path the route table did not. Raises `UnsafePathError`
    for anything that cannot be normalised without guessing how the upstream reads it.
    """
    path, _, query = raw_path.partition("?")
    # SECURITY: RFC 9112 §3.2.1 - only origin-form reaches a route (not `*`, not absolute-form).
    if not path.startswith("/"):
        raise UnsafePathError("The request path must start with `/`.")
    # SECURITY: RFC 9112 §3.2 - a request-target has no fragment; aiohttp cuts the path at
    # `#` while others keep it, so the route and the upstream could see different paths.
    if "#" in raw_path:
        raise UnsafePathError("The request target must not contain `#`.")
    if _ALREADY_NORMAL.fullmatch(path):
        return path, query
    return _remove_dot_segments(_canonical_escapes(path)), query


def _canonical_escapes(path: str) -> str:
    """Encode raw unsafe characters, decode unreserved escapes, uppercase the rest."""
    if _RAW_REFUSED.search(path):
        raise UnsafePathError("The request path contains a control character or `\\`.")
    path = _RAW_TO_ENCODE.sub(_encode_raw, path)
    if _MALFORMED_ESCAPE.search(path):
        raise UnsafePathError("The request path contains a malformed percent-escape.")
    path = _ESCAPE.sub(_decode_escape, path)
    # SECURITY: double decoding (CWE-174) - `%252e` is `.` to an upstream that decodes twice.
    if _DOUBLE_ENCODED.search(path):
        raise UnsafePathError("The request path contains a double-encoded `.`, `/` or `\\`.")
    # SECURITY: CWE-176 - overlong UTF-8 dots and slashes (the IIS/Tomcat traversals).
    if _OVERLONG_UTF8.search(path):
        raise UnsafePathError("The request path contains overlong UTF-8.")
    return path


def _encode_raw(match: re.Match[str]) -> str:
    """Percent-encode raw non-ASCII (as UTF-8) and ASCII characters a path may not hold."""
    try:
        data = match.group().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no request byte produced
        raise UnsafePathError("The request path is not valid text.") from None
    return "".join(f"%{byte:02X}" for byte in data)


def _decode_escape(match: re.Match[str]) -> str:
    replacement = _ESCAPES[match.group(1).upper()]
    if replacement is None:
        raise UnsafePathError(
            "The request path contains an encoded `/`, `\\` or control character.")
    return replacement


def _remove_dot_segments(path: str) -> str:
    """Merge repeated slashes and resolve `.`/`..` (RFC 3986 §5.2.4); keep a trailing slash."""
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments[1:]:
        if segment in ("", "."):
            continue
        if segment == "..":
            # SECURITY: RFC 3986 §5.2.4 clamps at the root; a climb above it is an attack.
            if not kept:
                raise UnsafePathError("The request path climbs above the root.")
            kept.pop()
        elif segment.startswith(";") or _DOT_WITH_PARAMS.match(segment):
            # SECURITY: Tomcat/Spring strip `;params` first: `..;` is `..` and `;x` is empty.
            raise UnsafePathError("The request path has a dot or empty segment with parameters.")
        else:
            kept.append(segment)
    trailing = "/" if kept and segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


def _match_key(path: str) -> tuple[str, ...]:
    """The path's segment names as the most lenient upstream reads them, for matching only.

    `;params` (also spelled `%3B`) are removed and trailing dots dropped, so `/admin;x`,
    `/admin%3Bx` and `/admin./x` are judged by the `/admin` route: Tomcat/Spring strip
    parameters and Windows servers trailing dots. The upstream still gets the path as is.
    """
    if "%3B" in path:
        path = path.replace("%3B", ";")
    segments = path.split("/")
    if ";" in path:
        segments = [segment.partition(";")[0] for segment in segments]
    if "." in path:
        segments = [segment.rstrip(".") or segment for segment in segments]
    return tuple(segment for segment in segments if segment)


class RouteTable:
    """Longest-prefix route lookup on whole path segments.

    Matching is case-sensitive (`/Admin` is not `/admin`), ignores a trailing slash on the
    prefix and each segment's `;params` (as Tomcat and Spring do, so `/admin;x/secret` is an
    `/admin` path), and never matches inside a segment (`/public` never matches `/publicity`).
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[tuple[str, ...], Route] = {}
        for route in routes:
            key = _prefix_key(route)
            if key in self._routes:
                first = self._routes[key].prefix
                raise ValueError(f"routes {first!r} and {route.prefix!r} have the same prefix")
            self._routes[key] = route
        self._depth = max((len(key) for key in self._routes), default=0)

    def match(self, path: str) -> Route | None:
        """The route with the longest prefix of the normalised `path`, or None."""
        key = _match_key(path)
        for length in range(min(len(key), self._depth), -1, -1):
            route = self._routes.get(key[:length])
            if route is not None:
                return route
        return None


def _prefix_key(route: Route) -> tuple[str, ...]:
    """The prefix read exactly as a request path is, so both compare like for like."""
    return _match_key(normalise_path(route.prefix)[0])


@dataclass(frozen=True, slots=True)
class Upstream:
    """What forwarding needs to know about a route's upstream, worked out once per route."""

    origin: str                # scheme://host[:port]
    address: tuple[str, int]   # where to connect
    authority: str             # the Host header to send
    base_path: str             # the upstream URL's own path, without a trailing slash
    strip: int                 # how many leading path segments `strip_prefix` removes
    is_plain_http: bool


_UPSTREAMS: dict[int, tuple[Route, Upstream]] = {}


def upstream_of(route: Route) -> Upstream:
    """The route's `Upstream`, cached by identity.

    Not by value: hashing a pydantic model on every request costs more than the rest of
    the lookup. The route is kept beside its entry, so its id cannot be reused meanwhile.
    """
    entry = _UPSTREAMS.get(id(route))
    if entry is None or entry[0] is not route:
        parts = urlsplit(route.upstream)
        default_port = 443 if parts.scheme == "https" else 80
        upstream = Upstream(
            origin=f"{parts.scheme}://{parts.netloc}", address=(parts.hostname or "",
                                                                parts.port or default_port),
            authority=parts.netloc, base_path=parts.path.rstrip("/"),
            strip=len(_prefix_key(route)) if route.strip_prefix else 0,
            is_plain_http=parts.scheme == "http")
        entry = _UPSTREAMS[id(route)] = (route, upstream)
    return entry[1]


def upstream_target(route: Route, path: str, query: str) -> str:
    """The path and query to request upstream for a normalised `path` that `route` matched.

    The upstream's base path (`http://h/base`) is prepended; with `strip_prefix` the route's
    prefix segments are removed first (`/api/users` -> `/users`, `/api` -> `/`).
    """
    upstream = upstream_of(route)
    if upstream.strip:
        path = "/" + "/".join(path.split("/")[upstream.strip + 1:])
    target = upstream.base_path + path
    return f"{target}?{query}" if query else target
