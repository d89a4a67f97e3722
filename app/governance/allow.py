"""A key's model allow-list: patterns with `*` over `provider/model` (docs/governance.md, Allow-lists).

`openai/gpt-4o*` names a provider slug and models; `@catalog-name/*` a Model Catalog entry; `*/claude-*` any
provider; a pattern without `/` matches the model id alone. `*` is the only wildcard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

MAX_PATTERN_CHARS = 200


def check_pattern(pattern: object) -> str | None:
    """Return what is wrong with an allow-list pattern, or None."""
    if not isinstance(pattern, str) or not pattern.strip():
        return "must be a non-empty string such as openai/gpt-4o* or @catalog-name/*"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"must be at most {MAX_PATTERN_CHARS} characters"
    if any(ord(c) < 33 for c in pattern.strip()):
        return "must not contain spaces or control characters"
    return None


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def names_of(provider: str | None, catalog: str | None, model: str | None) -> tuple[str, ...]:
    """Return the names a call's target answers to: `slug/model`, `@catalog/model`."""
    if not model:
        return ()
    names = []
    if provider:
        names.append(f"{provider}/{model}")
    if catalog:
        names.append(f"@{catalog}/{model}")
    return tuple(names)


def allowed(patterns: Iterable[str], provider: str | None, catalog: str | None, model: str | None) -> bool:
    """Tell whether a call to `model` on the provider (and catalog entry) passes the allow-list (empty: all)."""
    patterns = tuple(patterns)
    if not patterns:
        return True
    if not model:
        # A call that names no model (files, batches) may reach any model of its provider: only a pattern that
        # allows them all lets it through. `*` stands for the model, and only a `*` in the pattern matches it.
        model = "*"
    names = names_of(provider, catalog, model)
    for pattern in patterns:
        if "/" not in pattern.lstrip("@") and not pattern.startswith("@"):
            if _compiled(pattern).fullmatch(model):
                return True
        elif any(_compiled(pattern).fullmatch(name) for name in names):
            return True
    return False
