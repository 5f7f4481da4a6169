"""One error hierarchy for the whole project, mapped once to the OpenAI error body.

Every layer raises these; `ownllm.api.errors` turns them into
`{"error": {"message", "type", "param", "code"}}` with `status_code`.
"""

from __future__ import annotations


class OwnLLMError(Exception):
    """Base error. Subclasses fix the HTTP status and OpenAI error type."""

    status_code: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after

    def to_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(OwnLLMError):
    status_code = 400
    type = "invalid_request_error"


def reject_unknown_fields(raw: dict, known: tuple[str, ...], param: str) -> None:
    """A 400 naming the first field of `raw` (sorted) that is not in `known`, as
    `param.field`; the message lists the known fields in their given order."""
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InvalidRequestError(
            f"unknown field {unknown[0]!r} in {param} (known: {', '.join(known)})",
            param=f"{param}.{unknown[0]}",
        )


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class ContentPolicyError(InvalidRequestError):
    code = "content_policy_violation"


class AuthenticationError(OwnLLMError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(OwnLLMError):
    status_code = 403
    type = "permission_error"
    code = "insufficient_permissions"


class NotFoundError(OwnLLMError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class ConflictError(OwnLLMError):
    status_code = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(OwnLLMError):
    status_code = 413
    type = "invalid_request_error"
    code = "file_too_large"


class RateLimitError(OwnLLMError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class InsufficientQuotaError(RateLimitError):
    type = "insufficient_quota"
    code = "insufficient_quota"


class OverloadedError(OwnLLMError):
    """The engine queue is full: retry later (503 with Retry-After)."""

    status_code = 503
    type = "server_error"
    code = "server_overloaded"


class ServerError(OwnLLMError):
    status_code = 500
    type = "server_error"
    code = "internal_error"


class ReplicaFailedError(ServerError):
    """The replica serving a request failed after its answer began (a stream cannot move
    to another replica mid-way): the answer is incomplete."""

    status_code = 502
    code = "replica_failed"


class BackendError(OwnLLMError):
    """A backend server (vLLM, another OpenAI-compatible endpoint) answered with something
    ownllm cannot pass on: 502, as a proxy says its upstream failed."""

    status_code = 502
    type = "server_error"
    code = "bad_gateway"


class BackendUnavailableError(BackendError):
    """The backend could not be reached, or failed, before it sent the first token: nothing
    was generated, so the request may be retried on another replica (503)."""

    status_code = 503
    code = "backend_unavailable"


class BackendStreamError(BackendError):
    """The backend's answer broke off after it began: the stream ends with this error event
    (never a silent truncation); retrying would repeat the text already sent."""

    code = "backend_stream_broken"
