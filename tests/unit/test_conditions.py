"""Tests for the conditional router's query language (app.pipeline.conditions)."""

from __future__ import annotations

from typing import Any

import pytest

from app.config.models import Condition, Strategy, Target
from app.errors import BadRequest
from app.pipeline.conditions import MAX_DEPTH, matches, pick_conditional

CONTEXT: dict[str, Any] = {
    "metadata": {"tier": "gold", "level": 3, "score": 2.5, "beta": True, "zero": 0, "none": None},
    "params": {
        "model": "gpt-4o-mini",
        "temperature": 0.7,
        "max_tokens": 100,
        "stream": False,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "Hello there", "tags": ["a", "b"]},
        ],
        "a": {"b": {"c": {"d": {"e": "deep"}}}},
        "stop": ["x", 1],
    },
    "url": {"pathname": "/v1/chat/completions"},
}


def run(query: dict[str, Any]) -> bool:
    """Evaluate `query` against the shared context."""
    return matches(query, CONTEXT)


def raises_400(query: dict[str, Any], message: str) -> None:
    """Assert that `query` is refused with exactly `message`."""
    with pytest.raises(BadRequest) as info:
        run(query)
    assert info.value.status == 400
    assert info.value.message == message


# --- operators ---------------------------------------------------------------------------

OPERATOR_CASES = [
    # $eq
    ({"metadata.tier": {"$eq": "gold"}}, True),
    ({"metadata.tier": {"$eq": "silver"}}, False),
    ({"metadata.nope": {"$eq": "gold"}}, False),
    ({"metadata.level": {"$eq": "3"}}, False),
    ({"metadata.none": {"$eq": None}}, True),
    ({"metadata.nope": {"$eq": None}}, False),
    ({"params.stop": {"$eq": ["x", 1]}}, True),
    ({"params.stop": {"$eq": ["x", True]}}, False),
    ({"params.a.b": {"$eq": {"c": {"d": {"e": "deep"}}}}}, True),
    # $ne
    ({"metadata.tier": {"$ne": "silver"}}, True),
    ({"metadata.tier": {"$ne": "gold"}}, False),
    ({"metadata.nope": {"$ne": "gold"}}, True),
    ({"metadata.level": {"$ne": "3"}}, True),
    # $gt
    ({"metadata.level": {"$gt": 2}}, True),
    ({"metadata.level": {"$gt": 3}}, False),
    ({"metadata.nope": {"$gt": 0}}, False),
    ({"metadata.level": {"$gt": "2"}}, False),
    ({"metadata.tier": {"$gt": "alpha"}}, True),
    ({"metadata.score": {"$gt": 2}}, True),
    # $gte
    ({"metadata.level": {"$gte": 3}}, True),
    ({"metadata.level": {"$gte": 3.5}}, False),
    ({"metadata.nope": {"$gte": 0}}, False),
    ({"metadata.tier": {"$gte": 1}}, False),
    # $lt
    ({"params.temperature": {"$lt": 1}}, True),
    ({"params.temperature": {"$lt": 0.5}}, False),
    ({"params.nope": {"$lt": 1}}, False),
    ({"params.temperature": {"$lt": [1]}}, False),
    ({"metadata.tier": {"$lt": "silver"}}, True),
    # $lte
    ({"params.max_tokens": {"$lte": 100}}, True),
    ({"params.max_tokens": {"$lte": 99}}, False),
    ({"params.nope": {"$lte": 100}}, False),
    ({"params.max_tokens": {"$lte": None}}, False),
    # $in
    ({"metadata.tier": {"$in": ["gold", "platinum"]}}, True),
    ({"metadata.tier": {"$in": ["silver"]}}, False),
    ({"metadata.nope": {"$in": ["gold"]}}, False),
    ({"metadata.level": {"$in": ["3"]}}, False),
    ({"metadata.level": {"$in": []}}, False),
    # $nin
    ({"metadata.tier": {"$nin": ["silver"]}}, True),
    ({"metadata.tier": {"$nin": ["gold"]}}, False),
    ({"metadata.nope": {"$nin": ["gold"]}}, True),
    ({"metadata.level": {"$nin": ["3"]}}, True),
    # $regex
    ({"params.model": {"$regex": "^gpt-4"}}, True),
    ({"params.model": {"$regex": "mini$"}}, True),
    ({"params.model": {"$regex": "^claude"}}, False),
    ({"params.nope": {"$regex": ".*"}}, False),
    ({"metadata.level": {"$regex": "3"}}, False),
    ({"url.pathname": {"$regex": "chat/completions"}}, True),
]


