"""Fuzz-style tests for config validation: any JSON-like input parses or fails with a gateway error, nothing else."""

from __future__ import annotations

import copy
import itertools
import math
import random
from collections.abc import Iterator
from typing import Any

from app.config.models import MODES, PROVIDER_OPTION_FIELDS, Target
from app.config.schema import MAX_DEPTH, MAX_TARGETS, parse_config
from app.errors import BadRequest, InvalidConfig

SEED = 20240917
MUTATED_CASES = 3000
RANDOM_CASES = 600

TARGET_KEYS = (
    "provider", "api_key", "custom_host", "name", "weight", "override_params", "retry", "cache", "request_timeout",
    "forward_headers", "strict_open_ai_compliance", "before_request_hooks", "after_request_hooks",
    "input_guardrails", "output_guardrails", "strategy", "targets", "virtual_key", "options",
    *PROVIDER_OPTION_FIELDS,
)
NESTED_KEYS = ("attempts", "on_status_codes", "use_retry_after_header", "mode", "max_age", "conditions", "query",
               "then", "default")
ODD_STRINGS = ("", " ", "openai", "@openai-prod", "simple", "semantic", *MODES, "ünïcødé", "日本語", "🚀" * 3,
               "\x00", "a,b", "path: x", "x" * 5000, "NaN", "1", "true", "null")

SEEDS: list[dict[str, Any]] = [
    {"provider": "openai"},
    {"provider": "@openai-prod", "api_key": "sk-1", "retry": {"attempts": 3, "on_status_codes": [429]},
     "cache": {"mode": "simple", "max_age": 60}, "request_timeout": 5000, "forward_headers": ["x-a"],
     "override_params": {"model": "gpt-4o-mini"}, "resource_name": "res", "strict_open_ai_compliance": True},
    {"strategy": {"mode": "fallback", "on_status_codes": [429, 500]},
     "targets": [{"provider": "openai", "weight": 0.5}, {"provider": "groq", "retry": {"attempts": 1}}]},
    {"strategy": {"mode": "loadbalance"},
     "targets": [{"provider": "openai", "weight": 1}, {"provider": "groq", "weight": 0},
                 {"strategy": {"mode": "single"}, "targets": [{"provider": "cohere"}]}]},
    {"strategy": {"mode": "conditional", "default": "b",
                  "conditions": [{"query": {"metadata.tier": {"$eq": "pro"}}, "then": "a"}]},
     "targets": [{"name": "a", "provider": "openai"}, {"name": "b", "provider": "cohere"}]},
    {"before_request_hooks": [{"id": "h", "type": "guardrail", "checks": [{"id": "default.wordCount"}]}],
     "input_guardrails": [{"notNull": {}}, {"wordCount": {"maxWords": 5}, "deny": True}], "output_guardrails": [],
     "targets": [{"provider": "anthropic", "after_request_hooks": []}]},
]


# ---------------------------------------------------------------------------- generators


