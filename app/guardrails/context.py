"""What a hook run sees and what it hands back: the hook context, the HTTP client, the run's outcome."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from app.guardrails.text import event_text

EVENTS = ("before", "after")
# Portkey's names of the endpoints hooks run on; on every other route the caller records them as skipped.
HOOK_ENDPOINTS = ("chatComplete", "complete", "messages", "embed")
_SAME: Any = object()


class GuardrailHTTP(Protocol):
    """The HTTP client of webhook and jwt checks; the gateway's applies the custom-host policy and timeouts."""

    def post_json(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
                  timeout_s: float) -> tuple[int, Any]:
        """POST `body` as JSON; return the status and the parsed JSON answer (None when not JSON)."""
        ...

    def get_json(self, url: str, timeout_s: float) -> tuple[int, Any]:
        """GET `url`; return the status and the parsed JSON answer (None when not JSON)."""
        ...


@dataclass(frozen=True)
class HookContext:
    """The request (and answer) a list of hooks runs over."""

    event: str
    endpoint: str
    request_json: Mapping[str, Any] | None
    response_json: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    provider: str = ""
    http: GuardrailHTTP | None = None


@dataclass
class HookRun:
    """The outcome of running one event's hooks."""

    results: list[dict[str, Any]]
    verdict: bool
    denied: bool
    request_json: dict[str, Any] | None = None
    response_json: dict[str, Any] | None = None


class CheckError(Exception):
    """A check could not reach a verdict; the message is shown as the check's `error`."""


@dataclass
class CheckOutcome:
    """A check's verdict and details, with the bodies it changed (mutators, webhooks)."""

    verdict: bool
    data: dict[str, Any]
    request_json: Mapping[str, Any] | None = None
    response_json: Mapping[str, Any] | None = None


class CheckInput:
    """What one check sees: the hook context, with the bodies as changed by the checks before it."""

    def __init__(self, ctx: HookContext, request_json: Any = _SAME, response_json: Any = _SAME) -> None:
        self.ctx = ctx
        self.request_json: Mapping[str, Any] | None = ctx.request_json if request_json is _SAME else request_json
        self.response_json: Mapping[str, Any] | None = ctx.response_json if response_json is _SAME else response_json

    @property
    def event(self) -> str:
        """Return "before" or "after"."""
        return self.ctx.event

    @property
    def endpoint(self) -> str:
        """Return Portkey's name of the endpoint (chatComplete, complete, messages, embed)."""
        return self.ctx.endpoint

    @property
    def metadata(self) -> Mapping[str, Any]:
        """Return the request's x-portkey-metadata (empty when absent or not an object)."""
        return self.ctx.metadata if isinstance(self.ctx.metadata, Mapping) else {}

    @property
    def http(self) -> GuardrailHTTP | None:
        """Return the HTTP client for webhook and jwt checks, if the gateway gave one."""
        return self.ctx.http

    def header(self, name: str) -> str | None:
        """Return a client request header by name, in any case."""
        headers = self.ctx.headers if isinstance(self.ctx.headers, Mapping) else {}
        wanted = name.lower()
        value = headers.get(wanted)
        if value is None:
            value = next((text for key, text in headers.items() if key.lower() == wanted), None)
        return value if isinstance(value, str) else None

    @cached_property
    def raw_text(self) -> str | None:
        """Return the checked text, or None when the body has none (no user message, a tool-call answer)."""
        return event_text(self.event, self.endpoint, self.request_json, self.response_json)

    @property
    def text(self) -> str:
        """Return the checked text; a body without text reads as the empty string."""
        return self.raw_text or ""
