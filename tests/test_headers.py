"""Header rewriting in both directions (DESIGN.md §5): hop-by-hop, identity, X-Forwarded-*."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.headers import (
    HOP_BY_HOP,
    build_upstream_headers,
    filter_response_headers,
    normalise_name,
)

Pairs = list[tuple[str, str]]
PEER = "203.0.113.7"


def incoming(pairs: Pairs) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them over: a read-only case-insensitive multidict."""
    return CIMultiDictProxy(CIMultiDict(pairs))


def upstream(pairs: Pairs, **overrides: Any) -> CIMultiDict[str]:
    """`build_upstream_headers` with a logged-in `alice` unless told otherwise."""
    options: dict[str, Any] = {
        "identity": "alice", "identity_header": "X-Auth-UserId",
        "forward_authorization": False, "peer": PEER, "scheme": "https",
        "host": "gw.example", "request_id": "req-1",
    }
    options.update(overrides)
    return build_upstream_headers(incoming(pairs), **options)


def values_named(headers: CIMultiDict[str], name: str) -> list[str]:
    """Every value whose header name normalises like `name` (`_` read as `-`)."""
    wanted = normalise_name(name)
    return [value for key, value in headers.items() if normalise_name(key) == wanted]


SPOOFED_IDENTITY = [
    ([("X-Auth-UserId", "mallory")], "canonical"),
    ([("x-auth-userid", "mallory")], "lowercase"),
    ([("X-AUTH-USERID", "mallory")], "uppercase"),
    ([("x_auth_userid", "mallory")], "underscores"),
    ([("X-AUTH_USERID", "mallory")], "mixed-underscore"),
    ([("X_Auth-UserId", "mallory")], "other-underscore"),
    ([("X-Auth-UserId", "mallory"), ("X-Auth-UserId", "eve")], "repeated"),
    ([("X-Auth-UserId", "mallory"), ("x_auth_userid", "eve"), ("X-AUTH_USERID", "x")],
     "all-spellings-at-once"),
    ([("Connection", "X-Auth-UserId"), ("X-Auth-UserId", "mallory")], "connection-names-it"),
    ([("Connection", "x_auth_userid, keep-alive"), ("Keep-Alive", "5")],
     "connection-names-underscore-spelling"),
    ([("Connection", "X-AUTH-USERID"), ("Connection", "close")], "repeated-connection"),
]


@pytest.mark.parametrize("pairs", [p for p, _ in SPOOFED_IDENTITY],
                         ids=[i for _, i in SPOOFED_IDENTITY])
def test_identity_header_spellings_are_all_stripped_then_injected_once(pairs: Pairs) -> None:
    """Every spelling of the identity header is removed; the gateway's value is sent once."""
    out = upstream(pairs)
    assert values_named(out, "X-Auth-UserId") == ["alice"]
    assert "Connection" not in out


@pytest.mark.parametrize("pairs", [p for p, _ in SPOOFED_IDENTITY],
                         ids=[i for _, i in SPOOFED_IDENTITY])
def test_identity_header_is_stripped_and_absent_without_identity(pairs: Pairs) -> None:
    """With no verified identity (auth none/optional) the client's identity never passes."""
    out = upstream(pairs, identity=None)
    assert values_named(out, "X-Auth-UserId") == []


@pytest.mark.parametrize("spelling", ["X-User", "x_user", "X_USER", "x-user"])
def test_configured_identity_header_name_is_stripped_in_every_spelling(spelling: str) -> None:
    """The identity header is whatever the config names, compared the same normalised way."""
    out = upstream([(spelling, "mallory"), ("X-Auth-UserId", "kept")],
                   identity_header="X-User")
    assert values_named(out, "X-User") == ["alice"]
    assert out.getall("X-Auth-UserId") == ["kept"]


def test_identity_header_is_sent_under_the_configured_spelling() -> None:
    """Upstreams that compare names case-sensitively still find the configured name."""
    out = upstream([])
    assert ("X-Auth-UserId", "alice") in list(out.items())


@pytest.mark.parametrize("identity", ["alice\r\nX-Admin: 1", "a\x00b", "a\nb"],
                         ids=["crlf", "nul", "lf"])
