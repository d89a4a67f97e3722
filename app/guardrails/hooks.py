"""Run one event's hooks over a request or an answer and build their hook_results entries (docs/guardrails.md).

Hooks run in order; each sees the bodies as changed by the mutators before it. Within a hook the checks
run in order too, inline: the pure checks cost microseconds, far less than a thread hand-off. Only
when a hook holds more than one I/O check (webhook, jwt) do those go to a small shared pool, where they
overlap; they then see the bodies as they were when the hook started, and the runner waits for each no
longer than its own timeout plus a small margin. `sequential: true` hooks and mutator hooks never use
the pool, so every check there sees the changes of the checks before it.

A check that raises, or whose parameters are bad, is errored: `error` holds a short message and it
fails its hook unless the check's parameters or the hook say `fail_on_error: false` (**deliberate
difference**: the reference lets errored checks pass unless asked otherwise, which fails open).
`async: true` hooks run and are reported but, as in Portkey where nothing waits for them, never
change the verdict, never deny and keep no changes; `split_async` lets the caller run them later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from app.guardrails.checks import lookup
from app.guardrails.context import HOOK_ENDPOINTS, CheckError, CheckInput, CheckOutcome, HookContext, HookRun
from app.guardrails.params import CheckSpec, fails_on_error, resolve
from app.guardrails.pool import io_pool

log = logging.getLogger(__name__)

# How much longer than an I/O check's own timeout the runner waits for it in the pool.
POOL_MARGIN_S = 0.5
_MAX_ERROR = 300


@dataclass
class _Bodies:
    """The request and answer as changed so far."""

    request: Mapping[str, Any] | None
    response: Mapping[str, Any] | None


def run_hooks(hooks: Sequence[Mapping[str, Any]], ctx: HookContext) -> HookRun:
    """Run `hooks` (full hooks, as expand_hooks returns them) for ctx.event; mutators change copies only."""
    bodies = _Bodies(ctx.request_json, ctx.response_json)
    results: list[dict[str, Any]] = []
    verdict, denied = True, False
    for hook in hooks or ():
        if not isinstance(hook, Mapping):
            hook = {"id": str(hook)}
        if _skipped(hook, ctx):
            results.append(skipped_result(hook))
            continue
        is_async = hook.get("async") is True
        # An async hook cannot hold the request up in Portkey: it never denies and its changes are not kept.
        own = _Bodies(bodies.request, bodies.response) if is_async else bodies
        result = _run_hook(hook, ctx, own)
        results.append(result)
        if not is_async:
            verdict = verdict and result["verdict"]
            denied = denied or result["deny"]
    return HookRun(results, verdict, denied, request_json=_changed(bodies.request, ctx.request_json),
                   response_json=_changed(bodies.response, ctx.response_json))


def _changed(body: Mapping[str, Any] | None, original: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return the body when mutators replaced it (as a dict), else None."""
    if body is None or body is original:
        return None
    return body if isinstance(body, dict) else dict(body)


