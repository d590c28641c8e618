"""Issuing and verifying tokens (DESIGN.md §4, §5): one algorithm, strict claims, no surprises."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import Secret, Tokens
from gateway.errors import BadTokenError, ConfigError
from gateway.tokens import (
    MAX_TOKEN_LENGTH,
    Claims,
    SigningKeys,
    TokenIssuer,
    TokenVerifier,
    fingerprint,
    is_valid_subject,
    load_signing_keys,
)
from tests.fakes import FakeClock

# 64 bytes, so that HS384/HS512 tokens made with the same secret raise no key-length warning.
SECRET = "tokens-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGH"
OTHER_SECRET = "another-secret-of-enough-length-0123456789-xyz"
START = 1_700_000_000.123456  # sub-second on purpose: logout_all needs finer than whole seconds
TTL = 3600.0
LEEWAY = 30.0
DROP = object()  # marks a claim to leave out


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


def hs_tokens() -> Tokens:
    return Tokens.model_validate({"issuer": "gateway", "algorithm": "HS256", "secret": SECRET,
                                  "ttl": "1h", "leeway": "30s"})


@pytest.fixture
def keys() -> SigningKeys:
    tokens = hs_tokens()
    return load_signing_keys(tokens, tokens.secret)


@pytest.fixture
def issuer(keys: SigningKeys, clock: FakeClock) -> TokenIssuer:
    return TokenIssuer(hs_tokens(), keys, clock)


@pytest.fixture
def verifier(keys: SigningKeys, clock: FakeClock) -> TokenVerifier:
    return TokenVerifier(hs_tokens(), keys, clock)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: object) -> dict[str, Any]:
    """Claims this gateway would issue at START; DROP removes one, others replace."""
    payload: dict[str, Any] = {"iss": "gateway", "sub": "marco", "iat": START, "exp": START + 60,
                               "jti": "jti-0123456789"}
    for name, value in overrides.items():
        if value is DROP:
            del payload[name]
        else:
            payload[name] = value
    return payload


def sign(payload: dict[str, Any] | bytes, *, key: Any = SECRET,
         algorithm: str = "HS256", headers: dict[str, Any] | None = None) -> str:
    """A token signed by PyJWS over exactly these payload bytes (duplicates survive)."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signing_key = key.encode() if isinstance(key, str) else key
    return jwt.PyJWS().encode(raw, signing_key, algorithm=algorithm, headers=headers)


def hmac_token(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """An HS256 token made by hand, for keys PyJWT refuses to use as an HMAC secret."""
    signing_input = (b64url(json.dumps(header).encode()) + "."
                     + b64url(json.dumps(payload).encode()))
    digest = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(digest)


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}."


def reject(verifier: TokenVerifier, token: str) -> BadTokenError:
    """Verify `token`, expecting exactly a BadTokenError (any other exception fails)."""
    with pytest.raises(BadTokenError) as info:
        verifier.verify(token)
    return info.value


# --- asymmetric key material (made once per module: RSA generation is slow) ----------------

def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
          ) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_files(tmp_path_factory: pytest.TempPathFactory,
              rsa_key: rsa.RSAPrivateKey) -> dict[str, Path]:
    """PEM private key files for RS256, ES256 and EdDSA."""
    folder = tmp_path_factory.mktemp("keys")
    files = {}
    for algorithm, key in (("RS256", rsa_key), ("ES256", ec.generate_private_key(ec.SECP256R1())),
                           ("EdDSA", ed25519.Ed25519PrivateKey.generate())):
        path = folder / f"{algorithm}.pem"
        path.write_bytes(pkcs8(key))
        files[algorithm] = path
    return files


def asymmetric_tokens(algorithm: str, private_key_file: Path) -> Tokens:
    return Tokens.model_validate({"algorithm": algorithm, "private_key_file": private_key_file,
                                  "ttl": "1h", "leeway": "30s"})


# --- issue / verify ---------------------------------------------------------------------

