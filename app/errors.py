"""Errors the gateway raises itself, and the one place that renders them as JSON.

GatewayError                      status, message; rendered {"status": "failure", "message": ...}
├── BadRequest                    400
│   ├── InvalidConfig             400, with "errors": ["path: ..., message: ..."]
│   └── InvalidCustomHost         400 "Invalid custom host: <reason>"
├── Unauthorized                  401
├── Refused                       403 / 429 with a "code": a key's allow-list, limits, budget (docs/governance.md)
├── UnknownRoute                  404, naming the path
├── MethodNotAllowed              405, with Allow
├── PayloadTooLarge               413
├── RequestTimeout                408, the client did not send its request in time
├── UpstreamTimeout               408, OpenAI-style error body (docs/decisions.md, Timeouts and errors)
└── UpstreamUnreachable           502, x-portkey-gateway-exception: true
"""

from __future__ import annotations

from typing import Any


def openai_error(message: str, error_type: str = "api_error", param: Any = None, code: Any = None) -> dict[str, Any]:
    """Return the OpenAI-style error object: message, type, param and code, in that order."""
    return {"message": message, "type": error_type, "param": param, "code": code}


class GatewayError(Exception):
    """A failure the gateway answers with its own JSON body."""

    status = 500
    gateway_exception = False

    def __init__(self, message: str, *, errors: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """Return the JSON body of this error."""
        body: dict[str, Any] = {"status": "failure", "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(GatewayError):
    """The request (headers, config, body) is not acceptable."""

    status = 400


class InvalidConfig(BadRequest):
    """The config failed validation; `errors` names each problem with its path."""


class InvalidCustomHost(BadRequest):
    """A custom host that the custom-host policy refuses."""

    def __init__(self, reason: str) -> None:
        # The message repeats the reason: the openai SDK shows a client only the message.
        shown = reason if len(reason) <= 300 else reason[:300] + "..."
        super().__init__(f"Invalid custom host: {shown}", errors=[reason])


class Unauthorized(GatewayError):
    """Missing or unknown gateway key."""

    status = 401


class Refused(GatewayError):
    """A key's policy refuses the call: the body names the rule in `code` (docs/governance.md, Enforcement)."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        """Return {"status": "failure", "message", "code"}."""
        return {"status": "failure", "message": self.message, "code": self.code}


class StateStoreUnavailable(GatewayError):
    """A limited key's counters cannot be read or written: the call is refused rather than let through."""

    status = 503


class UnknownRoute(GatewayError):
    """No route serves the path: the message names it, bounded, and says where gateway calls go."""

    status = 404

    def __init__(self, path: str, detail: str | None = None) -> None:
        shown = path if len(path) <= 200 else path[:200] + "..."
        super().__init__(f"Unknown route: {shown}. " + (detail or "Gateway calls go under /v1/ "
                                                        "(e.g. POST /v1/chat/completions); GET /healthz checks health"))


class MethodNotAllowed(GatewayError):
    """The method is not served on this path."""

    status = 405

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(f"Method {method} is not allowed on this path. Allowed: {', '.join(allowed)}",
                         headers={"Allow": ", ".join(allowed)})


class PayloadTooLarge(GatewayError):
    """The request body is over the configured limit."""

    status = 413


class RequestTimeout(GatewayError):
    """The client did not send its request (head or body) within the gateway's read deadline (docs/deploy.md)."""

    status = 408


class UpstreamTimeout(GatewayError):
    """An attempt did not get response headers within the request timeout."""

    status = 408

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(f"Request exceeded the timeout sent in the request: {timeout_ms}ms")

    def body(self) -> dict[str, Any]:
        """Return the OpenAI-style timeout body (docs/decisions.md, Timeouts and errors)."""
        return {"error": openai_error(self.message, "timeout_error")}


class UpstreamUnreachable(GatewayError):
    """No answer could be had from the upstream host."""

    status = 502
    gateway_exception = True


class InternalError(GatewayError):
    """An unexpected exception; the client only learns that something went wrong."""

    status = 500
    gateway_exception = True

    def __init__(self) -> None:
        super().__init__("Something went wrong")
