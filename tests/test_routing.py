"""Path normalisation, route matching and upstream targets (DESIGN.md §3 and §5)."""

from __future__ import annotations

from typing import Literal

import pytest

from gateway.config import Route
from gateway.errors import UnsafePathError
from gateway.routing import RouteTable, normalise_path, upstream_target


def make_route(
    prefix: str,
    upstream: str = "http://127.0.0.1:8080",
    *,
    auth: Literal["required", "optional", "none"] = "required",
    strip_prefix: bool = False,
) -> Route:
    return Route(prefix=prefix, upstream=upstream, auth=auth, strip_prefix=strip_prefix)


NORMALISED = [
    ("/", "/", "root"),
    ("/api/v1/users", "/api/v1/users", "plain"),
    ("/.well-known/jwks.json", "/.well-known/jwks.json", "leading-dot-name"),
    ("//a///b", "/a/b", "repeated-slashes"),
    ("/a/./b/../c", "/a/c", "dot-segments"),
    ("/a/b/./c/.", "/a/b/c/", "trailing-dot"),
    ("/./a", "/a", "leading-dot"),
    ("/a/%2e%2e/b", "/b", "encoded-dotdot-lower"),
    ("/a/%2E%2e/b/", "/b/", "encoded-dotdot-mixed-case"),
    ("/a/%2e/b", "/a/b", "encoded-dot"),
    ("/a/.%2e/b", "/b", "half-encoded-dotdot"),
    ("/%61dmin", "/admin", "encoded-letter"),
    ("/a/%7euser/%2D%5F", "/a/~user/-_", "encoded-unreserved"),
    ("/a%20b/%7b%3a", "/a%20b/%7B%3A", "other-escapes-uppercased"),
    ("/a/b/", "/a/b/", "trailing-slash-kept"),
    ("/a/b//", "/a/b/", "trailing-slashes-merged"),
    ("/a/b/.", "/a/b/", "dot-at-end-keeps-slash"),
    ("/a/b/..", "/a/", "dotdot-at-end-keeps-slash"),
    ("/a/..", "/", "dotdot-to-root"),
    ("/a;x/../b", "/b", "params-on-normal-segment-popped"),
    ("/a;jsessionid=1/b", "/a;jsessionid=1/b", "params-kept-for-upstream"),
    ("/caf\u00e9/\u65e5", "/caf%C3%A9/%E6%97%A5", "raw-unicode-encoded-utf8"),
    ("/caf%c3%a9", "/caf%C3%A9", "encoded-unicode-uppercased"),
    ("/a b/<x>", "/a%20b/%3Cx%3E", "raw-unsafe-ascii-encoded"),
    ("/a/\udcff", "/a/%FF", "undecodable-request-byte-encoded"),
]


@pytest.mark.parametrize(("raw", "expected"), [(r, e) for r, e, _ in NORMALISED],
                         ids=[i for _, _, i in NORMALISED])
def test_paths_are_normalised_to_one_canonical_form(raw: str, expected: str) -> None:
    """Dot segments go, `%2e` and other unreserved escapes decode, slashes merge (§5)."""
    assert normalise_path(raw) == (expected, "")


@pytest.mark.parametrize("raw", [r for r, _, _ in NORMALISED], ids=[i for _, _, i in NORMALISED])
def test_normalising_twice_changes_nothing(raw: str) -> None:
    """The upstream re-reading the sent path finds the same path the route table matched."""
    path, _ = normalise_path(raw)
    assert normalise_path(path) == (path, "")