def test_issued_token_round_trips_with_exactly_the_five_claims(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    """Issued tokens carry iss sub iat exp jti, with a sub-second iat and exp = iat + ttl."""
    token, issued = issuer.issue("marco")
    payload = json.loads(jwt.PyJWS().decode(token, SECRET.encode(), algorithms=["HS256"]))
    assert set(payload) == {"iss", "sub", "iat", "exp", "jti"}
    assert payload["iss"] == "gateway"
    assert payload["sub"] == "marco"
    assert payload["iat"] == pytest.approx(START, abs=1e-6)
    assert payload["iat"] % 1 != 0
    assert payload["exp"] == pytest.approx(payload["iat"] + TTL)
    assert issued == Claims("marco", payload["jti"], payload["iat"], payload["exp"])
    assert verifier.verify(token) == issued
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_each_issued_token_has_its_own_jti(issuer: TokenIssuer, clock: FakeClock) -> None:
    """jti is unique per token, even for the same subject at the same instant."""
    jtis = {issuer.issue("marco")[1].token_id for _ in range(20)}
    assert len(jtis) == 20
    assert all(jti for jti in jtis)


def test_issued_at_follows_the_clock(issuer: TokenIssuer, clock: FakeClock) -> None:
    """iat is the clock's time, not a whole second: two issues 1 ms apart are ordered."""
    first = issuer.issue("marco")[1]
    clock.advance(0.001)
    second = issuer.issue("marco")[1]
    assert second.issued_at - first.issued_at == pytest.approx(0.001, abs=1e-6)


# --- signature and algorithm ------------------------------------------------------------

def test_signature_by_another_secret_is_rejected(verifier: TokenVerifier) -> None:
    """A token signed with a different HS256 secret is not this gateway's."""
    reject(verifier, sign(claims(), key=OTHER_SECRET))


def test_tampered_payload_is_rejected(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    """Changing the payload of a genuine token breaks its signature."""
    token = issuer.issue("marco")[0]
    header, _, signature = token.split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    reject(verifier, f"{header}.{forged}.{signature}")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("with_signature", [False, True], ids=["empty-sig", "hs256-sig-kept"])
def test_alg_none_is_rejected(
    issuer: TokenIssuer, verifier: TokenVerifier, alg: str, with_signature: bool
) -> None:
    """An unsigned `alg: none` token (any spelling) is never accepted."""
    token = unsigned({"alg": alg, "typ": "JWT"}, claims())
    if with_signature:
        token += issuer.issue("marco")[0].rsplit(".", 1)[1]
    reject(verifier, token)


FOREIGN_ALGORITHMS: list[tuple[str, Callable[[rsa.RSAPrivateKey], Any]]] = [
    ("HS384", lambda _: SECRET), ("HS512", lambda _: SECRET),
    ("RS256", lambda rsa_key: rsa_key), ("PS256", lambda rsa_key: rsa_key),
    ("ES256", lambda _: ec.generate_private_key(ec.SECP256R1())),
    ("EdDSA", lambda _: ed25519.Ed25519PrivateKey.generate()),
]


@pytest.mark.parametrize(("algorithm", "make_key"), FOREIGN_ALGORITHMS,
                         ids=[a for a, _ in FOREIGN_ALGORITHMS])
def test_any_algorithm_but_the_configured_one_is_rejected(
    verifier: TokenVerifier, rsa_key: rsa.RSAPrivateKey, algorithm: str,
    make_key: Callable[[rsa.RSAPrivateKey], Any]
) -> None:
    """With HS256 configured, a validly signed HS384/HS512/RS256/ES256/EdDSA token fails."""
    reject(verifier, sign(claims(), key=make_key(rsa_key), algorithm=algorithm))


@pytest.mark.parametrize("public_format", [serialization.PublicFormat.SubjectPublicKeyInfo,
                                           serialization.PublicFormat.PKCS1],
                         ids=["spki-pem", "pkcs1-pem"])
def test_hs256_token_keyed_with_the_rs256_public_key_is_rejected(
    key_files: dict[str, Path], rsa_key: rsa.RSAPrivateKey, clock: FakeClock,
    public_format: serialization.PublicFormat
) -> None:
    """Key confusion: on an RS256 gateway, HMAC over the public key PEM is not a signature."""
    tokens = asymmetric_tokens("RS256", key_files["RS256"])
    keys = load_signing_keys(tokens, None)
    verifier = TokenVerifier(tokens, keys, clock)
    genuine = TokenIssuer(tokens, keys, clock).issue("marco")[0]
    assert verifier.verify(genuine).subject == "marco"
    public_pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM, public_format)
    forged = hmac_token({"alg": "HS256", "typ": "JWT"}, claims(sub="admin"), public_pem)
    reject(verifier, forged)


# --- time claims ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("elapsed", "valid"),
    [(TTL, True), (TTL + LEEWAY - 0.001, True), (TTL + LEEWAY, False), (TTL + LEEWAY + 1, False)],
    ids=["at-exp", "just-inside-leeway", "at-exp-plus-leeway", "past-leeway"],
)
def test_expiry_allows_exactly_the_leeway(
    issuer: TokenIssuer, keys: SigningKeys, clock: FakeClock, elapsed: float, valid: bool
) -> None:
    """A token is valid until exp + leeway, and not from then on."""
    token, issued = issuer.issue("marco")
    clock.advance(elapsed)
    verifier = TokenVerifier(hs_tokens(), keys, clock)
    if valid:
        assert verifier.verify(token) == issued
    else:
        reject(verifier, token)