@pytest.mark.parametrize(("query", "expected"), OPERATOR_CASES)
def test_operators(query: dict[str, Any], expected: bool) -> None:
    assert run(query) is expected


# --- bools and numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ({"metadata.beta": True}, True),
    ({"metadata.beta": 1}, False),
    ({"metadata.zero": False}, False),
    ({"metadata.zero": 0}, True),
    ({"params.stream": 0}, False),
    ({"params.stream": False}, True),
    ({"metadata.beta": {"$in": [1]}}, False),
    ({"metadata.beta": {"$in": [True]}}, True),
    ({"metadata.beta": {"$nin": [1]}}, True),
    ({"metadata.level": {"$ne": True}}, True),
    ({"metadata.beta": {"$gt": 0}}, False),
    ({"metadata.level": {"$gt": False}}, False),
    ({"metadata.level": 3.0}, True),
])
def test_bools_are_not_numbers(query: dict[str, Any], expected: bool) -> None:
    assert run(query) is expected


# --- shapes: plain values, implicit AND, $and / $or --------------------------------------------


@pytest.mark.parametrize(("query", "expected"), [
    ({"metadata.tier": "gold"}, True),
    ({"metadata.tier": "silver"}, False),
    ({"metadata.nope": "gold"}, False),
    ({"params.messages.1.tags": ["a", "b"]}, True),
    ({"params.a.b.c.d": {"e": "deep"}}, True),
    ({}, True),
])
def test_plain_value_means_eq(query: dict[str, Any], expected: bool) -> None:
    assert run(query) is expected


@pytest.mark.parametrize(("query", "expected"), [
    ({"metadata.tier": "gold", "metadata.level": 3}, True),
    ({"metadata.tier": "gold", "metadata.level": 4}, False),
    ({"metadata.level": {"$gte": 1, "$lt": 5}}, True),
    ({"metadata.level": {"$gte": 1, "$lt": 3}}, False),
    ({"metadata.tier": "gold", "$or": [{"metadata.level": 9}, {"params.stream": False}]}, True),
    ({"metadata.tier": "gold", "$or": [{"metadata.level": 9}, {"params.stream": True}]}, False),
])
def test_several_keys_mean_and(query: dict[str, Any], expected: bool) -> None:
    assert run(query) is expected


@pytest.mark.parametrize(("query", "expected"), [
    ({"$and": [{"metadata.tier": "gold"}, {"metadata.level": {"$gt": 2}}]}, True),
    ({"$and": [{"metadata.tier": "gold"}, {"metadata.level": {"$gt": 3}}]}, False),
    ({"$or": [{"metadata.tier": "silver"}, {"metadata.level": 3}]}, True),
    ({"$or": [{"metadata.tier": "silver"}, {"metadata.level": 4}]}, False),
    ({"$and": []}, True),
    ({"$or": []}, False),
    ({"$or": [{"$and": [{"metadata.tier": "gold"}, {"metadata.beta": False}]},
              {"$and": [{"params.model": {"$regex": "^gpt"}}, {"$or": [{"params.max_tokens": {"$lt": 10}},
                                                                       {"url.pathname": "/v1/chat/completions"}]}]}]},
     True),
    ({"$or": [{"$and": [{"metadata.tier": "gold"}, {"metadata.beta": False}]},
              {"$and": [{"params.model": {"$regex": "^gpt"}}, {"$or": [{"params.max_tokens": {"$lt": 10}},
                                                                       {"url.pathname": "/v1/embeddings"}]}]}]},
     False),
])
def test_and_or_nest(query: dict[str, Any], expected: bool) -> None:
    assert run(query) is expected