def junk(rng: random.Random, depth: int = 0) -> Any:
    """Return a random JSON-like value (what json.loads could hand us, NaN and huge ints included)."""
    roll = rng.randrange(14 if depth < 4 else 10)
    if roll == 0:
        return None
    if roll == 1:
        return rng.choice((True, False))
    if roll == 2:
        return rng.choice((0, 1, -1, 5, 6, 99, 100, 429, 599, 600, 2**31, 2**63, 10**400, -(10**400)))
    if roll == 3:
        return rng.choice((0.0, -0.0, 0.5, 1e308, -1e-300, 3.0, math.nan, math.inf, -math.inf))
    if roll in (4, 5, 6):
        return rng.choice(ODD_STRINGS)
    if roll == 7:
        return rng.choice(TARGET_KEYS + NESTED_KEYS)
    if roll in (8, 9):
        return rng.choice(([], {}, [None], [{}], {"": None}))
    if roll in (10, 11):
        return [junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(TARGET_KEYS + NESTED_KEYS + ODD_STRINGS): junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_target(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """Return a random target built from real keys with mostly plausible, sometimes wrong, values."""
    node: dict[str, Any] = {}
    for key in rng.sample(TARGET_KEYS, rng.randrange(6)):
        node[key] = junk(rng)
    if depth < 4 and rng.random() < 0.4:
        node["targets"] = [random_target(rng, depth + 1) for _ in range(rng.randrange(1, 4))]
        if rng.random() < 0.7:
            node["strategy"] = {"mode": rng.choice(MODES + ("bogus",))}
    return node


def containers(value: Any) -> list[dict[str, Any] | list[Any]]:
    """Return every dict and list inside value (iteratively: nested generators would be quadratic)."""
    found: list[dict[str, Any] | list[Any]] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def deep(leaf: Any, levels: int) -> dict[str, Any]:
    """Return leaf wrapped in `levels` levels of targets."""
    node = leaf
    for _ in range(levels):
        node = {"targets": [node]}
    return node


def mutate(rng: random.Random, config: dict[str, Any]) -> Any:
    """Return config with one random mutation applied (the config itself may be changed in place)."""
    spot = rng.choice(containers(config))
    kind = rng.randrange(10)
    if isinstance(spot, dict):
        keys = list(spot)
        if kind <= 2 and keys:  # wrong type or odd value for an existing key
            spot[rng.choice(keys)] = junk(rng)
        elif kind == 3 and keys:
            del spot[rng.choice(keys)]
        elif kind == 4:  # a known or unknown key, anywhere
            spot[rng.choice(TARGET_KEYS + NESTED_KEYS + ODD_STRINGS)] = junk(rng)
        elif kind == 5:
            spot["targets"] = [deep({"provider": "openai"}, rng.randrange(MAX_DEPTH - 2, MAX_DEPTH + 4))]
        elif kind == 6:
            spot["targets"] = [{"provider": "groq", "weight": rng.choice((0, 1))}] * rng.randrange(MAX_TARGETS - 5,
                                                                                                   MAX_TARGETS + 5)
        elif kind == 7:
            spot["strategy"] = {"mode": rng.choice(MODES), **({"conditions": junk(rng)} if rng.random() < .5 else {})}
        elif kind == 8:  # a list or scalar where an object goes
            for key in keys[:1]:
                spot[key] = [spot[key]]
        else:
            children = spot.get("targets")
            spot["targets"] = (children if isinstance(children, list) else []) + [random_target(rng)]
    else:
        if kind <= 4 and spot:
            spot[rng.randrange(len(spot))] = junk(rng)
        elif kind <= 6:
            spot.append(junk(rng))
        elif spot:
            spot.pop(rng.randrange(len(spot)))
    if rng.random() < 0.02:  # the whole config replaced by a non-object
        return junk(rng)
    return config


def cases() -> Iterator[Any]:
    """Yield the fuzz inputs: mutated seeds, then random trees."""
    rng = random.Random(SEED)
    for _ in range(MUTATED_CASES):
        config: Any = copy.deepcopy(rng.choice(SEEDS))
        for _ in range(rng.randrange(1, 5)):
            if not isinstance(config, dict):
                break
            config = mutate(rng, config)
        yield config
    for _ in range(RANDOM_CASES):
        yield random_target(rng) if rng.random() < 0.8 else junk(rng)


# ---------------------------------------------------------------------------- checks


def check_target(target: Target, depth: int = 0) -> int:
    """Assert the invariants of a parsed tree and return its number of targets."""
    assert depth <= MAX_DEPTH
    assert isinstance(target.weight, float) and math.isfinite(target.weight) and target.weight >= 0
    assert isinstance(target.targets, tuple)
    assert isinstance(target.provider_options, dict)
    assert all(isinstance(v, str) for v in target.provider_options.values())
    if target.retry is not None:
        assert 0 <= target.retry.attempts <= 5
        assert isinstance(target.retry.on_status_codes, tuple)
    if target.strategy is not None:
        assert target.targets, "a strategy always comes with targets"
        if target.strategy.mode == "loadbalance":
            assert any(child.weight > 0 for child in target.targets)
        if target.strategy.mode == "conditional":
            assert target.strategy.conditions
    for value in (target.forward_headers, target.before_request_hooks, target.after_request_hooks,
                  target.input_guardrails, target.output_guardrails):
        assert value is None or isinstance(value, tuple)
    return len(target.targets) + sum(check_target(child, depth + 1) for child in target.targets)


def outcome(config: Any) -> str:
    """Parse config and return "ok", "invalid" or "bad"; fail the test on anything unexpected."""
    try:
        target = parse_config(config)
    except InvalidConfig as error:
        assert error.message
        assert error.errors and all(isinstance(e, str) and e.startswith("path: ") for e in error.errors)
        assert all(", message: " in e for e in error.errors)
        return "invalid"
    except BadRequest as error:
        assert error.message
        return "bad"
    assert isinstance(target, Target)
    assert check_target(target) <= MAX_TARGETS
    return "ok"


def test_fuzzed_configs_parse_or_fail_cleanly() -> None:
    seen = {"ok": 0, "invalid": 0, "bad": 0}
    for index, config in enumerate(cases()):
        try:
            seen[outcome(config)] += 1
        except Exception as exc:  # name the failing case for reproduction
            raise AssertionError(f"fuzz case {index} (seed {SEED}): {exc!r}\n{str(config)[:2000]}") from exc
    # The generator must exercise every outcome, or it is not testing much.
    assert all(count > 50 for count in seen.values()), seen


def errors_of(config: Any) -> tuple[str, list[str] | None] | None:
    """Return (message, errors) of the gateway error parsing config raises, or None when it parses."""
    try:
        parse_config(config)
    except BadRequest as error:
        return error.message, error.errors
    return None


def test_fuzzed_errors_are_deterministic() -> None:
    for config in itertools.islice(cases(), 300):
        assert errors_of(config) == errors_of(copy.deepcopy(config))


def test_every_seed_is_valid() -> None:
    for config in SEEDS:
        assert isinstance(parse_config(copy.deepcopy(config)), Target)