def test_cached_token_still_expires(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: FakeClock
) -> None:
    """The verified-token cache never outlives exp + leeway: a cached token still expires."""
    token, issued = issuer.issue("marco")
    assert verifier.verify(token) == issued
    clock.advance(TTL + LEEWAY - 0.001)
    assert verifier.verify(token) == issued
    clock.advance(0.001)
    reject(verifier, token)
    clock.advance(3600)
    reject(verifier, token)


@pytest.mark.parametrize(
    ("claim", "offset", "valid"),
    [("iat", LEEWAY - 1, True), ("iat", LEEWAY + 1, False),
     ("nbf", LEEWAY - 1, True), ("nbf", LEEWAY + 1, False), ("nbf", -10.0, True)],
    ids=["iat-future-within-leeway", "iat-future-beyond-leeway", "nbf-future-within-leeway",
         "nbf-future-beyond-leeway", "nbf-past"],
)
def test_not_yet_valid_tokens_are_rejected_beyond_the_leeway(
    verifier: TokenVerifier, claim: str, offset: float, valid: bool
) -> None:
    """iat or nbf later than now + leeway means the token is not valid yet."""
    token = sign(claims(**{claim: START + offset, "exp": START + 120}))
    if valid:
        assert verifier.verify(token).subject == "marco"
    else:
        reject(verifier, token)


@pytest.mark.parametrize(
    ("lifetime", "valid"),
    [(TTL, True), (TTL + LEEWAY, True), (TTL + LEEWAY + 1, False), (10 * 365 * 86400, False),
     (1e300, False), (-1.0, False)],
    ids=["ttl", "ttl-plus-leeway", "beyond-ttl-plus-leeway", "ten-years", "1e300",
         "exp-before-iat"],
)
def test_lifetime_longer_than_this_gateway_issues_is_rejected(
    verifier: TokenVerifier, lifetime: float, valid: bool
) -> None:
    """exp - iat above ttl + leeway (or negative) was never issued here: rejected."""
    token = sign(claims(iat=START, exp=START + lifetime))
    if valid:
        assert verifier.verify(token).expires_at == START + lifetime
    else:
        reject(verifier, token)


@pytest.mark.parametrize(
    "raw_exp", [b"1e400", b"1" + b"0" * 400, b"-1" + b"0" * 400],
    ids=["float-overflows-to-infinity", "int-10**400", "int-minus-10**400"],
)
def test_numbers_beyond_float_range_are_rejected(verifier: TokenVerifier, raw_exp: bytes) -> None:
    """A time claim JSON can spell but a float cannot hold is an invalid token, not a crash."""
    payload = (b'{"iss":"gateway","sub":"marco","iat":%d,"exp":%s,"jti":"j"}'
               % (int(START), raw_exp))
    reject(verifier, sign(payload))


# --- required and well-formed claims ----------------------------------------------------

