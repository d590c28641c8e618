"""Who is calling: the Bearer token of a request, verified and checked against revocations."""

from __future__ import annotations

from multidict import CIMultiDictProxy

from gateway.errors import (
    AuthError,
    BadTokenError,
    MissingTokenError,
    RevokedTokenError,
    StoreUnavailableError,
)
from gateway.services import Services
from gateway.tokens import Claims


def bearer_token(headers: CIMultiDictProxy[str]) -> str | None:
    """The token of the one `Authorization: Bearer` header; None when there is none.

    SECURITY: DESIGN §5: exactly one Authorization header, scheme matched case-insensitively.
    """
    values = headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise BadTokenError("Send exactly one Authorization header.")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        raise BadTokenError("The Authorization header must be `Bearer <token>`.")
    return token


def verify_bearer(services: Services, headers: CIMultiDictProxy[str]) -> Claims:
    """Claims of the request's token, checked for signature and claims but not revocation."""
    token = bearer_token(headers)
    if token is None:
        raise MissingTokenError()
    return services.verifier.verify(token)


def authenticate(services: Services, headers: CIMultiDictProxy[str]) -> Claims:
    """Claims of a valid, unrevoked token; raises an AuthError (401) otherwise.

    The revocation check reads only the in-process cache; it raises
    StoreUnavailableError (503) when that cache can no longer be trusted.
    """
    claims = verify_bearer(services, headers)
    if services.revocations.is_revoked(claims.token_id, claims.subject, claims.issued_at):
        raise RevokedTokenError()
    return claims


def authenticate_optional(services: Services, headers: CIMultiDictProxy[str]) -> Claims | None:
    """For `auth: optional` routes: the claims of a valid token, else None (anonymous).

    DESIGN §3: such routes are always forwarded and carry identity only when a valid token
    came; a bad, revoked or unverifiable token is forwarded as anonymous, never as a user.
    """
    try:
        return authenticate(services, headers)
    except (AuthError, StoreUnavailableError):
        return None