def test_control_characters_in_an_injected_value_are_refused(identity: str) -> None:
    """An injected value can never split into a second header (defence behind tokens.py)."""
    with pytest.raises(ValueError, match="control character"):
        upstream([], identity=identity)


def test_hop_by_hop_set_is_rfc_9110_plus_proxy_headers() -> None:
    """HOP_BY_HOP holds exactly RFC 9110 §7.6.1's fields plus Proxy-Authorization/-Authenticate."""
    assert frozenset({
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
        "upgrade", "proxy-authorization", "proxy-authenticate",
    }) == HOP_BY_HOP


HOP_BY_HOP_SPELLINGS = [
    ("Connection", "close"), ("Keep-Alive", "timeout=5"), ("keep_alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"), ("Proxy_Connection", "keep-alive"), ("TE", "trailers"),
    ("Trailer", "X-Checksum"), ("Transfer-Encoding", "chunked"), ("transfer_encoding", "chunked"),
    ("Upgrade", "websocket"), ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
    ("PROXY_AUTHORIZATION", "Basic Zm9vOmJhcg=="), ("Proxy-Authenticate", "Basic"),
]


@pytest.mark.parametrize(("name", "value"), HOP_BY_HOP_SPELLINGS,
                         ids=[n for n, _ in HOP_BY_HOP_SPELLINGS])
def test_hop_by_hop_headers_are_removed_from_requests(name: str, value: str) -> None:
    """RFC 9110 §7.6.1 fields, in any spelling, never reach the upstream."""
    out = upstream([(name, value), ("Accept", "*/*")])
    assert values_named(out, name) == []
    assert out.getall("Accept") == ["*/*"]


CONNECTION_NAMED = [
    ([("Connection", "X-Secret")], "one-token"),
    ([("Connection", "close, X-Secret")], "listed-second"),
    ([("connection", " , x-secret ,")], "lowercase-with-empty-tokens"),
    ([("Connection", "X_SECRET")], "underscore-token"),
    ([("Connection", "keep-alive"), ("Connection", "X-Secret")], "repeated-connection"),
]


@pytest.mark.parametrize("connection", [c for c, _ in CONNECTION_NAMED],
                         ids=[i for _, i in CONNECTION_NAMED])
@pytest.mark.parametrize("spelling", ["X-Secret", "x_secret"])
def test_headers_named_in_connection_are_removed(connection: Pairs, spelling: str) -> None:
    """A header the client lists in Connection is hop-by-hop (RFC 9110 §7.6.1)."""
    out = upstream([(spelling, "s"), *connection, ("X-Other", "o")])
    assert values_named(out, "X-Secret") == []
    assert out.getall("X-Other") == ["o"]


REQUEST_DROPPED = [
    "Content-Length", "Transfer-Encoding", "Expect", "Host", "Forwarded", "X-Real-IP",
    "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server", "X-Original-URL",
    "X-Rewrite-URL", "x_real_ip", "X_Original_Url",
]


@pytest.mark.parametrize("name", REQUEST_DROPPED)
def test_framing_and_spoofable_forwarding_headers_are_removed(name: str) -> None:
    """Framing is rebuilt by the proxy; forwarding/override headers are the gateway's to set."""
    out = upstream([(name, "spoofed"), ("Accept", "*/*")], host=None)
    assert values_named(out, name) == []
    assert out.getall("Accept") == ["*/*"]


@pytest.mark.parametrize("pairs", [
    [("X-Forwarded-Proto", "http"), ("X-Forwarded-Host", "evil.example")],
    [("x_forwarded_proto", "http"), ("X_FORWARDED_HOST", "evil.example")],
    [("X-Forwarded-Proto", "http"), ("X-Forwarded-Proto", "ftp")],
    [("Connection", "X-Forwarded-Proto, X-Forwarded-Host")],
], ids=["canonical", "underscores", "repeated", "connection-names-them"])
def test_x_forwarded_proto_and_host_are_set_by_the_gateway_only(pairs: Pairs) -> None:
    """X-Forwarded-Proto/Host carry the gateway's view, never the client's (§5)."""
    out = upstream(pairs, scheme="https", host="gw.example")
    assert values_named(out, "X-Forwarded-Proto") == ["https"]
    assert values_named(out, "X-Forwarded-Host") == ["gw.example"]


