"""Prices per model and the cost of a Usage: the shipped table, the gateway file's overrides, the matching rule.

Model matching, for provider P and model M (both compared in lower case):

1. the key "P/M" exactly;
2. else the longest key "P/K" where M is K followed only by snapshot suffixes, each one of
   ``-YYYY-MM-DD``, ``-YYYYMMDD`` or ``@YYYYMMDD``, ``-MM-YYYY``, ``-MMDD`` / ``-YYMM``, ``-NNN``,
   ``-vN`` or ``-vN:N`` (Bedrock). So "gpt-4o-mini-2024-07-18" is priced as "gpt-4o-mini", while
   "gpt-4o" never prices "gpt-4o-mini" (``-mini`` is a name, not a snapshot), "claude-sonnet-4" never
   prices "claude-sonnet-4-5" (a one-digit ``-5`` is a version, not a snapshot), and moving aliases
   such as ``-latest`` or ``-preview`` need keys of their own.

A key listed as exact-only prices its own model id and no snapshot of it: used where snapshots of one
name differ in price (gpt-4o-2024-05-13 is dearer than gpt-4o).

Before matching, a model given as a Bedrock ARN is reduced to its last path segment and a
percent-encoded id (from a URL path) is decoded. When nothing matches, a Bedrock geographic inference
profile prefix (``us.``, ``eu.``, ``apac.``, ...) is dropped and the bare id is tried: those profiles
bill the in-region price. ``global.`` profiles are priced differently and need keys of their own.
"""

from __future__ import annotations

import math
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from app.usage.model import Usage

DEFAULT_PRICING_FILE = Path(__file__).with_name("default_pricing.toml")

# Gateway-file field name -> Price attribute.
FIELDS: dict[str, str] = {
    "input": "input_per_million",
    "output": "output_per_million",
    "cache_read": "cache_read_per_million",
    "cache_write": "cache_write_per_million",
    "search_unit": "per_search_unit",
    "image": "per_image",
    "audio_second": "per_audio_second",
}

_SNAPSHOT = r"(?:[-@]\d{8}|-\d{4}-\d{2}-\d{2}|-\d{2}-\d{4}|-\d{3,4}|-v\d+(?::\d+)?)"
SNAPSHOT_SUFFIX = re.compile(f"(?:{_SNAPSHOT})+")
_GEO_PROFILE = re.compile(r"(?:us|us-gov|eu|apac|jp|au|ca)\.(?=.)")
_LOOKUP_CACHE_SIZE = 4096
_MISSING: Any = object()


def _priced_sum(parts: tuple[tuple[float, float | None], ...]) -> float | None:
    """Return the sum of quantity x rate, or None when a used quantity has no rate."""
    total = 0.0
    for quantity, rate in parts:
        if quantity:
            if rate is None:
                return None
            total += quantity * rate
    return total


@dataclass(frozen=True, slots=True)
class Price:
    """Prices in USD: per million tokens, per search unit, per image, per second of audio."""

    input_per_million: float | None = None
    output_per_million: float | None = None
    cache_read_per_million: float | None = None
    cache_write_per_million: float | None = None
    per_search_unit: float | None = None
    per_image: float | None = None
    per_audio_second: float | None = None

    def charge(self, usage: Usage) -> float | None:
        """Return the cost of usage at these prices, or None when a used quantity has no price."""
        input_rate = self.input_per_million
        read_rate = self.cache_read_per_million if self.cache_read_per_million is not None else input_rate
        write_rate = self.cache_write_per_million if self.cache_write_per_million is not None else input_rate
        cache_read = usage.cache_read_tokens or 0
        cache_write = usage.cache_write_tokens or 0
        uncached = max((usage.input_tokens or 0) - cache_read - cache_write, 0)
        tokens = _priced_sum(((uncached, input_rate), (cache_read, read_rate), (cache_write, write_rate),
                              (usage.output_tokens or 0, self.output_per_million)))
        units = _priced_sum(((usage.search_units or 0, self.per_search_unit), (usage.images or 0, self.per_image),
                             (usage.audio_seconds or 0.0, self.per_audio_second)))
        if tokens is None or units is None:
            return None
        return round(tokens / 1_000_000 + units, 9)


@dataclass(frozen=True, slots=True)
class Cost:
    """What an answer cost: usd is None when it cannot be known, never a guess."""

    usd: float | None
    priced_as: str | None
    # True when usage exists but the table cannot price it: no key matches, or the matching entry lacks
    # a price for a quantity the answer used (priced_as then names that entry).
    unknown_model: bool


def normalise_model(model: str) -> str:
    """Return the model id as the table compares it: decoded, ARN reduced to its id, lower case."""
    model = model.strip()
    if "%" in model:
        model = unquote(model)
    if model.startswith("arn:") and "/" in model:
        model = model.rsplit("/", 1)[1]
    return model.lower()


def _parse_rate(key: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f'pricing."{key}": field "{name}" must be a number, got {type(value).__name__}')
    rate = float(value)
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f'pricing."{key}": field "{name}" must be a finite number >= 0, got {value!r}')
    return rate


