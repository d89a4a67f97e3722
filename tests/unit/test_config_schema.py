"""Tests for config validation into frozen models (app.config.schema, SPEC 8.1-8.2)."""

from __future__ import annotations

import time
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from app.config.models import (
    DEFAULT_RETRY_STATUS_CODES,
    PROVIDER_OPTION_FIELDS,
    CachePolicy,
    Condition,
    RetryPolicy,
    Strategy,
    Target,
)
from app.config.schema import MAX_DEPTH, MAX_TARGETS, parse_config
from app.errors import BadRequest, InvalidConfig

MODE_MESSAGE = "Invalid 'mode' value. Must be one of: single, loadbalance, fallback, conditional"
LEGACY = "This version of config is not supported in this route. Please migrate to the latest version"
NOT_JSON = "Invalid config passed. You need to pass a valid json"

FULL_TARGET: dict[str, Any] = {
    "provider": "@openai-prod", "api_key": "sk-x", "custom_host": "https://llm.example.com/v1", "name": "fast",
    "weight": 0.7, "override_params": {"model": "gpt-4o-mini", "temperature": 0},
    "retry": {"attempts": 3, "on_status_codes": [429, 503], "use_retry_after_header": True},
    "cache": {"mode": "semantic", "max_age": 60}, "request_timeout": 10000, "forward_headers": ["x-trace"],
    "strict_open_ai_compliance": False,
    "before_request_hooks": [{"id": "h1", "type": "guardrail", "checks": []}],
    "after_request_hooks": [],
    "input_guardrails": [{"default.notNull": {}}, {"default.wordCount": {"maxWords": 10}, "deny": True}],
    "output_guardrails": [],
    "resource_name": "res", "deployment_id": "dep", "api_version": "2024-02-01",
}

THREE_TARGETS: dict[str, Any] = {
    "strategy": {"mode": "fallback", "on_status_codes": [429, 500]},
    "retry": {"attempts": 2}, "request_timeout": 30000, "override_params": {"model": "gpt-4o"},
    "targets": [
        {"provider": "openai", "api_key": "sk-1", "weight": 0.7},
        {"provider": "@anthropic-prod", "override_params": {"model": "claude-3-5-haiku"}},
        {"strategy": {"mode": "loadbalance"}, "targets": [{"provider": "groq"}, {"provider": "cohere", "weight": 0}]},
    ],
}


def errors_of(config: Any) -> InvalidConfig:
    """Return the InvalidConfig that parsing config raises."""
    with pytest.raises(InvalidConfig) as info:
        parse_config(config)
    return info.value


def nested(depth: int) -> dict[str, Any]:
    """Return a config whose deepest leaf sits `depth` levels of targets below the root."""
    node: dict[str, Any] = {"provider": "openai"}
    for _ in range(depth):
        node = {"targets": [node]}
    return node


# ---------------------------------------------------------------------------- valid


@pytest.mark.parametrize("config", [
    {},
    {"provider": "openai"},
    {"provider": "@openai-prod"},
    {"provider": "azure-openai", "resource_name": "res", "deployment_id": "d", "api_version": "v"},
    {"provider": "bedrock", "aws_region": "us-east-1", "aws_access_key_id": "a", "aws_secret_access_key": "s",
     "aws_session_token": "t"},
    {"retry": {}},
    {"retry": {"attempts": 0}},
    {"retry": {"attempts": 5, "on_status_codes": []}},
    {"cache": {"mode": "simple"}},
    {"cache": {"mode": "semantic", "max_age": 0}},
    {"request_timeout": 1},
    {"weight": 0},
    {"weight": 3},
    {"override_params": {}},
    {"input_guardrails": [{"default.notNull": {}}, {"id": "x", "default.notNull": {}}], "output_guardrails": []},
    {"targets": [{"provider": "openai"}]},
    {"strategy": {"mode": "single"}, "targets": [{"provider": "openai"}]},
    {"strategy": {"mode": "conditional", "conditions": [{"query": {"metadata.tier": "pro"}, "then": "a"}],
                  "default": "a"},
     "targets": [{"name": "a", "provider": "openai"}]},
    {"strategy": {"mode": "loadbalance"}, "targets": [{"weight": 0}, {"weight": 0.1}]},
    {"strategy": {"mode": "loadbalance"}, "targets": [{"weight": 0}, {}]},
    FULL_TARGET,
    THREE_TARGETS,
    nested(MAX_DEPTH),
])
def test_valid_configs_parse(config: dict[str, Any]) -> None:
    assert isinstance(parse_config(config), Target)