def test_x_forwarded_host_is_absent_when_the_host_is_unknown() -> None:
    """No Host means no X-Forwarded-Host, not the client's spoofed one."""
    out = upstream([("X-Forwarded-Host", "evil.example")], host=None)
    assert values_named(out, "X-Forwarded-Host") == []


@pytest.mark.parametrize(("request_id", "expected"), [("req-1", ["req-1"]), (None, [])],
                         ids=["given", "none"])
def test_request_id_is_the_gateways_own(request_id: str | None, expected: list[str]) -> None:
    """A client's X-Request-Id (any spelling) is replaced by the gateway's, or dropped."""
    out = upstream([("X-Request-Id", "spoof"), ("x_request_id", "spoof")],
                   request_id=request_id)
    assert values_named(out, "X-Request-Id") == expected


XFF = [
    ([], PEER, [PEER], "no-client-value"),
    ([("X-Forwarded-For", "10.0.0.1")], PEER, [f"10.0.0.1, {PEER}"], "one-value"),
    ([("X-Forwarded-For", "10.0.0.1, 10.0.0.2"), ("x-forwarded-for", "10.0.0.3")], PEER,
     [f"10.0.0.1, 10.0.0.2, 10.0.0.3, {PEER}"], "repeated-joined-in-order"),
    ([("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")], None,
     ["10.0.0.1, 10.0.0.2"], "no-peer-keeps-client-values"),
    ([], None, [], "nothing-at-all"),
    ([("X_Forwarded_For", "6.6.6.6")], PEER, [PEER], "underscore-spelling-dropped"),
    ([("X-Forwarded-For", "6.6.6.6"), ("Connection", "X-Forwarded-For")], PEER, [PEER],
     "connection-named-dropped"),
]


@pytest.mark.parametrize(("pairs", "peer", "expected"), [x[:3] for x in XFF],
                         ids=[x[3] for x in XFF])
def test_peer_address_is_appended_to_x_forwarded_for(
    pairs: Pairs, peer: str | None, expected: list[str],
) -> None:
    """X-Forwarded-For keeps the client's list and ends with the peer address (§5)."""
    out = upstream(pairs, peer=peer)
    assert values_named(out, "X-Forwarded-For") == expected


@pytest.mark.parametrize(("pairs", "expected"), [
    ([], "1.1 gateway"),
    ([("Via", "1.0 edge"), ("via", "1.1 lb")], "1.0 edge, 1.1 lb, 1.1 gateway"),
    ([("Via_", "x"), ("V_ia", "x")], "1.1 gateway"),
], ids=["none", "appended", "odd-spellings-ignored"])
def test_gateway_appends_itself_to_via(pairs: Pairs, expected: str) -> None:
    """Via lists every hop (RFC 9110 §7.6.3); the gateway adds `1.1 gateway`."""
    out = upstream(pairs)
    assert out.getall("Via") == [expected]


@pytest.mark.parametrize(("forward", "expected"), [(False, []), (True, ["Bearer t0k3n"])],
                         ids=["dropped-by-default", "forwarded-when-configured"])
def test_authorization_is_forwarded_only_when_the_route_says_so(
    forward: bool, expected: list[str],
) -> None:
    """The client's token stays at the gateway unless `forward_authorization: true` (§3)."""
    out = upstream([("Authorization", "Bearer t0k3n"), ("Proxy-Authorization", "Basic x")],
                   forward_authorization=forward)
    assert out.getall("Authorization", []) == expected
    assert "Proxy-Authorization" not in out


