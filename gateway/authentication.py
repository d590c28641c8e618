"""Who is calling: the Bearer token of a request, verified and checked against revocations."""

from __future__ import annotations

from multidict import MultiMapping

from gateway.errors import (
    AuthError,
    BadTokenError,
    MissingTokenError,
    RevokedTokenError,
    StoreUnavailableError,
)
from gateway.services import Services
from gateway.tokens import Claims


def bearer_token(headers: MultiMapping[str]) -> str | None:
    """The token of the one `Authorization: Bearer` header; None when there is none."""
    return bearer_token_of(headers.getall("Authorization", []))


def bearer_token_of(values: list[str]) -> str | None:
    """The token of the `Authorization` header `values`; None when there is none.

    SECURITY: DESIGN §5: exactly one Authorization header, scheme matched case-insensitively.
    """
    if not values:
        return None
    if len(values) > 1:
        raise BadTokenError("Send exactly one Authorization header.")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip(" ")
    if scheme.lower() != "bearer" or not token or " " in token:
        raise BadTokenError("The Authorization header must be `Bearer <token>`.")
    return token


def verify_bearer(services: Services, headers: MultiMapping[str]) -> Claims:
    """Claims of the request's token, checked for signature and claims but not revocation."""
    return verify_bearer_of(services, headers.getall("Authorization", []))


def verify_bearer_of(services: Services, authorization: list[str]) -> Claims:
    """`verify_bearer` for the request's `Authorization` header values."""
    token = bearer_token_of(authorization)
    if token is None:
        raise MissingTokenError()
    return services.verifier.verify(token)


def authenticate(services: Services, headers: MultiMapping[str]) -> Claims:
    """Claims of a valid, unrevoked token; raises an AuthError (401) otherwise."""
    return authenticate_of(services, headers.getall("Authorization", []))


def authenticate_of(services: Services, authorization: list[str]) -> Claims:
    """Claims of a valid, unrevoked token in the `Authorization` header values; raises an
    AuthError (401) otherwise.

    The revocation check reads only the in-process cache; it raises
    StoreUnavailableError (503) when that cache can no longer be trusted.
    """
    claims = verify_bearer_of(services, authorization)
    if services.revocations.is_revoked(claims.token_id, claims.subject, claims.issued_at):
        raise RevokedTokenError()
    return claims


def authenticate_optional(services: Services, authorization: list[str]) -> Claims | None:
    """For `auth: optional` routes: the claims of a valid token, else None (anonymous).

    DESIGN §3: such routes are always forwarded and carry identity only when a valid token
    came; a bad, revoked or unverifiable token is forwarded as anonymous, never as a user.
    """
    try:
        return authenticate_of(services, authorization)
    except (AuthError, StoreUnavailableError):
        return None