# ---------------------------------------------------------------------------- invalid

INVALID_CASES: list[tuple[dict[str, Any], str, str]] = [
    # (config, path, message fragment)
    ({"provider": ""}, "provider", "Must not be empty"),
    ({"provider": 5}, "provider", "Not a valid string"),
    ({"provider": None}, "provider", "may not be null"),
    ({"api_key": ["k"]}, "api_key", "Not a valid string"),
    ({"virtual_key": "vk-1"}, "virtual_key", "virtual keys are not supported; use a Model Catalog @name as provider"),
    ({"virtual_key": None}, "virtual_key", "virtual keys are not supported"),
    ({"surprise": 1}, "surprise", "Unknown field"),
    ({"targets": [{"provider": "openai", "extra": 1}]}, "targets,0,extra", "Unknown field"),
    ({"retry": {"attempts": 6}}, "retry,attempts", "the cap is 5"),
    ({"retry": {"attempts": -1}}, "retry,attempts", "Must be between 0 and 5"),
    ({"retry": {"attempts": True}}, "retry,attempts", "Not a valid integer"),
    ({"retry": {"attempts": "3"}}, "retry,attempts", "Not a valid integer"),
    ({"retry": {"attempts": 2.0}}, "retry,attempts", "Not a valid integer"),
    ({"retry": {"attempts": 10 ** 30}}, "retry,attempts", "the cap is 5"),
    ({"retry": {"on_status_codes": [429, 99]}}, "retry,on_status_codes,1", "Must be between 100 and 599"),
    ({"retry": {"on_status_codes": [600]}}, "retry,on_status_codes,0", "Must be between 100 and 599"),
    ({"retry": {"on_status_codes": [True]}}, "retry,on_status_codes,0", "Not a valid integer"),
    ({"retry": {"on_status_codes": 429}}, "retry,on_status_codes", "Not a valid list"),
    ({"retry": {"use_retry_after_header": "yes"}}, "retry,use_retry_after_header", "Not a valid boolean"),
    ({"retry": {"use_retry_after_header": 1}}, "retry,use_retry_after_header", "Not a valid boolean"),
    ({"retry": {"tries": 1}}, "retry,tries", "Unknown field"),
    ({"retry": [3]}, "retry", "Must be an object"),
    ({"cache": {}}, "cache,mode", "Missing data for required field"),
    ({"cache": {"mode": "fuzzy"}}, "cache,mode", "Must be one of: simple, semantic"),
    ({"cache": {"mode": "simple", "max_age": -1}}, "cache,max_age", "Must be between 0 and"),
    ({"cache": {"mode": "simple", "max_age": 1.5}}, "cache,max_age", "Not a valid integer"),
    ({"request_timeout": 0}, "request_timeout", "from 1 to 86400000"),
    ({"request_timeout": 10 ** 30}, "request_timeout", "from 1 to 86400000"),
    ({"cache": {"mode": "simple", "max_age": 10 ** 30}}, "cache,max_age", "Must be between 0 and"),
    ({"request_timeout": "100"}, "request_timeout", "Not a valid integer"),
    ({"request_timeout": False}, "request_timeout", "Not a valid integer"),
    ({"weight": -0.5}, "weight", "Must be at least 0"),
    ({"weight": "1"}, "weight", "Not a valid number"),
    ({"weight": True}, "weight", "Not a valid number"),
    ({"weight": float("nan")}, "weight", "finite"),
    ({"weight": float("inf")}, "weight", "finite"),
    ({"weight": 10 ** 400}, "weight", "finite"),
    ({"override_params": ["model"]}, "override_params", "Not a valid mapping"),
    ({"forward_headers": "x-trace"}, "forward_headers", "Not a valid list"),
    ({"forward_headers": ["ok", 7]}, "forward_headers,1", "Not a valid string"),
    ({"strict_open_ai_compliance": "false"}, "strict_open_ai_compliance", "Not a valid boolean"),
    ({"before_request_hooks": ["h1"]}, "before_request_hooks,0", "Not a valid mapping"),
    ({"after_request_hooks": {"id": "h"}}, "after_request_hooks", "Not a valid list"),
    ({"input_guardrails": [3]}, "input_guardrails,0", "Must be an object or a string"),
    ({"output_guardrails": [None]}, "output_guardrails,0", "may not be null"),
    ({"resource_name": 1}, "resource_name", "Not a valid string"),
    ({"strategy": {"mode": "single"}}, "strategy", "needs a non-empty 'targets' list"),
    ({"strategy": {"mode": "fallback"}, "targets": []}, "targets", "at least one target"),
    ({"targets": []}, "targets", "at least one target"),
    ({"targets": {"provider": "openai"}}, "targets", "Not a valid list"),
    ({"targets": ["openai"]}, "targets,0", "Must be an object"),
    ({"strategy": {"mode": "fallback", "on_status_codes": ["500"]}, "targets": [{}]},
     "strategy,on_status_codes,0", "Not a valid integer"),
    ({"strategy": {}, "targets": [{}]}, "strategy,mode", "Missing data for required field"),
    ({"strategy": {"mode": "single", "retries": 1}, "targets": [{}]}, "strategy,retries", "Unknown field"),
    ({"strategy": {"mode": "conditional"}, "targets": [{}]}, "strategy,conditions", "non-empty 'conditions'"),
    ({"strategy": {"mode": "conditional", "conditions": []}, "targets": [{}]},
     "strategy,conditions", "non-empty 'conditions'"),
    ({"strategy": {"mode": "conditional", "conditions": [{"query": {}}]}, "targets": [{}]},
     "strategy,conditions,0,then", "Missing data for required field"),
    ({"strategy": {"mode": "conditional", "conditions": [{"query": [], "then": "a"}]}, "targets": [{}]},
     "strategy,conditions,0,query", "Not a valid mapping"),
    ({"strategy": {"mode": "single", "default": 1}, "targets": [{}]}, "strategy,default", "Not a valid string"),
    ({"strategy": {"mode": "loadbalance"}, "targets": [{"weight": 0}, {"weight": 0.0}]},
     "targets", "all targets of a loadbalance have weight 0; at least one must be above 0"),
    ({"targets": [{"strategy": {"mode": "loadbalance"}, "targets": [{"weight": 0}]}]},
     "targets,0,targets", "all targets of a loadbalance have weight 0"),
    ({"targets": [{}, {"targets": [{"retry": {"attempts": 9}}]}]}, "targets,1,targets,0,retry,attempts",
     "Must be between 0 and 5 (the cap is 5)."),
]


