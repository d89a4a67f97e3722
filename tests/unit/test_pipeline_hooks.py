"""The hooks stage: hook_results spliced into answers, shorthand expanded once per leaf."""

from __future__ import annotations

import json

import pytest

from app.call.answer import Answer
from app.call.context import RequestContext
from app.config.compiled import compile_config
from app.config.models import Target
from app.pipeline.guardrail_stage import LeafHooks, leaf_hooks, run_after


def ctx() -> RequestContext:
    context = RequestContext(method="POST", path="/v1/chat/completions", query="", headers={},
                             route="unified", endpoint="chatComplete", unified_format="openai")
    context.hook_results = {"before_request_hooks": [{"id": "h", "verdict": False}]}
    return context


@pytest.mark.parametrize("body, expected", [
    (b'{"id":"x"}', {"id": "x"}),
    (b"{}", {}),
    (b'  {"a": [1, {"b": 2}]}\n', {"a": [1, {"b": 2}]}),
])
def test_hook_results_are_spliced_into_json_objects(body: bytes, expected: dict) -> None:
    answer = Answer.whole(200, body, [("Content-Type", "application/json")])
    out = run_after(ctx(), LeafHooks(before=[{"id": "h"}], after=[]), answer, True, "openai", None)
    assert out.status == 246
    assert json.loads(out.first_chunk) == {**expected, "hook_results": ctx().hook_results}
    assert out.header("content-length") == str(len(out.first_chunk))


def test_non_object_answers_are_left_alone_but_flagged() -> None:
    answer = Answer.whole(200, b"[1,2]", [("Content-Type", "application/json")])
    out = run_after(ctx(), LeafHooks(before=[{"id": "h"}], after=[]), answer, True, "openai", None)
    assert (out.status, out.first_chunk) == (246, b"[1,2]")


def test_shorthand_is_expanded_once_per_leaf() -> None:
    leaf = compile_config(Target(provider="openai", input_guardrails=({"default.notNull": {}},)))
    first, second = leaf_hooks(leaf), leaf_hooks(leaf)
    assert first is second and first is not None and first.before
    assert leaf_hooks(Target(provider="openai")) is None