@pytest.mark.parametrize("claim", ["iss", "sub", "iat", "exp", "jti"])
def test_missing_required_claim_is_rejected(verifier: TokenVerifier, claim: str) -> None:
    """iss, sub, iat, exp and jti are all required."""
    assert verifier.verify(sign(claims())).subject == "marco"
    reject(verifier, sign(claims(**{claim: DROP})))


@pytest.mark.parametrize(
    "overrides",
    [{"iss": "other-gateway"}, {"iss": "Gateway"}, {"iss": ["gateway"]}, {"iss": None},
     {"aud": "gateway"}, {"aud": ["gateway"]}, {"aud": []}],
    ids=["other-issuer", "issuer-case", "issuer-list", "issuer-null", "aud-string", "aud-list",
         "aud-empty-list"],
)
def test_wrong_issuer_or_any_audience_is_rejected(
    verifier: TokenVerifier, overrides: dict[str, Any]
) -> None:
    """Only tokens with iss == tokens.issuer and no `aud` are this gateway's own."""
    reject(verifier, sign(claims(**overrides)))


@pytest.mark.parametrize(
    ("claim", "value"),
    [("iat", str(int(START))), ("exp", str(int(START) + 60)), ("nbf", str(int(START))),
     ("exp", True), ("iat", False), ("exp", None), ("exp", [START + 60]),
     ("nbf", {"t": START})],
    ids=["iat-numeric-string", "exp-numeric-string", "nbf-numeric-string", "exp-true",
         "iat-false", "exp-null", "exp-list", "nbf-object"],
)
def test_time_claims_must_be_json_numbers(
    verifier: TokenVerifier, claim: str, value: object
) -> None:
    """iat/exp/nbf must be JSON numbers: numeric strings and booleans are invalid."""
    reject(verifier, sign(claims(**{claim: value})))


BAD_SUBJECTS: list[tuple[object, str]] = [
    ("", "empty"), (" marco", "leading-space"), ("marco ", "trailing-space"),
    ("\tmarco", "leading-tab"), ("marco\n", "trailing-newline"), ("mar\r\nX-Admin: 1", "crlf"),
    ("mar\x00co", "nul"), ("mar\x7fco", "del"), ("mar\x1bco", "escape"),
    ("\u00a0marco", "nbsp-padding"), ("mar\u2028co", "line-separator"), (" ", "space-only"),
    (123, "int"), (None, "null"), (["marco"], "list"), ({"name": "marco"}, "object"),
    (True, "bool"), ("m" * 257, "overlong"), ("marco,admin", "comma-list"), (",", "comma"),
]


@pytest.mark.parametrize("subject", [s for s, _ in BAD_SUBJECTS], ids=[i for _, i in BAD_SUBJECTS])
def test_token_with_unusable_subject_is_rejected(
    verifier: TokenVerifier, subject: object
) -> None:
    """sub becomes a header value: empty, padded, control-char, non-string or overlong fails."""
    assert not is_valid_subject(subject)
    reject(verifier, sign(claims(sub=subject)))


@pytest.mark.parametrize("subject", ["marco", "m" * 256, "marco.rossi@example.com", "a b"],
                         ids=["plain", "max-length", "email", "inner-space"])
def test_token_with_plain_subject_is_accepted(verifier: TokenVerifier, subject: str) -> None:
    """Printable, unpadded subjects up to the length limit are fine."""
    assert is_valid_subject(subject)
    assert verifier.verify(sign(claims(sub=subject))).subject == subject


@pytest.mark.parametrize("jti", ["", 123, None, ["a"], "a\x00b", "j" * 129],
                         ids=["empty", "int", "null", "list", "control-char", "overlong"])
def test_token_with_unusable_jti_is_rejected(verifier: TokenVerifier, jti: object) -> None:
    """jti is what logout revokes: it must be a non-empty printable string."""
    reject(verifier, sign(claims(jti=jti)))