REFUSED = [
    ("", "empty"),
    ("*", "asterisk-form"),
    ("http://evil.example/admin", "absolute-form"),
    ("a/b", "no-leading-slash"),
    ("/..", "dotdot-above-root"),
    ("/a/../..", "climb-above-root"),
    ("/%2e%2e/admin", "encoded-dotdot-above-root"),
    ("/a/%2E%2e/%2e%2E/etc/passwd", "encoded-climb-above-root"),
    ("/../a", "leading-dotdot"),
    ("/a%2fb", "encoded-slash-lower"),
    ("/a%2Fb", "encoded-slash-upper"),
    ("/public/..%2fadmin", "dotdot-encoded-slash"),
    ("/a%5cb", "encoded-backslash"),
    ("/a\\b", "raw-backslash"),
    ("/public/..\\admin", "raw-backslash-traversal"),
    ("/a%00b", "encoded-nul"),
    ("/a\x00b", "raw-nul"),
    ("/a%0ab", "encoded-lf"),
    ("/a%0D%0Ab", "encoded-crlf"),
    ("/a\nb", "raw-lf"),
    ("/a%1fb", "encoded-unit-separator"),
    ("/a%7fb", "encoded-del"),
    ("/a\x7fb", "raw-del"),
    ("/a/%252e%252e/b", "double-encoded-dot"),
    ("/a/%252E", "double-encoded-dot-upper"),
    ("/a%252fb", "double-encoded-slash"),
    ("/a%255cb", "double-encoded-backslash"),
    ("/a/%25%32%65", "double-encoded-dot-spelled-in-escapes"),
    ("/a%", "lone-percent"),
    ("/a%4", "short-escape"),
    ("/a%zz", "non-hex-escape"),
    ("/public/..;/admin", "tomcat-dotdot-params"),
    ("/public/..;x=1/admin", "tomcat-dotdot-named-params"),
    ("/public/.;/admin", "dot-params"),
    ("/public/%2e%2e;/admin", "encoded-dotdot-params"),
    ("/public/..%3b/admin", "dotdot-encoded-semicolon"),
    ("/;x/admin", "params-only-segment"),
    ("/%c0%ae%c0%ae/admin", "overlong-utf8-dot"),
    ("/a%c0%afb", "overlong-utf8-slash"),
    ("/a%e0%80%aeb", "overlong-3-byte-dot"),
    ("/a/\udcc0\udcae", "raw-overlong-request-bytes"),
    ("/a/\ud800", "lone-surrogate"),
    ("/a#b", "raw-fragment"),
    ("/a?b#c", "fragment-after-query"),
]


@pytest.mark.parametrize("raw", [r for r, _ in REFUSED], ids=[i for _, i in REFUSED])
def test_paths_that_cannot_be_normalised_safely_are_refused(raw: str) -> None:
    """Encoded `/`, `\\`, NUL/controls, double encoding, `..;` and climbing give 400 (§5)."""
    with pytest.raises(UnsafePathError) as caught:
        normalise_path(raw)
    assert caught.value.status == 400


QUERIES = [
    ("/a/b?q=1", ("/a/b", "q=1"), "simple"),
    ("/a/./b?next=/../admin%2f", ("/a/b", "next=/../admin%2f"), "traversal-in-query-untouched"),
    ("/a?x=%zz&y=%00", ("/a", "x=%zz&y=%00"), "bad-escapes-in-query-untouched"),
    ("/a?b?c", ("/a", "b?c"), "second-question-mark-is-query"),
    ("/a?", ("/a", ""), "empty-query"),
    ("/a", ("/a", ""), "no-query"),
]


@pytest.mark.parametrize(("raw", "expected"), [(r, e) for r, e, _ in QUERIES],
                         ids=[i for _, _, i in QUERIES])
def test_query_is_split_off_and_returned_unchanged(raw: str, expected: tuple[str, str]) -> None:
    """Only the path is normalised; the query reaches the upstream as the client sent it."""
    assert normalise_path(raw) == expected


TABLE = RouteTable([
    make_route("/", auth="required"),
    make_route("/public/", auth="none"),
    make_route("/admin"),
    make_route("/api"),
    make_route("/api/v1/"),
])

MATCHES = [
    ("/", "/", "root"),
    ("/anything/else", "/", "fallback"),
    ("/public", "/public/", "prefix-without-slash"),
    ("/public/", "/public/", "prefix-with-slash"),
    ("/public/x/y", "/public/", "below-prefix"),
    ("/publicity", "/", "not-inside-a-segment"),
    ("/public-x/y", "/", "not-inside-a-segment-dash"),
    ("/Public/x", "/", "case-sensitive"),
    ("/admin;x/secret", "/admin", "params-ignored"),
    ("/admin;jsessionid=abc", "/admin", "params-on-last-segment-ignored"),
    ("/public;x/y", "/public/", "params-on-prefix-segment-ignored"),
    ("/api/v1/users", "/api/v1/", "longest-prefix-wins"),
    ("/api/v1;v=2/users", "/api/v1/", "longest-prefix-wins-with-params"),
    ("/api/v2/users", "/api", "shorter-prefix-when-longer-misses"),
    ("/api/v1x", "/api", "longer-prefix-whole-segment-only"),
]


@pytest.mark.parametrize(("path", "prefix"), [(p, r) for p, r, _ in MATCHES],
                         ids=[i for _, _, i in MATCHES])
def test_longest_prefix_wins_on_whole_segments(path: str, prefix: str) -> None:
    """Prefixes match whole segments, case-sensitively, ignoring `;params` (§3)."""
    route = TABLE.match(path)
    assert route is not None
    assert route.prefix == prefix


