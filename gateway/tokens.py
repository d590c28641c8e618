"""Issue and verify the gateway's JWTs (RFC 7519, RFC 8725) with PyJWT.

PyJWS checks the signature with the one configured algorithm; the claims are then checked
here, strictly: PyJWT itself accepts numeric strings for `exp`/`iat` and duplicate JSON keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from cachetools import TLRUCache
from jwt.algorithms import get_default_algorithms

from gateway.clock import Clock
from gateway.config import Secret, Tokens, is_valid_username
from gateway.errors import BadTokenError, ConfigError

MAX_TOKEN_LENGTH = 8192
MAX_JTI_LENGTH = 128
MAX_SUBJECT_LENGTH = 256
_REQUIRED_CLAIMS = ("iss", "sub", "iat", "exp", "jti")


@dataclass(frozen=True, slots=True)
class Claims:
    """What the gateway relies on from a verified token."""

    subject: str
    token_id: str
    issued_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Key material prepared once at start-up: `signing` for issue, `verifying` for verify."""

    algorithm: str
    signing: Any
    verifying: Any
    key_id: str | None = None

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """Public keys as a JWK Set; empty for shared-secret (HS*) algorithms."""
        if self.algorithm.startswith("HS"):
            return {"keys": []}
        algo = get_default_algorithms()[self.algorithm]
        jwk = algo.to_jwk(self.verifying, as_dict=True)
        jwk.update({"use": "sig", "alg": self.algorithm, "kid": self.key_id})
        return {"keys": [jwk]}


def load_signing_keys(tokens: Tokens, secret: Secret | None) -> SigningKeys:
    """Prepare the keys named by the config; any unusable key becomes a ConfigError."""
    algorithms = get_default_algorithms()
    if tokens.algorithm not in algorithms:
        raise ConfigError([f"tokens.algorithm: {tokens.algorithm} needs the `cryptography` "
                           "package"])
    algo = algorithms[tokens.algorithm]
    try:
        if tokens.algorithm.startswith("HS"):
            if secret is None:
                raise ConfigError(["tokens.secret: no secret configured"])
            key = algo.prepare_key(secret.reveal().encode())
            return SigningKeys(tokens.algorithm, key, key)
        assert tokens.private_key_file is not None  # noqa: S101 - config validated it
        private = algo.prepare_key(tokens.private_key_file.read_bytes())
        public = (algo.prepare_key(tokens.public_key_file.read_bytes())
                  if tokens.public_key_file else private.public_key())
    except (jwt.InvalidKeyError, ValueError, TypeError, OSError) as exc:
        raise ConfigError([f"tokens: unusable key for {tokens.algorithm}: {exc}"]) from exc
    key_id = hashlib.sha256(json.dumps(algo.to_jwk(public, as_dict=True),
                                       sort_keys=True).encode()).hexdigest()[:16]
    return SigningKeys(tokens.algorithm, private, public, key_id)


def issue_time(now: float) -> float:
    """`now` at the microsecond precision of `iat`.

    logout_all cutoffs use the same rounding: rounding is monotonic, so every token issued
    at or before the cutoff instant compares `iat <= cutoff`, whichever way it rounded.
    """
    return round(now, 6)


def fingerprint(token: str) -> str:
    """A 12-character SHA-256 fingerprint: what logs show instead of a token."""
    return hashlib.sha256(token.encode(errors="replace")).hexdigest()[:12]


def is_valid_subject(value: object) -> bool:
    """A subject becomes a header value: what a username may be (non-empty, unpadded,
    printable, bounded, no `,`: a comma reads as a list of users upstream)."""
    return (isinstance(value, str) and len(value) <= MAX_SUBJECT_LENGTH
            and is_valid_username(value))


