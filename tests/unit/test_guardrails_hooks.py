"""Tests for hook lists: shorthand expansion, validation, the runner's verdicts, deny, errors and result shape."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from app.guardrails import HookContext, expand_hooks, run_hooks, skipped_results, split_async, validate_hooks
from app.guardrails import hooks as hooks_module

REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello world"}]}
HOOK_KEYS = {"id", "verdict", "deny", "type", "execution_time", "checks"}
CHECK_KEYS = {"id", "verdict", "data", "execution_time"}


def passing(**extra: Any) -> dict[str, Any]:
    return {"id": "default.wordCount", "parameters": {"minWords": 1}, **extra}


def failing(**extra: Any) -> dict[str, Any]:
    return {"id": "default.wordCount", "parameters": {"minWords": 50}, **extra}


def erroring(**params: Any) -> dict[str, Any]:
    return {"id": "default.regexMatch", "parameters": {"rule": "(", **params}}


def run(hooks: list[Any], event: str = "before", endpoint: str = "chatComplete", **ctx: Any) -> Any:
    response = ctx.pop("response", {"choices": [{"message": {"content": "hi"}}]} if event == "after" else None)
    return run_hooks(hooks, HookContext(event, endpoint, REQUEST, response, **ctx))


# --- shorthand -----------------------------------------------------------------------------------

def test_expand_shorthand_guardrails() -> None:
    before, after = expand_hooks(
        [{"id": "mine", "checks": [{"id": "regexMatch", "parameters": {"rule": "x"}}]}],
        None,
        [{"regexMatch": {"rule": "a", "not": True}, "portkey.pii": {"redact": True}, "deny": True, "async": False,
          "on_fail": {"feedback": {"value": -1}}, "sequential": True}],
        [{"id": "out", "type": "mutator", "anything": {"id": "regexReplace", "rule": "b", "is_enabled": False}},
         "pg-saved-123"],
    )
    assert before == [
        {"id": "mine", "type": "guardrail", "deny": False,
         "checks": [{"id": "default.regexMatch", "parameters": {"rule": "x"}}]},
        {"id": "input_guardrail_0", "type": "guardrail", "deny": True, "async": False, "sequential": True,
         "on_fail": {"feedback": {"value": -1}},
         "checks": [{"id": "default.regexMatch", "parameters": {"rule": "a", "not": True}},
                    {"id": "portkey.pii", "parameters": {"redact": True}}]},
    ]
    assert after == [
        {"id": "out", "type": "mutator", "deny": False,
         "checks": [{"id": "default.regexReplace", "parameters": {"rule": "b"}, "is_enabled": False}]},
        {"id": "pg-saved-123", "type": "guardrail", "deny": False, "checks": [], "guardrail_id": "pg-saved-123"},
    ]


def test_expand_is_positional_and_does_not_touch_the_config() -> None:
    guardrails = ({"wordCount": {"minWords": 1}},)
    first = expand_hooks(None, None, guardrails, guardrails)
    assert first == expand_hooks(None, None, guardrails, guardrails)
    assert first[0][0]["id"] == "input_guardrail_0" and first[1][0]["id"] == "output_guardrail_0"
    assert guardrails == ({"wordCount": {"minWords": 1}},)
    assert expand_hooks(None, None, None, None) == ([], [])


def test_a_saved_guardrail_id_fails_when_run() -> None:
    before, _ = expand_hooks(None, None, ["pg-abc"], None)
    result = run(before)
    assert result.verdict is False and result.denied is False
    assert result.results[0]["checks"][0]["error"] == "guardrail 'pg-abc' is not defined in this gateway"


# --- validation ----------------------------------------------------------------------------------

def test_validate_accepts_good_hooks() -> None:
    assert validate_hooks([]) == []
    assert validate_hooks([{"id": "h", "type": "guardrail", "deny": True, "checks": [passing()]},
                           {"regexMatch": {"rule": "x"}, "deny": False, "fail_on_error": False},
                           {"id": "m", "type": "mutator", "checks": [{"id": "addPrefix", "parameters": {"prefix": "P"},
                                                                      "is_enabled": True}]}]) == []


@pytest.mark.parametrize(("hooks", "expected"), [
    ("nope", [((), "must be a list of hooks")]),
    ([3], [((0,), "must be an object")]),
    (["pg-1"], [((0,), "guardrail 'pg-1' is not defined in this gateway (saved guardrails are not supported; "
                       "write the checks inline)")]),
    ([{"id": "h", "type": "check", "checks": []}], [((0, "type"), "must be one of: guardrail, mutator")]),
    ([{"id": "", "checks": []}], [((0, "id"), "must be a non-empty string")]),
    ([{"id": "h", "deny": "yes", "checks": []}], [((0, "deny"), "must be true or false")]),
    ([{"id": "h", "checks": {}}], [((0, "checks"), "must be a list of checks")]),
    ([{"id": "h", "checks": [3]}], [((0, "checks", 0), "must be an object")]),
    ([{"id": "h", "checks": [{"parameters": {}}]}],
     [((0, "checks", 0, "id"), "is required (a check id such as default.regexMatch)")]),
    ([{"id": "h", "checks": [{"id": "default.nope"}]}], [((0, "checks", 0, "id"), "unknown check 'default.nope'")]),
    ([{"id": "h", "checks": [{"id": "aporia.validateProject"}]}],
     [((0, "checks", 0, "id"), "unknown check 'aporia.validateProject' (Portico runs only the default.* checks)")]),
    ([{"id": "h", "checks": [{**passing(), "is_enabled": "no"}]}],
     [((0, "checks", 0, "is_enabled"), "must be true or false")]),
    ([{"id": "m", "type": "mutator", "async": True, "checks": []}],
     [((0, "async"), "a mutator hook cannot be async (its changes would come too late)")]),
    ([{"deny": True}], [((0,), "names no checks")]),
    ([{"wordCount": 5}], [((0, "wordCount"), "must be an object of the check's parameters")]),
    ([{"wordCount": {"minWords": 1, "is_enabled": 1}}], [((0, "wordCount", "is_enabled"), "must be true or false")]),
])
def test_validate_reports_problems_with_paths(hooks: Any, expected: list[Any]) -> None:
    assert validate_hooks(hooks) == expected


# --- verdicts, deny, errors --------------------------------------------------------------------

def test_verdict_and_deny() -> None:
    result = run([{"id": "a", "checks": [passing()], "deny": True}, {"id": "b", "checks": [passing(), failing()]}])
    assert (result.verdict, result.denied) == (False, False)
    assert [(r["verdict"], r["deny"]) for r in result.results] == [(True, False), (False, False)]
    result = run([{"id": "a", "checks": [failing()], "deny": True}])
    assert (result.verdict, result.denied) == (False, True)
    assert result.results[0]["deny"] is True
    assert run([{"id": "a", "checks": [passing()], "deny": True}]).denied is False


def test_errored_checks_fail_unless_fail_on_error_is_false() -> None:
    result = run([{"id": "a", "checks": [erroring()]}])
    entry = result.results[0]["checks"][0]
    assert result.verdict is False and entry["verdict"] is False
    assert entry["error"].startswith("invalid parameters: rule: is not a valid regular expression")
    assert "Traceback" not in entry["error"]
    assert run([{"id": "a", "fail_on_error": False, "checks": [erroring(), passing()]}]).verdict is True
    assert run([{"id": "a", "checks": [erroring(fail_on_error=False)]}]).verdict is True
    assert run([{"id": "a", "checks": [{"id": "nope", "parameters": {"fail_on_error": False}}]}]).verdict is True
    assert run([{"id": "a", "fail_on_error": False, "checks": [failing()]}]).verdict is False  # a plain fail


def test_fail_on_error_in_check_parameters() -> None:
    hooks: list[dict[str, Any]] = [{"id": "a", "checks": [{"id": "default.webhook", "parameters": {
        "webhookURL": "https://hooks.example/x", "fail_on_error": False}}]}]
    result = run(hooks)  # no HTTP client: the webhook errors, and says errors pass
    assert result.verdict is True and result.results[0]["checks"][0]["error"] == "no HTTP client"
    hooks[0]["checks"][0]["parameters"] = {"webhookURL": "https://hooks.example/x", "failOnError": False}
    assert run(hooks).verdict is True
    hooks[0]["fail_on_error"] = False
    hooks[0]["checks"][0]["parameters"] = {"webhookURL": "https://hooks.example/x", "fail_on_error": True}
    assert run(hooks).verdict is False  # the check's own setting wins over the hook's


def test_a_check_that_raises_is_an_errored_check(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.guardrails import checks as checks_module

    def boom(*args: Any) -> Any:
        raise ZeroDivisionError("secret detail")
    spec = checks_module.CHECKS["default.notNull"]
    monkeypatch.setitem(checks_module.CHECKS, "default.notNull", type(spec)(spec.name, boom))
    entry = run([{"id": "a", "checks": [{"id": "default.notNull"}]}]).results[0]["checks"][0]
    assert entry["error"] == "the check failed: ZeroDivisionError"


def test_disabled_checks_do_not_run() -> None:
    result = run([{"id": "a", "checks": [failing(is_enabled=False), passing()]}])
    assert result.verdict is True and [c["id"] for c in result.results[0]["checks"]] == ["default.wordCount"]
    assert run([{"id": "a", "checks": [failing(is_enabled=False)]}]).results[0]["checks"] == []


def test_async_hooks_never_deny_and_keep_no_changes() -> None:
    hooks = [{"id": "a", "async": True, "deny": True, "checks": [
        failing(), {"id": "default.regexReplace", "parameters": {"rule": "hello"}}]}]
    result = run(hooks)
    assert (result.verdict, result.denied, result.request_json) == (True, False, None)
    assert result.results[0]["verdict"] is False and result.results[0]["deny"] is False
    sync, later = split_async([*hooks, {"id": "b", "checks": []}])
    assert [h["id"] for h in sync] == ["b"] and [h["id"] for h in later] == ["a"]


# --- shape and skipping ----------------------------------------------------------------------------

def test_hook_results_shape() -> None:
    result = run([{"id": "a", "type": "guardrail", "checks": [passing(), erroring()]}])
    hook = result.results[0]
    assert set(hook) == HOOK_KEYS
    assert (hook["id"], hook["type"], hook["verdict"], hook["deny"]) == ("a", "guardrail", False, False)
    assert isinstance(hook["execution_time"], int)
    ok, errored = hook["checks"]
    assert set(ok) == CHECK_KEYS and set(errored) == CHECK_KEYS | {"error"}
    assert ok["id"] == "default.wordCount" and ok["verdict"] is True and isinstance(ok["data"], dict)
    assert isinstance(ok["execution_time"], int) and isinstance(errored["error"], str)


def test_skipped_results_shape() -> None:
    hooks: list[dict[str, Any]] = [{"id": "a", "type": "guardrail", "checks": [passing()]},
                                   {"id": "m", "type": "mutator", "checks": []}]
    assert skipped_results(hooks) == [
        {"id": "a", "verdict": True, "deny": False, "type": "guardrail", "skipped": True, "execution_time": 0,
         "checks": []},
        {"id": "m", "verdict": True, "deny": False, "type": "mutator", "skipped": True, "execution_time": 0,
         "checks": []},
    ]


@pytest.mark.parametrize(("event", "endpoint", "extra"), [
    ("before", "proxy", {}),
    ("before", "imageGenerate", {}),
    ("after", "embed", {}),
    ("after", "chatComplete", {"response": None}),
])
def test_runner_skips_where_hooks_do_not_apply(event: str, endpoint: str, extra: dict[str, Any]) -> None:
    hooks = [{"id": "a", "checks": [failing()], "deny": True}]
    result = run(hooks, event, endpoint, **extra)
    assert (result.verdict, result.denied) == (True, False)
    assert result.results == skipped_results(hooks)


def test_runner_tolerates_malformed_hooks() -> None:
    result = run([{"id": "a", "checks": "x"}, "raw", {"id": "b", "checks": [None, {"id": 5}]}])
    assert [r["verdict"] for r in result.results] == [True, True, False]
    assert [c["error"] for c in result.results[2]["checks"]] == ["a check must be an object", "unknown check '5'"]


# --- I/O checks in the pool --------------------------------------------------------------------------

class BarrierHTTP:
    """Answers webhooks only once `parties` calls are in flight together (proves they overlap)."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=2)
        self.bodies: list[Mapping[str, Any]] = []

    def post_json(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
                  timeout_s: float) -> tuple[int, Any]:
        self.bodies.append(body)
        self.barrier.wait()
        return 200, {"verdict": True}

    def get_json(self, url: str, timeout_s: float) -> tuple[int, Any]:
        raise AssertionError("unexpected GET")