def _parse_entry(key: Any, entry: Any) -> tuple[str, Price]:
    if not isinstance(key, str) or "/" not in key or key.startswith("/") or key.endswith("/"):
        raise ValueError(f'pricing: key "{key}" must name "provider/model"; quote it in the file: '
                         f'[pricing."openai/gpt-4o-mini"]')
    if not isinstance(entry, Mapping):
        raise ValueError(f'pricing."{key}": must be a table of prices, got {type(entry).__name__}')
    if not entry:
        raise ValueError(f'pricing."{key}": gives no price; allowed fields: {", ".join(FIELDS)}')
    values: dict[str, float] = {}
    for name, value in entry.items():
        if name not in FIELDS:
            raise ValueError(f'pricing."{key}": unknown field "{name}"; allowed fields: {", ".join(FIELDS)}')
        values[FIELDS[name]] = _parse_rate(key, name, value)
    return key.strip().lower(), Price(**values)


class PricingTable:
    """Prices keyed "provider/model"; looks models up by the rule in this module's docstring."""

    def __init__(self, prices: Mapping[str, Price], exact_only: Iterable[str] = ()) -> None:
        self._prices: dict[str, Price] = {key.strip().lower(): price for key, price in prices.items()}
        self._exact_only = frozenset(key.strip().lower() for key in exact_only)
        self._by_provider: dict[str, list[tuple[str, str]]] = {}
        for key in self._prices:
            if key in self._exact_only:
                continue
            provider, _, model = key.partition("/")
            self._by_provider.setdefault(provider, []).append((model, key))
        for candidates in self._by_provider.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)
        # Model ids repeat endlessly in traffic; the lock only guards the bounded cache's clearing.
        self._lookups: dict[tuple[str, str], str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> PricingTable:
        """Return the shipped table (app/usage/default_pricing.toml)."""
        return _default_table()

    @classmethod
    def from_file(cls, path: Path) -> PricingTable:
        """Read a table file: [prices."provider/model"], [aliases] provider = "provider", [exact_only] keys."""
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        prices = cls.parse_overrides(data.get("prices", {}))
        exact_only = {str(key).lower() for key in data.get("exact_only", {}).get("keys", [])}
        for alias, target in data.get("aliases", {}).items():
            prefix = f"{str(target).lower()}/"
            for key, price in list(prices.items()):
                if key.startswith(prefix):
                    aliased = f"{alias.lower()}/{key[len(prefix):]}"
                    prices.setdefault(aliased, price)
                    if key in exact_only:
                        exact_only.add(aliased)
        return cls(prices, exact_only)

    def merged(self, overrides: Mapping[str, Price]) -> PricingTable:
        """Return a table where each override replaces the whole entry of its key (exact-only keys stay so)."""
        return PricingTable({**self._prices, **{key.strip().lower(): price for key, price in overrides.items()}},
                            self._exact_only)

    @staticmethod
    def parse_overrides(raw: Mapping[str, Any]) -> dict[str, Price]:
        """Parse the gateway file's [pricing] table; raise ValueError naming the key and field at fault."""
        if not isinstance(raw, Mapping):
            raise ValueError(f"pricing: must be a table of \"provider/model\" entries, got {type(raw).__name__}")
        return dict(_parse_entry(key, entry) for key, entry in raw.items())

    def __len__(self) -> int:
        return len(self._prices)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._prices

    def get(self, key: str) -> Price | None:
        """Return the entry stored under key exactly, or None."""
        return self._prices.get(key.lower())

    def match(self, provider: str, model: str | None) -> str | None:
        """Return the table key that prices model of provider, or None."""
        if not model or not provider:
            return None
        probe = (provider.strip().lower(), model)
        cached = self._lookups.get(probe, _MISSING)
        if cached is not _MISSING:
            return cached
        key = self._find(probe[0], normalise_model(model))
        with self._lock:
            if len(self._lookups) >= _LOOKUP_CACHE_SIZE:
                self._lookups.clear()
            self._lookups[probe] = key
        return key

    def cost(self, provider: str, usage: Usage) -> Cost:
        """Return what usage cost with provider; usd None when usage is empty or cannot be priced."""
        if usage.is_empty():
            return Cost(usd=None, priced_as=None, unknown_model=False)
        key = self.match(provider, usage.model)
        if key is None:
            return Cost(usd=None, priced_as=None, unknown_model=True)
        usd = self._prices[key].charge(usage)
        return Cost(usd=usd, priced_as=key, unknown_model=usd is None)

    def _find(self, provider: str, model: str) -> str | None:
        key = self._find_exact_or_snapshot(provider, model)
        if key is None:
            geo = _GEO_PROFILE.match(model)
            if geo:
                key = self._find_exact_or_snapshot(provider, model[geo.end():])
        return key

    def _find_exact_or_snapshot(self, provider: str, model: str) -> str | None:
        exact = f"{provider}/{model}"
        if exact in self._prices:
            return exact
        for candidate, key in self._by_provider.get(provider, ()):
            if model.startswith(candidate) and SNAPSHOT_SUFFIX.fullmatch(model, len(candidate)):
                return key
        return None


@lru_cache(maxsize=1)
def _default_table() -> PricingTable:
    return PricingTable.from_file(DEFAULT_PRICING_FILE)
