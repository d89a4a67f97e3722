"""Frozen config models: what the pipeline sees after validation (docs/configs.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.providers.registry import OPTION_NAMES

DEFAULT_RETRY_STATUS_CODES = (429, 500, 502, 503, 504)
MODES = ("single", "loadbalance", "fallback", "conditional")
# Target fields that name how to reach a provider; they ride along to the provider as options.
PROVIDER_OPTION_FIELDS = OPTION_NAMES


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again, on which statuses, and whether to honour Retry-After."""

    attempts: int = 0
    on_status_codes: tuple[int, ...] = DEFAULT_RETRY_STATUS_CODES
    use_retry_after_header: bool = False


@dataclass(frozen=True)
class CachePolicy:
    """Response cache settings of a config or target."""

    mode: str = "simple"
    max_age: int | None = None


@dataclass(frozen=True)
class Condition:
    """One conditional-routing rule: a query over metadata/params/url and the target name it picks."""

    query: Mapping[str, Any]
    then: str


@dataclass(frozen=True)
class Strategy:
    """How a node picks among its targets."""

    mode: str = "single"
    on_status_codes: tuple[int, ...] | None = None
    conditions: tuple[Condition, ...] = ()
    default: str | None = None


@dataclass(frozen=True)
class Target:
    """A config node: a provider leaf, or a strategy over nested targets. The root config is a Target too.

    Fields left None are inherited from the parent (docs/configs.md, Routing).
    """

    provider: str | None = None
    api_key: str | None = field(default=None, repr=False)
    provider_options: Mapping[str, str] = field(default_factory=dict, repr=False)
    custom_host: str | None = None
    name: str | None = None
    weight: float = 1.0
    override_params: Mapping[str, Any] | None = None
    retry: RetryPolicy | None = None
    cache: CachePolicy | None = None
    request_timeout: int | None = None
    forward_headers: tuple[str, ...] | None = None
    strict_open_ai_compliance: bool | None = None
    before_request_hooks: tuple[Mapping[str, Any], ...] | None = None
    after_request_hooks: tuple[Mapping[str, Any], ...] | None = None
    input_guardrails: tuple[Any, ...] | None = None
    output_guardrails: tuple[Any, ...] | None = None
    strategy: Strategy | None = None
    targets: tuple[Target, ...] = ()

    @property
    def is_leaf(self) -> bool:
        """Return True when this node names a provider rather than a strategy over targets."""
        return not self.targets