@pytest.mark.parametrize(("config", "path", "fragment"), INVALID_CASES)
def test_invalid_configs_name_the_path(config: dict[str, Any], path: str, fragment: str) -> None:
    error = errors_of(config)
    assert error.status == 400
    assert error.message == MODE_MESSAGE or error.message.startswith("Invalid config passed: ")
    matching = [e for e in error.errors or [] if e.startswith(f"path: {path}, message: ")]
    assert matching, error.errors
    assert any(fragment in e for e in matching), matching


def test_error_format_matches_the_spec_example() -> None:
    error = errors_of({"targets": [{}, {"retry": {"attempts": 7}}]})
    message = "Invalid config passed: targets,1,retry,attempts: Must be between 0 and 5 (the cap is 5)."
    assert error.message == message  # SDKs show only the message: it repeats the first problem
    assert error.errors == ["path: targets,1,retry,attempts, message: Must be between 0 and 5 (the cap is 5)."]
    assert error.body() == {"status": "failure", "message": message, "errors": error.errors}


def test_all_errors_are_reported_at_once_and_sorted() -> None:
    config = {
        "zeta": 1,
        "retry": {"attempts": 9},
        "targets": [{"provider": 1}] + [{}] * 9 + [{"weight": -1, "cache": {"mode": "x"}}],
    }
    error = errors_of(config)
    assert error.errors == [
        "path: retry,attempts, message: Must be between 0 and 5 (the cap is 5).",
        "path: targets,0,provider, message: Not a valid string.",
        "path: targets,10,cache,mode, message: Must be one of: simple, semantic.",
        "path: targets,10,weight, message: Must be at least 0.",
        "path: zeta, message: Unknown field.",
    ]