def webhook(url: str = "https://hooks.example/x", **params: Any) -> dict[str, Any]:
    return {"id": "default.webhook", "parameters": {"webhookURL": url, **params}}


def test_several_io_checks_of_a_hook_overlap() -> None:
    http = BarrierHTTP(2)
    result = run([{"id": "a", "checks": [webhook(), passing(), webhook()]}], http=http)
    assert result.verdict is True, result.results
    assert [c["id"] for c in result.results[0]["checks"]] == ["default.webhook", "default.wordCount",
                                                              "default.webhook"]


def test_a_hung_io_check_is_bounded_by_its_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    class HangingHTTP(BarrierHTTP):
        def post_json(self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
                      timeout_s: float) -> tuple[int, Any]:
            release.wait(5)  # a client that does not enforce timeout_s
            return 200, {"verdict": True}

    monkeypatch.setattr(hooks_module, "POOL_MARGIN_S", 0.05)
    started = time.perf_counter()
    try:
        result = run([{"id": "a", "checks": [webhook(timeout=50), webhook(timeout=50)]}], http=HangingHTTP(1))
    finally:
        release.set()
    assert time.perf_counter() - started < 1.0
    assert result.verdict is False
    assert [c["error"] for c in result.results[0]["checks"]] == ["timed out after 50 ms"] * 2


def test_sequential_hooks_run_in_order_and_see_changes() -> None:
    http = BarrierHTTP(1)
    hooks = [{"id": "a", "sequential": True, "checks": [
        {"id": "default.addPrefix", "parameters": {"prefix": "P: "}}, webhook(), webhook()]}]
    result = run(hooks, http=http)
    assert result.verdict is True
    assert [b["request"]["text"] for b in http.bodies] == ["P: hello world"] * 2