# --- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), [
    ("params.a.b.c.d.e", "deep"),
    ("params.messages.0.role", "system"),
    ("params.messages.1.content", "Hello there"),
    ("params.messages.1.tags.1", "b"),
    ("url.pathname", "/v1/chat/completions"),
])
def test_deep_paths_and_list_indexes(path: str, expected: str) -> None:
    assert run({path: expected}) is True
    assert run({path: {"$ne": expected}}) is False


@pytest.mark.parametrize("path", [
    "params.a.b.c.d.e.f",      # through a string
    "params.a.b.x.d.e",        # absent key midway
    "params.messages.2.role",  # index past the end
    "params.messages.-1.role",  # no negative indexes
    "params.messages.role",    # non-numeric segment into a list
    "params.model.0",          # strings are not indexed
    "params.a.b.c.d.e.",       # trailing dot
    "nothing.at.all",
])
def test_missing_paths(path: str) -> None:
    assert run({path: {"$eq": "deep"}}) is False
    assert run({path: {"$regex": "."}}) is False
    assert run({path: {"$in": ["deep", "system"]}}) is False
    assert run({path: {"$ne": "deep"}}) is True
    assert run({path: {"$nin": ["deep"]}}) is True


def test_context_mapping_keys_that_look_numeric() -> None:
    context = {"metadata": {"0": {"1": "yes"}}}
    assert matches({"metadata.0.1": "yes"}, context) is True


def test_regex_skips_huge_values() -> None:
    context = {"params": {"prompt": "a" * 100_001}}
    assert matches({"params.prompt": {"$regex": "a"}}, context) is False
    assert matches({"params.prompt": {"$regex": "a"}}, {"params": {"prompt": "a" * 100_000}}) is True


# --- malformed queries ------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "message"), [
    ({"metadata.tier": {"$foo": 1}}, "Unsupported operator used in the query router: $foo"),
    ({"$nor": [{"metadata.tier": "gold"}]}, "Unsupported operator used in the query router: $nor"),
    ({"metadata.tier": {"$eq": "gold", "plain": 1}}, "Unsupported operator used in the query router: plain"),
    ({"metadata.tier": {"$in": "gold"}}, "Operator $in needs a list in the query router"),
    ({"metadata.tier": {"$nin": {"a": 1}}}, "Operator $nin needs a list in the query router"),
    ({"$and": {"metadata.tier": "gold"}}, "Operator $and needs a list of queries in the query router"),
    ({"$or": ["metadata.tier"]}, "Each query in the query router must be an object"),
    ({"$eq": "gold"}, "Operator $eq needs a field in the query router"),
    ({"metadata.tier": {"$or": []}},
     "Operator $or cannot be applied to a field in the query router: metadata.tier"),
])
def test_malformed_queries_are_400(query: dict[str, Any], message: str) -> None:
    raises_400(query, message)


def test_operand_errors_do_not_depend_on_the_data() -> None:
    # The faulty part is never reached by evaluation, yet the query is still refused.
    raises_400({"$or": [{"metadata.tier": "gold"}, {"metadata.tier": {"$in": "x"}}]},
               "Operator $in needs a list in the query router")
    raises_400({"metadata.nope": {"$bogus": 1}}, "Unsupported operator used in the query router: $bogus")


@pytest.mark.parametrize("pattern", ["(", "[a-", "*x", "a{2,1}"])
def test_bad_regex_is_400(pattern: str) -> None:
    with pytest.raises(BadRequest) as info:
        run({"params.model": {"$regex": pattern}})
    assert info.value.status == 400
    assert info.value.message.startswith("Invalid regex in the query router: ")


@pytest.mark.parametrize("pattern", [5, None, ["a"], "a" * 1001, "((a{100}){100}){100}"])
def test_unusable_regex_operand_is_400(pattern: Any) -> None:
    with pytest.raises(BadRequest) as info:
        run({"params.model": {"$regex": pattern}})
    assert info.value.message.startswith("Invalid regex in the query router: ")


