"""Every failure the gateway can answer with, and the HTTP status each one maps to.

```
GatewayError                      500 internal_error
  BadRequestError                 400 bad_request   <- MalformedBodyError, UnsafePathError
  AuthError                       401 unauthorized  <- MissingTokenError, BadTokenError,
                                                       RevokedTokenError
  BadCredentialsError             401 invalid_credentials
  NotFoundError                   404 not_found
  MethodNotAllowedError           405 method_not_allowed
  RequestTimeoutError             408 request_timeout
  PayloadTooLargeError            413 payload_too_large
  UnsupportedMediaTypeError       415 unsupported_media_type
  RateLimitedError                429 rate_limited      (+ Retry-After)
  StoreUnavailableError           503 store_unavailable (+ Retry-After)
  LoginBusyError                  503 login_busy        (+ Retry-After)
  UpstreamError                   502 bad_gateway   <- UpstreamTimeoutError 504 gateway_timeout
ConfigError(problems: list[str])  never reaches HTTP
```

`error_middleware` is the only code that turns these into `{"error", "message"}` bodies.
"""

from __future__ import annotations

from collections.abc import Mapping


class GatewayError(Exception):
    """Base of every error that becomes an HTTP answer."""

    status = 500
    code = "internal_error"
    default_message = "The gateway failed to handle the request."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)
        self.message = message or self.default_message

    def headers(self) -> Mapping[str, str]:
        """Extra response headers this error requires (e.g. Retry-After)."""
        return {}


class BadRequestError(GatewayError):
    status = 400
    code = "bad_request"
    default_message = "The request is malformed."


class MalformedBodyError(BadRequestError):
    code = "malformed_body"
    default_message = "The request body is not valid."


class UnsafePathError(BadRequestError):
    code = "unsafe_path"
    default_message = "The request path cannot be normalised safely."


class AuthError(GatewayError):
    """401; carries `WWW-Authenticate` (RFC 6750 §3), with `invalid_token` when one was sent."""

    status = 401
    code = "unauthorized"
    default_message = "A valid Bearer token is required."
    token_was_sent = False

    def headers(self) -> Mapping[str, str]:
        if self.token_was_sent:
            return {"WWW-Authenticate": 'Bearer realm="gateway", error="invalid_token"'}
        return {"WWW-Authenticate": 'Bearer realm="gateway"'}


class MissingTokenError(AuthError):
    code = "missing_token"
    default_message = "A Bearer token is required."


class BadTokenError(AuthError):
    code = "invalid_token"
    default_message = "The token is not valid."
    token_was_sent = True


class RevokedTokenError(BadTokenError):
    default_message = "The token has been revoked."


class BadCredentialsError(GatewayError):
    status = 401
    code = "invalid_credentials"
    default_message = "The username or password is not valid."

    def headers(self) -> Mapping[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="gateway"'}  # RFC 9110 §15.5.2: a 401 has one


class NotFoundError(GatewayError):
    status = 404
    code = "not_found"
    default_message = "No route matches this path."


class MethodNotAllowedError(GatewayError):
    status = 405
    code = "method_not_allowed"
    default_message = "This method is not allowed here."

    def __init__(self, allowed: str = "POST", message: str | None = None) -> None:
        super().__init__(message)
        self.allowed = allowed

    def headers(self) -> Mapping[str, str]:
        return {"Allow": self.allowed}


class RequestTimeoutError(GatewayError):
    status = 408
    code = "request_timeout"
    default_message = "The request body did not arrive in time."


class PayloadTooLargeError(GatewayError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaTypeError(GatewayError):
    status = 415
    code = "unsupported_media_type"
    default_message = "The request body must be application/json."


class _RetryAfterError(GatewayError):
    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> Mapping[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimitedError(_RetryAfterError):
    status = 429
    code = "rate_limited"
    default_message = "Too many failed logins; try again later."


class StoreUnavailableError(_RetryAfterError):
    status = 503
    code = "store_unavailable"
    default_message = "The revocation store is unavailable; try again later."

    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        super().__init__(retry_after, message)


class LoginBusyError(_RetryAfterError):
    status = 503
    code = "login_busy"
    default_message = "Too many logins are being checked; try again shortly."

    def __init__(self, message: str | None = None, retry_after: int = 1) -> None:
        super().__init__(retry_after, message)


class UpstreamError(GatewayError):
    status = 502
    code = "bad_gateway"
    default_message = "The upstream service could not be reached."


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "gateway_timeout"
    default_message = "The upstream service did not answer in time."


class ConfigError(Exception):
    """The configuration is unusable; `problems` lists each one as `key.path: what is wrong`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
