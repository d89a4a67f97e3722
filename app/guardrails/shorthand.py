"""Turn a target's four hook lists into full before/after hooks (docs/guardrails.md).

`input_guardrails` / `output_guardrails` use Portkey's shorthand: each element is an object whose
reserved keys (`deny on_fail on_success async id type sequential`, plus `fail_on_error` and
`guardrail_version_id`) describe the hook and whose other keys are checks, valued by their parameters:

    {"regexMatch": {"rule": "\\d{16}", "not": true}, "deny": true}
    → {"id": "input_guardrail_0", "type": "guardrail", "deny": true,
       "checks": [{"id": "default.regexMatch", "parameters": {"rule": "\\d{16}", "not": true}}]}

A check id without a dot gets `default.`; a check's parameters may carry its own `id` and `is_enabled`.
Shorthand hooks follow the full hooks of the same event, as in Portkey. Ids are positional, not random,
so the same config always gives the same hook_results.

A string element is a saved-guardrail id in Portkey. Portico has no saved guardrails, so it becomes a
hook with no checks and `guardrail_id` set: validate_hooks refuses it, and if it reaches run_hooks it
fails with an error (a guardrail that cannot be found must not pass silently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.guardrails.checks import qualified

RESERVED = ("deny", "on_fail", "on_success", "async", "id", "type", "sequential", "fail_on_error",
            "guardrail_version_id")
# Keys of a shorthand check's value that describe the check rather than parameterise it.
CHECK_KEYS = ("id", "is_enabled")


def expand_hooks(before: Sequence[Any] | None, after: Sequence[Any] | None,
                 input_guardrails: Sequence[Any] | None,
                 output_guardrails: Sequence[Any] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (before-request hooks, after-request hooks) as full hooks, shorthand expanded."""
    before_hooks = [full_hook(hook, f"before_request_hook_{index}") for index, hook in enumerate(before or ())]
    before_hooks += [shorthand_hook(element, f"input_guardrail_{index}")
                     for index, element in enumerate(input_guardrails or ())]
    after_hooks = [full_hook(hook, f"after_request_hook_{index}") for index, hook in enumerate(after or ())]
    after_hooks += [shorthand_hook(element, f"output_guardrail_{index}")
                    for index, element in enumerate(output_guardrails or ())]
    return before_hooks, after_hooks


def is_full_hook(element: Any) -> bool:
    """Tell whether a hook-list element is a full hook (it has `checks`) rather than shorthand."""
    return isinstance(element, Mapping) and "checks" in element


def full_hook(hook: Any, default_id: str) -> dict[str, Any]:
    """Return a copy of a full hook with its defaults filled in and its check ids qualified."""
    if isinstance(hook, str):
        return saved_guardrail_hook(hook)
    if not is_full_hook(hook):
        return shorthand_hook(hook, default_id)
    expanded = {**hook, "id": hook.get("id") or default_id, "type": hook.get("type") or "guardrail",
                "deny": hook.get("deny") is True}
    checks = hook.get("checks")
    expanded["checks"] = [_full_check(check) for check in checks] if isinstance(checks, list) else []
    return expanded


def shorthand_hook(element: Any, default_id: str) -> dict[str, Any]:
    """Return the full hook of one shorthand element."""
    if isinstance(element, str):
        return saved_guardrail_hook(element)
    if not isinstance(element, Mapping):
        return {"id": default_id, "type": "guardrail", "deny": False, "checks": [element]}
    hook: dict[str, Any] = {key: element[key] for key in RESERVED if key in element}
    hook["id"] = hook.get("id") or default_id
    hook["type"] = hook.get("type") or "guardrail"
    hook["deny"] = hook.get("deny") is True
    hook["checks"] = [shorthand_check(key, value) for key, value in element.items() if key not in RESERVED]
    return hook


def shorthand_check(key: str, value: Any) -> dict[str, Any]:
    """Return the full check of one shorthand entry: key is the check id, value its parameters."""
    if not isinstance(value, Mapping):
        return {"id": qualified(key), "parameters": value}  # refused with a message when it runs
    own_id = value.get("id")
    check_id = own_id if isinstance(own_id, str) and own_id else key
    check: dict[str, Any] = {"id": qualified(check_id),
                             "parameters": {name: item for name, item in value.items() if name not in CHECK_KEYS}}
    if "is_enabled" in value:
        check["is_enabled"] = value["is_enabled"]
    return check


def saved_guardrail_hook(guardrail_id: str) -> dict[str, Any]:
    """Return the hook standing for a saved-guardrail id, which this gateway cannot resolve."""
    return {"id": guardrail_id, "type": "guardrail", "deny": False, "checks": [], "guardrail_id": guardrail_id}


def _full_check(check: Any) -> Any:
    if isinstance(check, Mapping) and isinstance(check.get("id"), str) and check["id"]:
        return {**check, "id": qualified(check["id"])}
    return check