def _nested(levels: int, operator: str = "$and") -> dict[str, Any]:
    query: dict[str, Any] = {"metadata.tier": "gold"}
    for _ in range(levels):
        query = {operator: [query]}
    return query


def test_depth_guard() -> None:
    assert run(_nested(MAX_DEPTH)) is True
    assert run(_nested(MAX_DEPTH, "$or")) is True
    raises_400(_nested(MAX_DEPTH + 1), f"Query router conditions are nested deeper than {MAX_DEPTH} levels")
    # Far past Python's recursion limit: still a clean 400, not a RecursionError.
    raises_400(_nested(5000, "$or"), f"Query router conditions are nested deeper than {MAX_DEPTH} levels")


def test_deeply_nested_values_compare_without_recursion() -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = [deep]
    assert matches({"params.x": deep}, {"params": {"x": deep}}) is True
    assert matches({"params.x": deep}, {"params": {"x": [deep]}}) is False


# --- pick_conditional -------------------------------------------------------------------------

TARGETS = (Target(provider="openai", name="fast"), Target(provider="anthropic", name="smart"),
           Target(provider="cohere"), Target(provider="groq", name="cheap"))


def strategy(*conditions: tuple[dict[str, Any], str], default: str | None = None) -> Strategy:
    """Build a conditional strategy from (query, then) pairs."""
    return Strategy(mode="conditional", conditions=tuple(Condition(query=q, then=t) for q, t in conditions),
                    default=default)


def test_first_matching_condition_wins() -> None:
    chosen = strategy(({"metadata.tier": "silver"}, "fast"), ({"metadata.tier": "gold"}, "smart"),
                      ({"metadata.level": 3}, "cheap"), default="fast")
    assert pick_conditional(chosen, TARGETS, CONTEXT) == 1


def test_default_when_nothing_matches() -> None:
    chosen = strategy(({"metadata.tier": "silver"}, "smart"), default="cheap")
    assert pick_conditional(chosen, TARGETS, CONTEXT) == 3


def test_no_match_and_no_default_is_400() -> None:
    with pytest.raises(BadRequest) as info:
        pick_conditional(strategy(({"metadata.tier": "silver"}, "smart")), TARGETS, CONTEXT)
    assert info.value.status == 400
    assert info.value.message == "Query router did not resolve to any valid target"


def test_no_conditions_and_no_default_is_400() -> None:
    with pytest.raises(BadRequest, match="^Query router did not resolve to any valid target$"):
        pick_conditional(strategy(), TARGETS, CONTEXT)


@pytest.mark.parametrize("chosen", [
    strategy(({"metadata.tier": "gold"}, "missing-name")),
    strategy(({"metadata.tier": "silver"}, "fast"), default="missing-name"),
    # Checked even when evaluation would not reach it, so a broken config fails on every request.
    strategy(({"metadata.tier": "gold"}, "fast"), ({"metadata.tier": "x"}, "missing-name")),
])
def test_unknown_target_name_is_400(chosen: Strategy) -> None:
    with pytest.raises(BadRequest) as info:
        pick_conditional(chosen, TARGETS, CONTEXT)
    assert info.value.status == 400
    assert info.value.message == "Invalid target name found in the query router: missing-name"


def test_duplicate_names_pick_the_first() -> None:
    targets = (Target(provider="openai", name="x"), Target(provider="groq", name="x"))
    assert pick_conditional(strategy(default="x"), targets, CONTEXT) == 0


def test_bad_query_in_a_later_condition_is_400() -> None:
    chosen = strategy(({"metadata.tier": "gold"}, "fast"), ({"metadata.tier": {"$regex": "("}}, "smart"))
    with pytest.raises(BadRequest, match="^Invalid regex in the query router: "):
        pick_conditional(chosen, TARGETS, CONTEXT)


def test_empty_context_sections() -> None:
    context = {"metadata": {}, "params": {}, "url": {"pathname": "/v1/embeddings"}}
    chosen = strategy(({"params.model": {"$regex": "^gpt"}}, "fast"), ({"metadata.tier": {"$ne": "gold"}}, "smart"))
    assert pick_conditional(chosen, TARGETS, context) == 1