@pytest.mark.parametrize(
    "payload",
    [b'{"iss":"gateway","sub":"marco","sub":"admin","iat":%(t)d,"exp":%(e)d,"jti":"j"}',
     b'{"iss":"gateway","sub":"marco","iat":%(t)d,"exp":%(e)d,"exp":9999999999,"jti":"j"}',
     b'{"iss":"evil","iss":"gateway","sub":"marco","iat":%(t)d,"exp":%(e)d,"jti":"j"}',
     b'{"iss":"gateway","sub":"marco","iat":%(t)d,"exp":%(e)d,"jti":"a","jti":"b"}'],
    ids=["sub", "exp", "iss", "jti"],
)
def test_duplicate_claim_keys_are_rejected(verifier: TokenVerifier, payload: bytes) -> None:
    """A payload that repeats a claim is ambiguous between parsers: rejected."""
    raw = payload % {b"t": int(START), b"e": int(START) + 60}
    reject(verifier, sign(raw))


@pytest.mark.parametrize(
    "payload", [b"[1, 2]", b'"marco"', b"42", b"null", b"{not json", b"\xff\xfe",
                b'{"iss":"gateway","sub":"marco","iat":NaN,"exp":Infinity,"jti":"j"}'],
    ids=["array", "string", "number", "null", "broken-json", "not-utf8", "nan-infinity"],
)
def test_payload_that_is_not_a_json_object_is_rejected(
    verifier: TokenVerifier, payload: bytes
) -> None:
    """The signed payload must be one JSON object with real JSON numbers."""
    reject(verifier, sign(payload))


@pytest.mark.parametrize(
    "headers",
    [{"crit": ["exp"]}, {"crit": ["x-extension"], "x-extension": 1}, {"crit": []},
     {"typ": "at+jwt"}, {"typ": 1}, {"typ": None}, {"typ": ["JWT"]}],
    ids=["crit-registered-claim", "crit-extension", "crit-empty", "typ-other", "typ-int",
         "typ-null", "typ-list"],
)
def test_unacceptable_header_is_rejected(verifier: TokenVerifier, headers: dict[str, Any]) -> None:
    """A `crit` header or a `typ` other than the string JWT is refused as an invalid token."""
    assert verifier.verify(hmac_token({"alg": "HS256", "typ": "JWT"}, claims(),
                                      SECRET.encode())).subject == "marco"
    reject(verifier, hmac_token({"alg": "HS256", **headers}, claims(), SECRET.encode()))


def test_overlong_token_is_rejected_even_when_validly_signed(verifier: TokenVerifier) -> None:
    """Tokens above 8192 characters are refused before any parsing."""
    short = sign(claims(pad="x" * 5000))
    assert len(short) < MAX_TOKEN_LENGTH
    assert verifier.verify(short).subject == "marco"
    long = sign(claims(pad="x" * 7000))
    assert len(long) > MAX_TOKEN_LENGTH
    reject(verifier, long)


@pytest.mark.parametrize(
    "token",
    ["", "not a token", "a.b", "a.b.c", "a.b.c.d", "....", "\u00e9.\u00e9.\u00e9",
     "\u0442\u0435\u0441\u0442", "\x00", "eyJhbGciOiJIUzI1NiJ9.\u2603.sig"],
    ids=["empty", "words", "two-parts", "three-garbage-parts", "four-parts", "dots",
         "accented", "cyrillic", "nul", "snowman-payload"],
)
def test_garbage_is_rejected(verifier: TokenVerifier, token: str) -> None:
    """Anything that is not a well-formed compact JWS is an invalid token, not a crash."""
    reject(verifier, token)