def test_errors_are_deterministic() -> None:
    config = {"b": 1, "a": 2, "targets": [{"y": 1, "x": 2}]}
    assert errors_of(config).errors == errors_of(dict(reversed(list(config.items())))).errors


@pytest.mark.parametrize("mode", ["roundrobin", "", "Fallback", None, 3, ["single"], {"m": 1}])
def test_bad_mode_has_its_own_message(mode: Any) -> None:
    error = errors_of({"strategy": {"mode": mode}, "targets": [{}]})
    assert error.message == MODE_MESSAGE
    assert error.errors == [
        "path: strategy,mode, message: Must be one of: single, loadbalance, fallback, conditional."]


def test_bad_mode_deep_down_still_lists_every_error() -> None:
    config = {"retry": {"attempts": 8},
              "targets": [{"targets": [{"strategy": {"mode": "random"}, "targets": [{}]}]}]}
    error = errors_of(config)
    assert error.message == MODE_MESSAGE
    assert error.errors == [
        "path: retry,attempts, message: Must be between 0 and 5 (the cap is 5).",
        "path: targets,0,targets,0,strategy,mode, message: Must be one of: single, loadbalance, fallback, "
        "conditional.",
    ]


def test_a_field_named_mode_elsewhere_is_not_a_strategy_mode() -> None:
    assert errors_of({"cache": {"mode": "single-ish"}}).message.startswith("Invalid config passed: cache,mode: ")


# ---------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize("data", [None, "openai", 3, True, ["provider"], b"{}"])
def test_non_objects_are_not_json_configs(data: Any) -> None:
    with pytest.raises(BadRequest) as info:
        parse_config(data)
    assert type(info.value) is BadRequest
    assert info.value.message == NOT_JSON


@pytest.mark.parametrize("config", [
    {"options": [{"provider": "openai"}]},
    {"mode": "fallback", "options": []},
    {"options": None, "bogus": 1},
])
def test_legacy_options_shape_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as info:
        parse_config(config)
    assert type(info.value) is BadRequest
    assert info.value.message == LEGACY


def test_options_below_the_root_is_just_unknown() -> None:
    error = errors_of({"targets": [{"options": []}]})
    assert error.errors == ["path: targets,0,options, message: Unknown field."]


# ---------------------------------------------------------------------------- guards


def test_nesting_at_the_limit_is_fine_and_one_deeper_is_refused() -> None:
    config = parse_config(nested(MAX_DEPTH))
    for _ in range(MAX_DEPTH):
        config = config.targets[0]
    assert config.provider == "openai"

    error = errors_of(nested(MAX_DEPTH + 1))
    assert len(error.errors or []) == 1
    path = ",".join(["targets", "0"] * MAX_DEPTH + ["targets"])
    assert error.errors == [f"path: {path}, message: Targets nest deeper than 10 levels; at most 10 are allowed."]


def test_very_deep_nesting_is_refused_without_recursion() -> None:
    error = errors_of(nested(50_000))
    assert "deeper than 10 levels" in (error.errors or [""])[0]


