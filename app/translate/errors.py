"""Provider errors in the unified shape: `{"error": {...}, "provider": slug}` with the upstream status.

The shape and the type names: docs/providers.md, Translation.

Credentials in a provider's message are masked (docs/security.md).
"""

from __future__ import annotations

import json
from typing import Any

from app.errors import openai_error
from app.redact import MAX_SECRET_CHARS, redact

# Provider error names → OpenAI error types (Gemini statuses, AWS exceptions, Cohere and Anthropic types).
_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error", "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error", "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error", "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error", "UNAVAILABLE": "api_error", "INTERNAL": "api_error",
    "DEADLINE_EXCEEDED": "timeout_error",
    "ValidationException": "invalid_request_error", "AccessDeniedException": "permission_error",
    "UnrecognizedClientException": "authentication_error", "ResourceNotFoundException": "not_found_error",
    "ThrottlingException": "rate_limit_error", "ServiceQuotaExceededException": "rate_limit_error",
    "ModelTimeoutException": "timeout_error", "ModelNotReadyException": "api_error",
    "InternalServerException": "api_error", "ServiceUnavailableException": "api_error",
    "ModelErrorException": "api_error", "ModelStreamErrorException": "api_error",
    "overloaded_error": "api_error",
}
_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
              404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error",
              422: "invalid_request_error", 429: "rate_limit_error"}
_MAX_MESSAGE = 2000


def unified_error(provider: str, status: int, raw: bytes, aws_type: str | None = None) -> dict[str, Any]:
    """Return the unified error body for a provider's error answer (any of the shapes providers use)."""
    message, kind, param, code = _fields(_json(raw), raw)
    if aws_type:  # x-amzn-ErrorType: "ValidationException:http://internal.amazon.com/..."
        code = code or aws_type.split(":", 1)[0]
    name = kind or code
    mapped = _TYPES.get(str(name)) if name else None
    if mapped is None and isinstance(kind, str) and kind.endswith("_error"):
        mapped = kind  # Anthropic's and OpenAI's own type names are already the unified ones
    error_type = mapped or _BY_STATUS.get(status, "api_error")
    if code is None and kind is not None and kind != error_type:
        code = kind  # keep the provider's own name where the client can still see it
    # A provider may quote the key it was sent (a catalog key the client never saw): secrets are masked
    # (docs/security.md); by value before this (app.redact.masked_error), by name and shape here. Cut first,
    # so the work is bounded, but past the limit by a whole secret, so no secret is cut in two and half-shown.
    text = f"{provider} error: {message[:_MAX_MESSAGE + MAX_SECRET_CHARS]}"
    return {"error": openai_error(redact(text)[:_MAX_MESSAGE], error_type, param, None if code is None else str(code)),
            "provider": provider}


def event_error(provider: str, payload: Any) -> dict[str, Any]:
    """Return the unified error of an error event inside a stream (its `error` object)."""
    return unified_error(provider, 500, json.dumps(payload).encode())["error"]


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _fields(data: Any, raw: bytes) -> tuple[str, Any, Any, Any]:
    """Return (message, type, param, code) from the shapes providers answer errors with."""
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]  # Vertex sometimes wraps the error in a list
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            # OpenAI / Anthropic: {"error": {"type", "message"}}; Gemini: {"error": {"code", "message", "status"}}
            kind = error.get("type") or error.get("status")
            code = error.get("code") if error.get("type") else None
            return _text(error.get("message")), kind, error.get("param"), code
        if isinstance(error, str):
            return _text(data.get("message") or error), None, None, None
        message = data.get("message") or data.get("Message") or data.get("detail")
        if message is not None:  # Cohere and AWS: {"message": ...}
            return _text(message), data.get("__type") or data.get("type"), None, data.get("code")
    text = raw.decode("utf-8", "replace").strip()
    return (text or "no error message"), None, None, None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