def test_genuine_token_with_non_ascii_appended_is_rejected(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    """A genuine token with a non-ASCII character added is no longer valid."""
    token = issuer.issue("marco")[0]
    reject(verifier, token + "\u00e9")


def test_rejection_is_not_cached(issuer: TokenIssuer, verifier: TokenVerifier,
                                 clock: FakeClock) -> None:
    """A not-yet-valid token becomes valid when its time comes (failures are not remembered)."""
    token = sign(claims(iat=START + LEEWAY + 5, exp=START + LEEWAY + 65))
    reject(verifier, token)
    clock.advance(10)
    assert verifier.verify(token).subject == "marco"


# --- fingerprints -----------------------------------------------------------------------

def test_fingerprint_is_12_hex_chars_and_not_the_token(issuer: TokenIssuer) -> None:
    """Logs show a 12-hex-char SHA-256 fingerprint, stable per token, never the token."""
    token = issuer.issue("marco")[0]
    other = issuer.issue("marco")[0]
    value = fingerprint(token)
    assert len(value) == 12
    assert all(c in "0123456789abcdef" for c in value)
    assert value != token
    assert value not in token
    assert fingerprint(token) == value
    assert fingerprint(other) != value
    assert value == hashlib.sha256(token.encode()).hexdigest()[:12]


# --- asymmetric algorithms and JWKS -----------------------------------------------------

@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_asymmetric_token_round_trips(
    key_files: dict[str, Path], clock: FakeClock, algorithm: str
) -> None:
    """RS256, ES256 and EdDSA tokens issue and verify with the configured key file."""
    tokens = asymmetric_tokens(algorithm, key_files[algorithm])
    keys = load_signing_keys(tokens, None)
    token, issued = TokenIssuer(tokens, keys, clock).issue("marco")
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert TokenVerifier(tokens, keys, clock).verify(token) == issued
    reject(TokenVerifier(tokens, keys, clock), sign(claims()))  # an HS256 token is not accepted


PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_jwks_publishes_only_the_public_key(
    key_files: dict[str, Path], clock: FakeClock, algorithm: str
) -> None:
    """The JWK Set holds one public key with kid/alg/use=sig and no private members."""
    tokens = asymmetric_tokens(algorithm, key_files[algorithm])
    keys = load_signing_keys(tokens, None)
    jwks = keys.jwks()
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    assert jwk["kid"]
    assert not PRIVATE_JWK_MEMBERS & set(jwk)
    token = TokenIssuer(tokens, keys, clock).issue("marco")[0]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    published = jwt.PyJWK(jwk).key  # what a relying party would verify with
    assert json.loads(jwt.PyJWS().decode(token, published, algorithms=[algorithm]))["sub"] == (
        "marco")


def test_hs256_publishes_no_keys(keys: SigningKeys) -> None:
    """A shared secret is never published: the HS256 JWK Set is empty."""
    assert keys.jwks() == {"keys": []}


def test_hs256_tokens_carry_no_kid(issuer: TokenIssuer) -> None:
    """HS256 has no public key to name, so no `kid` header."""
    assert "kid" not in jwt.get_unverified_header(issuer.issue("marco")[0])


def test_hs256_without_secret_is_a_config_error() -> None:
    """load_signing_keys refuses HS256 without a secret, naming tokens.secret."""
    tokens = Tokens.model_validate({"algorithm": "HS256"})
    with pytest.raises(ConfigError) as info:
        load_signing_keys(tokens, None)
    assert info.value.problems[0].startswith("tokens.secret: ")


@pytest.mark.parametrize(("algorithm", "content"),
                         [("RS256", b"not a key"), ("RS256", "ES256"), ("ES256", "RS256"),
                          ("EdDSA", b"")],
                         ids=["rs256-garbage", "rs256-given-ec-key", "es256-given-rsa-key",
                              "eddsa-empty"])
def test_unusable_key_file_is_a_config_error(
    tmp_path: Path, key_files: dict[str, Path], algorithm: str, content: bytes | str
) -> None:
    """A key file that is not a key for the configured algorithm is a ConfigError at start."""
    path = tmp_path / "key.pem"
    path.write_bytes(content if isinstance(content, bytes) else key_files[content].read_bytes())
    with pytest.raises(ConfigError) as info:
        load_signing_keys(asymmetric_tokens(algorithm, path), None)
    assert info.value.problems[0].startswith("tokens")


def test_secret_value_is_the_hmac_key(clock: FakeClock) -> None:
    """HS256 signs with the UTF-8 bytes of tokens.secret (other services can verify)."""
    tokens = hs_tokens()
    keys = load_signing_keys(tokens, Secret(SECRET))
    token = TokenIssuer(tokens, keys, clock).issue("marco")[0]
    payload = jwt.decode(token, SECRET.encode(), algorithms=["HS256"], issuer="gateway",
                         options={"verify_exp": False, "verify_iat": False})
    assert payload["sub"] == "marco"