class TokenIssuer:
    """Signs new tokens: `iss sub iat exp jti`, with a sub-second `iat` for logout_all."""

    def __init__(self, tokens: Tokens, keys: SigningKeys, clock: Clock) -> None:
        self._issuer = tokens.issuer
        self._ttl = tokens.ttl
        self._keys = keys
        self._clock = clock
        self._headers = {"kid": keys.key_id} if keys.key_id else None

    def issue(self, subject: str) -> tuple[str, Claims]:
        """Return a new signed token for `subject` and its claims."""
        issued_at = issue_time(self._clock())
        claims = Claims(subject, secrets.token_urlsafe(16), issued_at, issued_at + self._ttl)
        payload = {"iss": self._issuer, "sub": subject, "iat": issued_at,
                   "exp": claims.expires_at, "jti": claims.token_id}
        token = jwt.encode(payload, self._keys.signing, algorithm=self._keys.algorithm,
                           headers=self._headers)
        return token, claims


class TokenVerifier:
    """Verifies tokens; remembers verified ones (bounded, never past their `exp`).

    The cache only saves the signature and claim checks: revocation is checked by the
    caller on every request, cache hit or not.
    """

    def __init__(self, tokens: Tokens, keys: SigningKeys, clock: Clock,
                 cache_size: int = 100_000) -> None:
        self._issuer = tokens.issuer
        self._max_lifetime = tokens.ttl + tokens.leeway
        self._leeway = tokens.leeway
        self._keys = keys
        self._clock = clock
        self._jws = jwt.PyJWS()
        self._cache: TLRUCache[str, Claims] = TLRUCache(
            maxsize=cache_size, ttu=self._cache_until, timer=clock)

    def _cache_until(self, _token: str, claims: Claims, _now: float) -> float:
        return claims.expires_at + self._leeway

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token, or raise BadTokenError."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        claims = self._verify_uncached(token)
        self._cache[token] = claims
        return claims

    def _verify_uncached(self, token: str) -> Claims:
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise BadTokenError("The token is malformed.")
        try:
            decoded = self._jws.decode_complete(token, self._keys.verifying,
                                                algorithms=[self._keys.algorithm])
        except jwt.InvalidTokenError as exc:
            raise BadTokenError("The token signature or format is not valid.") from exc
        header = decoded["header"]
        typ = header.get("typ", "JWT")
        if "crit" in header or not isinstance(typ, str) or typ.upper() != "JWT":
            raise BadTokenError("The token header is not acceptable.")
        return self._check_claims(_parse_payload(decoded["payload"]))

    def _check_claims(self, payload: dict[str, Any]) -> Claims:
        missing = [name for name in _REQUIRED_CLAIMS if name not in payload]
        if missing:
            raise BadTokenError(f"The token lacks required claims: {', '.join(missing)}.")
        if payload["iss"] != self._issuer or "aud" in payload:
            raise BadTokenError("The token was not issued by this gateway.")
        if not is_valid_subject(payload["sub"]):
            raise BadTokenError("The token subject is not valid.")
        jti = payload["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH or not jti.isprintable():
            raise BadTokenError("The token id is not valid.")
        iat, exp = _numeric(payload, "iat"), _numeric(payload, "exp")
        now = self._clock()
        if exp <= now - self._leeway:
            raise BadTokenError("The token has expired.")
        if iat > now + self._leeway:
            raise BadTokenError("The token is not valid yet.")
        if "nbf" in payload and _numeric(payload, "nbf") > now + self._leeway:
            raise BadTokenError("The token is not valid yet.")
        if exp - iat > self._max_lifetime or exp < iat:
            raise BadTokenError("The token claims a lifetime this gateway never issues.")
        return Claims(payload["sub"], jti, iat, exp)


def _numeric(payload: dict[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadTokenError(f"The token claim `{name}` must be a number.")
    try:
        number = float(value)
    except OverflowError:
        raise BadTokenError(f"The token claim `{name}` is out of range.") from None
    if not math.isfinite(number):
        raise BadTokenError(f"The token claim `{name}` is out of range.")
    return number


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BadTokenError("The token payload repeats a claim.")
        result[key] = value
    return result


def _reject_constant(name: str) -> None:
    raise BadTokenError(f"The token payload holds {name}.")


def _parse_payload(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw, object_pairs_hook=_reject_duplicates,
                             parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise BadTokenError("The token payload is not JSON.") from exc
    if not isinstance(payload, dict):
        raise BadTokenError("The token payload is not a JSON object.")
    return payload