def skipped_results(hooks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return hook_results entries marking every hook as skipped (routes where hooks do not apply)."""
    return [skipped_result(hook if isinstance(hook, Mapping) else {"id": str(hook)}) for hook in hooks]


def skipped_result(hook: Mapping[str, Any]) -> dict[str, Any]:
    """Return the entry of a hook that did not run: it passed, denied nothing, and ran no checks."""
    return {"id": _hook_id(hook), "verdict": True, "deny": False, "type": _hook_type(hook), "skipped": True,
            "execution_time": 0, "checks": []}


def split_async(hooks: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Split hooks into those the request waits for and the `async: true` ones it need not wait for."""
    sync = [hook for hook in hooks if not (isinstance(hook, Mapping) and hook.get("async") is True)]
    return sync, [hook for hook in hooks if isinstance(hook, Mapping) and hook.get("async") is True]


def _skipped(hook: Mapping[str, Any], ctx: HookContext) -> bool:
    """Tell whether a hook does not apply here (the caller skips whole routes; this guards the rest)."""
    if ctx.endpoint not in HOOK_ENDPOINTS:
        return True
    if ctx.event == "after" and (ctx.endpoint == "embed" or ctx.response_json is None):
        return True  # embeddings have no text answer; a streamed answer has no body to check
    return _hook_type(hook) == "mutator" and hook.get("async") is True


def _hook_id(hook: Mapping[str, Any]) -> str:
    value = hook.get("id")
    return value if isinstance(value, str) else str(value if value is not None else "")


def _hook_type(hook: Mapping[str, Any]) -> str:
    value = hook.get("type")
    return value if isinstance(value, str) else "guardrail"


def _run_hook(hook: Mapping[str, Any], ctx: HookContext, bodies: _Bodies) -> dict[str, Any]:
    """Run one hook's enabled checks and return its entry; `bodies` receives the changes."""
    started = time.perf_counter()
    raw_checks = hook.get("checks")
    checks = [check for check in raw_checks if not _disabled(check)] if isinstance(raw_checks, list) else []
    if not checks and isinstance(hook.get("guardrail_id"), str):
        entries, verdict = [_unresolved_entry(hook["guardrail_id"])], False
    else:
        entries = _run_checks(hook, checks, ctx, bodies)
        verdict = all(entry["verdict"] or ("error" in entry and not fails_on_error(_params(check), hook))
                      for entry, check in zip(entries, checks, strict=True))
    denies = not verdict and hook.get("deny") is True and hook.get("async") is not True
    return {"id": _hook_id(hook), "verdict": verdict, "deny": denies, "type": _hook_type(hook),
            "execution_time": _ms(started), "checks": entries}


def _run_checks(hook: Mapping[str, Any], checks: list[Any], ctx: HookContext,
                bodies: _Bodies) -> list[dict[str, Any]]:
    """Run checks in order, overlapping the I/O ones when there are several and the hook allows it."""
    pooled: dict[int, tuple[Future[Any], float, float]] = {}
    in_order = hook.get("sequential") is True or _hook_type(hook) == "mutator"
    io_indexes = [index for index, check in enumerate(checks) if _is_io(check)]
    if not in_order and len(io_indexes) > 1:
        snapshot = CheckInput(ctx, bodies.request, bodies.response)
        for index in io_indexes:
            future = io_pool().submit(_run_check, checks[index], snapshot)
            pooled[index] = (future, time.perf_counter(), _timeout_s(checks[index]))
    entries = []
    inp = CheckInput(ctx, bodies.request, bodies.response)
    for index, check in enumerate(checks):
        if index in pooled:
            entry, outcome = _collect(check, *pooled[index])
        else:
            entry, outcome = _run_check(check, inp)
        if outcome is not None and (outcome.request_json is not None or outcome.response_json is not None):
            bodies.request = outcome.request_json if outcome.request_json is not None else bodies.request
            bodies.response = outcome.response_json if outcome.response_json is not None else bodies.response
            inp = CheckInput(ctx, bodies.request, bodies.response)  # the next checks read the changed text
        entries.append(entry)
    return entries


def _collect(check: Any, future: Future[Any], submitted: float,
             timeout_s: float) -> tuple[dict[str, Any], CheckOutcome | None]:
    """Wait for a pooled check until its timeout (plus margin); past it, it is errored (cancelled if not started)."""
    remaining = max(0.0, submitted + timeout_s + POOL_MARGIN_S - time.perf_counter())
    try:
        result: tuple[dict[str, Any], CheckOutcome | None] = future.result(timeout=remaining)
        return result
    except FutureTimeout:
        future.cancel()
        return _entry(_check_id(check), False, {}, submitted, f"timed out after {timeout_s * 1000:g} ms"), None


def _run_check(check: Any, inp: CheckInput) -> tuple[dict[str, Any], CheckOutcome | None]:
    """Run one check; any failure becomes an errored entry with a short message, never a traceback."""
    started = time.perf_counter()
    check_id = _check_id(check)
    try:
        spec = _spec(check)
        params = resolve(spec, _params(check))
        outcome = _outcome(spec.run(inp, params))
    except CheckError as err:
        return _entry(check_id, False, {}, started, str(err)), None
    except Exception as err:
        log.warning("guardrail check %s raised", check_id, exc_info=True)
        return _entry(check_id, False, {}, started, f"the check failed: {type(err).__name__}"), None
    verdict = outcome.verdict
    if spec.invertible:
        verdict = verdict != params["not"]
        outcome.data["not"] = params["not"]
    return _entry(check_id, verdict, outcome.data, started), outcome


def _spec(check: Any) -> CheckSpec:
    if not isinstance(check, Mapping):
        raise CheckError("a check must be an object")
    spec = lookup(check.get("id"))
    if spec is None:
        raise CheckError(f"unknown check '{check.get('id')}'")
    return spec


def _outcome(result: Any) -> CheckOutcome:
    if isinstance(result, CheckOutcome):
        return result
    verdict, data = result
    return CheckOutcome(bool(verdict), dict(data))


def _entry(check_id: str, verdict: bool, data: dict[str, Any], started: float,
           error: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": check_id, "verdict": verdict, "data": data}
    if error is not None:
        entry["error"] = error[:_MAX_ERROR]
    entry["execution_time"] = _ms(started)
    return entry


def _unresolved_entry(guardrail_id: str) -> dict[str, Any]:
    """Return the errored entry of a guardrail id that names no guardrail here (Portico has no saved guardrails)."""
    return {"id": guardrail_id, "verdict": False, "data": {},
            "error": f"guardrail '{guardrail_id}' is not defined in this gateway", "execution_time": 0}


def _timeout_s(check: Mapping[str, Any]) -> float:
    """Return how long an I/O check may take by its own parameters."""
    spec, params = lookup(check.get("id")), _params(check)
    if spec is None or spec.timeout_s is None:
        return 0.0
    return spec.timeout_s(params if isinstance(params, Mapping) else {})


def _is_io(check: Any) -> bool:
    spec = lookup(check.get("id")) if isinstance(check, Mapping) else None
    return spec is not None and spec.io


def _disabled(check: Any) -> bool:
    return isinstance(check, Mapping) and check.get("is_enabled") is False


def _params(check: Any) -> Any:
    return check.get("parameters") if isinstance(check, Mapping) else None


def _check_id(check: Any) -> str:
    value = check.get("id") if isinstance(check, Mapping) else None
    return value if isinstance(value, str) else ""


def _ms(started: float) -> int:
    """Return the whole milliseconds since `started` (as the reference reports execution_time)."""
    return round((time.perf_counter() - started) * 1000)