def test_target_count_limit() -> None:
    assert len(parse_config({"targets": [{}] * MAX_TARGETS}).targets) == MAX_TARGETS
    error = errors_of({"targets": [{}] * (MAX_TARGETS + 1)})
    assert error.errors == ["path: targets, message: More than 100 targets in total; at most 100 are allowed."]


def test_target_count_limit_counts_the_whole_tree() -> None:
    config: dict[str, Any] = {"targets": [{"targets": [{}] * 10} for _ in range(10)]}  # 10 + 100 targets
    assert "More than 100 targets" in (errors_of(config).errors or [""])[0]


def test_huge_target_list_is_refused_fast() -> None:
    # A bound on a hang, not a speed target: refused at the first node it takes about 10 ms, while walking
    # the million nodes takes seconds and parsing them minutes. The parse's speed is a figure in bench/.
    started = time.perf_counter()
    errors_of({"targets": [{"provider": "x"}] * 1_000_000})
    assert time.perf_counter() - started < 0.5


# ---------------------------------------------------------------------------- models


def test_full_target_builds_typed_frozen_models() -> None:
    target = parse_config(FULL_TARGET)
    assert target.provider == "@openai-prod"
    assert target.api_key == "sk-x"
    assert target.custom_host == "https://llm.example.com/v1"
    assert target.name == "fast"
    assert target.weight == 0.7 and isinstance(target.weight, float)
    assert target.override_params == {"model": "gpt-4o-mini", "temperature": 0}
    assert target.retry == RetryPolicy(attempts=3, on_status_codes=(429, 503), use_retry_after_header=True)
    assert target.cache == CachePolicy(mode="semantic", max_age=60)
    assert target.request_timeout == 10000
    assert target.forward_headers == ("x-trace",)
    assert target.strict_open_ai_compliance is False
    assert target.before_request_hooks == ({"id": "h1", "type": "guardrail", "checks": []},)
    assert target.after_request_hooks == ()
    assert target.input_guardrails == ({"default.notNull": {}}, {"default.wordCount": {"maxWords": 10}, "deny": True})
    assert target.output_guardrails == ()
    assert target.provider_options == {"resource_name": "res", "deployment_id": "dep", "api_version": "2024-02-01"}
    assert target.strategy is None
    assert target.targets == ()
    assert target.is_leaf
    with pytest.raises(FrozenInstanceError):
        target.provider = "other"  # type: ignore[misc]


def test_absent_fields_stay_none_for_inheritance() -> None:
    target = parse_config({"provider": "openai"})
    assert target == Target(provider="openai")
    assert target.weight == 1.0 and isinstance(target.weight, float)
    assert target.targets == ()
    assert target.provider_options == {}
    for name in ("api_key", "custom_host", "name", "override_params", "retry", "cache", "request_timeout",
                 "forward_headers", "strict_open_ai_compliance", "before_request_hooks", "after_request_hooks",
                 "input_guardrails", "output_guardrails", "strategy"):
        assert getattr(target, name) is None, name


def test_retry_defaults_come_from_the_model() -> None:
    assert parse_config({"retry": {}}).retry == RetryPolicy()
    retry = parse_config({"retry": {"attempts": 2}}).retry
    assert retry is not None
    assert retry.on_status_codes == DEFAULT_RETRY_STATUS_CODES
    assert retry.use_retry_after_header is False
    empty = parse_config({"retry": {"on_status_codes": []}}).retry
    assert empty is not None and empty.on_status_codes == ()


def test_cache_without_max_age() -> None:
    assert parse_config({"cache": {"mode": "simple"}}).cache == CachePolicy(mode="simple", max_age=None)