@pytest.mark.parametrize("prefix", ["/public", "/public/", "//public//"],
                         ids=["no-slash", "trailing-slash", "extra-slashes"])
@pytest.mark.parametrize(("path", "matches"), [
    ("/public", True), ("/public/", True), ("/public/x", True),
    ("/publicity", False), ("/publi", False), ("/x/public", False),
])
def test_trailing_slash_on_prefix_does_not_matter(prefix: str, path: str, matches: bool) -> None:
    """`/public/` and `/public` match the same paths, never `/publicity` (§3)."""
    route = make_route(prefix)
    assert (RouteTable([route]).match(path) is route) is matches


def test_no_route_matches_outside_every_prefix() -> None:
    """Without a `/` route, a path under no prefix gets no route (the caller answers 404)."""
    table = RouteTable([make_route("/api")])
    assert table.match("/apix") is None
    assert table.match("/") is None


def test_root_prefix_matches_every_path() -> None:
    """Prefix `/` is the catch-all."""
    route = make_route("/")
    table = RouteTable([route])
    assert [table.match(p) for p in ("/", "/a", "/a/b/")] == [route, route, route]


def test_unicode_prefix_matches_the_normalised_path() -> None:
    """A prefix is read like a request path, so `/café` matches the encoded request path."""
    route = make_route("/caf\u00e9")
    table = RouteTable([make_route("/"), route])
    assert table.match(normalise_path("/caf\u00e9/menu")[0]) is route
    assert table.match(normalise_path("/caf%C3%A9/menu")[0]) is route


def test_prefixes_that_normalise_alike_are_refused() -> None:
    """Two routes whose prefixes match the same paths would make the winner arbitrary."""
    with pytest.raises(ValueError, match="same prefix"):
        RouteTable([make_route("/a/b"), make_route("/a//b/")])


BYPASSES = [
    "/public/../admin", "/public/%2e%2e/admin", "/public/%2E%2E/admin/", "/public/.%2e/admin",
    "/public/./../admin", "/public//..//admin", "/public/..;/admin", "/public/..%2fadmin",
    "/public/..%5cadmin", "/public/%252e%252e/admin", "/public/..\\admin",
    "/public/x/../../admin", "/public;x/../admin", "/;x/admin", "/%61dmin", "/admin;x/secret",
]


@pytest.mark.parametrize("raw", BYPASSES)
def test_traversal_out_of_a_public_prefix_never_reaches_the_admin_path_unprotected(
    raw: str,
) -> None:
    """Every classic bypass is refused or matches the protected route it really targets."""
    public = make_route("/public/", auth="none")
    admin = make_route("/admin", auth="required")
    table = RouteTable([make_route("/", auth="none"), public, admin])
    try:
        path, _ = normalise_path(raw)
    except UnsafePathError:
        return
    assert table.match(path) is admin
    assert path.startswith("/admin")


TARGETS = [
    ("/api", "http://u:1", False, "/api/users", "", "/api/users", "full-path"),
    ("/api", "http://u:1", False, "/api/users", "a=1&b=2", "/api/users?a=1&b=2", "with-query"),
    ("/api", "http://u:1/base", False, "/api/users", "", "/base/api/users", "base-path"),
    ("/api", "http://u:1", True, "/api/users", "", "/users", "strip"),
    ("/api/", "http://u:1", True, "/api/users/", "", "/users/", "strip-keeps-trailing-slash"),
    ("/api", "http://u:1", True, "/api", "", "/", "strip-exact-prefix"),
    ("/api", "http://u:1", True, "/api/", "", "/", "strip-prefix-with-slash"),
    ("/api", "http://u:1", True, "/api;v=1/users", "", "/users", "strip-prefix-with-params"),
    ("/api/v1", "http://u:1/base/", True, "/api/v1/x", "q", "/base/x?q", "strip-and-base"),
    ("/api", "http://u:1/base", True, "/api", "", "/base/", "strip-to-base"),
    ("/", "http://u:1/base", True, "/x/y", "", "/base/x/y", "strip-root-prefix"),
    ("/", "http://u:1", False, "/", "", "/", "root"),
]


@pytest.mark.parametrize(
    ("prefix", "upstream", "strip", "path", "query", "expected"),
    [t[:6] for t in TARGETS], ids=[t[6] for t in TARGETS])
def test_upstream_target_joins_base_path_and_optionally_strips_prefix(
    prefix: str, upstream: str, strip: bool, path: str, query: str, expected: str,
) -> None:
    """The upstream gets its base path + the normalised path, prefix removed on request (§3)."""
    route = make_route(prefix, upstream, strip_prefix=strip)
    assert upstream_target(route, path, query) == expected