WEBSOCKET = [("Connection", "keep-alive, Upgrade, X-Secret"), ("Upgrade", "WebSocket"),
             ("X-Secret", "s"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")]


def test_upgrade_is_kept_for_websocket_requests() -> None:
    """A websocket upgrade keeps Upgrade as sent and says `Connection: Upgrade`."""
    out = upstream(WEBSOCKET, websocket=True)
    assert out.getall("Upgrade") == ["WebSocket"]
    assert out.getall("Connection") == ["Upgrade"]
    assert "X-Secret" not in out
    assert out["Sec-WebSocket-Key"] == "dGhlIHNhbXBsZSBub25jZQ=="


def test_upgrade_is_removed_from_plain_requests() -> None:
    """Without websocket=True an Upgrade header is hop-by-hop like any other (§5)."""
    out = upstream(WEBSOCKET)
    assert "Upgrade" not in out
    assert "Connection" not in out


def test_other_headers_pass_through_in_order_with_repeats() -> None:
    """Everything not removed reaches the upstream unchanged, in order, repeats kept."""
    pairs = [("Accept", "*/*"), ("Cookie", "a=1"), ("X-Custom", "v"), ("cookie", "b=2"),
             ("X-HTTP-Method-Override", "PUT"), ("User-Agent", "t/1")]
    out = upstream(pairs)
    assert list(out.items())[:len(pairs)] == pairs


def test_gateway_headers_come_last_after_every_removal() -> None:
    """Injected headers are appended after removal, so nothing the client sent removes them."""
    out = upstream([("Connection", "X-Auth-UserId, X-Forwarded-For, Via"), ("Accept", "*/*")])
    assert list(out.items()) == [
        ("Accept", "*/*"), ("X-Forwarded-For", PEER), ("Via", "1.1 gateway"),
        ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "gw.example"),
        ("X-Request-Id", "req-1"), ("X-Auth-UserId", "alice"),
    ]


RESPONSE_DROPPED = ["Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
                    "Transfer-Encoding", "Upgrade", "Proxy-Authenticate",
                    "Proxy-Authorization", "Content-Length", "keep_alive", "X-Named"]


@pytest.mark.parametrize("name", RESPONSE_DROPPED)
def test_hop_by_hop_and_framing_headers_are_removed_from_responses(name: str) -> None:
    """RFC 9110 §7.6.1 applies to answers too; the proxy sets the framing itself."""
    answer = incoming([(name, "x"), ("Connection", "X-Named"), ("Content-Type", "text/plain")])
    out = filter_response_headers(answer)
    assert values_named(out, name) == []
    assert out.getall("Content-Type") == ["text/plain"]


def test_response_keeps_repeated_headers_in_order_and_appends_via() -> None:
    """Set-Cookie lines survive in order; Via gains the gateway after the upstream's hops."""
    answer = incoming([("Set-Cookie", "a=1"), ("Content-Length", "3"), ("Set-Cookie", "b=2"),
                       ("Via", "1.1 app"), ("X-Forwarded-For", "10.0.0.9")])
    out = filter_response_headers(answer)
    assert list(out.items()) == [
        ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("X-Forwarded-For", "10.0.0.9"),
        ("Via", "1.1 app, 1.1 gateway"),
    ]


@pytest.mark.parametrize(("keep", "upgrade", "connection"), [
    (True, ["websocket"], ["Upgrade"]), (False, [], []),
], ids=["websocket-101", "plain"])
def test_response_upgrade_is_kept_only_for_websocket_answers(
    keep: bool, upgrade: list[str], connection: list[str],
) -> None:
    """A 101 answer keeps Upgrade and `Connection: Upgrade`; any other answer loses them."""
    answer = incoming([("Upgrade", "websocket"), ("Connection", "Upgrade, X-Named"),
                       ("X-Named", "n"), ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")])
    out = filter_response_headers(answer, keep_upgrade=keep)
    assert out.getall("Upgrade", []) == upgrade
    assert out.getall("Connection", []) == connection
    assert "X-Named" not in out
    assert out["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(("name", "expected"), [
    ("X-Auth-UserId", "x-auth-userid"), ("x_auth_userid", "x-auth-userid"),
    ("X-AUTH_USERID", "x-auth-userid"), ("Content-Type", "content-type"),
])
def test_header_names_compare_lowercase_with_underscore_as_dash(name: str, expected: str) -> None:
    """`X_Auth-UserId` and `x-auth-userid` are one name to the gateway (§5)."""
    assert normalise_name(name) == expected