def test_nested_tree_builds_targets_and_strategies() -> None:
    root = parse_config(THREE_TARGETS)
    assert root.strategy == Strategy(mode="fallback", on_status_codes=(429, 500))
    assert root.retry == RetryPolicy(attempts=2)
    assert root.request_timeout == 30000
    assert isinstance(root.targets, tuple) and len(root.targets) == 3
    first, second, third = root.targets
    assert first.provider == "openai" and first.weight == 0.7 and first.api_key == "sk-1"
    assert first.request_timeout is None  # inherited later, not copied here
    assert second.override_params == {"model": "claude-3-5-haiku"}
    assert third.strategy == Strategy(mode="loadbalance")
    assert [t.provider for t in third.targets] == ["groq", "cohere"]
    assert [t.weight for t in third.targets] == [1.0, 0.0]
    assert not root.is_leaf and first.is_leaf


def test_targets_without_strategy_mean_single() -> None:
    root = parse_config({"targets": [{"provider": "openai"}, {"provider": "groq"}]})
    assert root.strategy == Strategy(mode="single")


def test_conditions_become_condition_models() -> None:
    root = parse_config({
        "strategy": {"mode": "conditional", "default": "cheap",
                     "conditions": [{"query": {"metadata.tier": {"$eq": "pro"}}, "then": "fast"},
                                    {"query": {"$or": [{"params.model": "a"}]}, "then": "cheap"}]},
        "targets": [{"name": "fast", "provider": "openai"}, {"name": "cheap", "provider": "groq"}],
    })
    assert root.strategy is not None
    assert root.strategy.mode == "conditional"
    assert root.strategy.default == "cheap"
    assert root.strategy.on_status_codes is None
    assert root.strategy.conditions == (
        Condition(query={"metadata.tier": {"$eq": "pro"}}, then="fast"),
        Condition(query={"$or": [{"params.model": "a"}]}, then="cheap"),
    )


def test_every_provider_option_field_lands_in_provider_options() -> None:
    # The fields that go into an upstream URL must have their own form (e.g. a region).
    url_parts = {"resource_name": "my-res", "deployment_id": "dep", "api_version": "2024-10-21",
                 "aws_region": "us-east-1", "vertex_region": "us-central1", "vertex_project_id": "my-project"}
    config = {name: url_parts.get(name, f"value-{name}") for name in PROVIDER_OPTION_FIELDS}
    target = parse_config({"provider": "openai", **config})
    assert target.provider_options == config
    assert target.provider == "openai"


def test_parsing_does_not_alias_the_input() -> None:
    hook = {"id": "h", "checks": [{"id": "default.notNull"}]}
    config: dict[str, Any] = {"override_params": {"model": "a"}, "before_request_hooks": [hook]}
    target = parse_config(config)
    config["override_params"]["model"] = "b"
    config["before_request_hooks"].append({"id": "i"})
    assert target.override_params == {"model": "a"}
    assert target.before_request_hooks == ({"id": "h", "checks": [{"id": "default.notNull"}]},)


def test_parsing_does_not_mutate_the_input() -> None:
    config = {"provider": "openai", "resource_name": "res", "targets": [{"provider": "groq"}]}
    snapshot = repr(config)
    parse_config(config)
    assert repr(config) == snapshot


def test_error_list_is_capped() -> None:
    bad_targets = [{"provider": 1, "weight": "x"} for _ in range(60)]
    error = errors_of({"targets": bad_targets, "strategy": {"mode": "fallback"}})
    assert len(error.errors or []) == 51
    assert (error.errors or [])[-1].endswith("70 more problems")


def test_guardrail_problems_are_reported_with_their_paths() -> None:
    config = {"strategy": {"mode": "fallback"}, "targets": [
        {"provider": "openai"},
        {"provider": "openai", "input_guardrails": [{"default.regexMatch": {}}],
         "after_request_hooks": [{"id": "h", "checks": [{"id": "default.nope"}]}]}]}
    errors = errors_of(config).errors or []
    assert any(e.startswith("path: targets,1,input_guardrails,0") and "rule" in e for e in errors), errors
    assert any(e.startswith("path: targets,1,after_request_hooks,0") and "nope" in e for e in errors), errors
