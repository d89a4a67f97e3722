"""Static validation of hook lists for the config schema: every problem, with its path in the list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.guardrails.checks import lookup, qualified
from app.guardrails.params import Path, Problem, problems
from app.guardrails.shorthand import CHECK_KEYS, RESERVED, is_full_hook

HOOK_TYPES = ("guardrail", "mutator")
_HOOK_FLAGS = ("deny", "async", "sequential", "fail_on_error")


def validate_hooks(hooks: Sequence[Any]) -> list[Problem]:
    """Return (path, message) for each problem of a hook list (full hooks or shorthand); empty when fine.

    Paths are relative to the list: `(0, "checks", 1, "parameters", "rule")` for a full hook,
    `(0, "regexMatch", "rule")` for shorthand.
    """
    if isinstance(hooks, str | bytes) or not isinstance(hooks, Sequence):
        return [((), "must be a list of hooks")]
    found: list[Problem] = []
    for index, element in enumerate(hooks):
        if isinstance(element, str):
            found.append(((index,), f"guardrail '{element}' is not defined in this gateway "
                                    "(saved guardrails are not supported; write the checks inline)"))
        elif not isinstance(element, Mapping):
            found.append(((index,), "must be an object"))
        else:
            found += _hook_problems(element, (index,))
    return found


def _hook_problems(hook: Mapping[str, Any], at: Path) -> list[Problem]:
    """Return the problems of one hook: its own keys, then each check."""
    found = _reserved_problems(hook, at)
    if is_full_hook(hook):
        checks = hook["checks"]
        if not isinstance(checks, list):
            return [*found, ((*at, "checks"), "must be a list of checks")]
        for index, check in enumerate(checks):
            found += _full_check_problems(check, (*at, "checks", index))
        return found
    entries = [(key, value) for key, value in hook.items() if key not in RESERVED]
    if not entries:
        found.append((at, "names no checks"))
    for key, value in entries:
        found += _shorthand_check_problems(key, value, (*at, key))
    return found


def _reserved_problems(hook: Mapping[str, Any], at: Path) -> list[Problem]:
    found: list[Problem] = []
    if "id" in hook and not (isinstance(hook["id"], str) and hook["id"]):
        found.append(((*at, "id"), "must be a non-empty string"))
    if "type" in hook and hook["type"] not in HOOK_TYPES:
        found.append(((*at, "type"), "must be one of: " + ", ".join(HOOK_TYPES)))
    found += [((*at, name), "must be true or false") for name in _HOOK_FLAGS
              if name in hook and not isinstance(hook[name], bool)]
    if hook.get("type") == "mutator" and hook.get("async") is True:
        found.append(((*at, "async"), "a mutator hook cannot be async (its changes would come too late)"))
    return found


def _full_check_problems(check: Any, at: Path) -> list[Problem]:
    if not isinstance(check, Mapping):
        return [(at, "must be an object")]
    found: list[Problem] = []
    if "is_enabled" in check and not isinstance(check["is_enabled"], bool):
        found.append(((*at, "is_enabled"), "must be true or false"))
    check_id = check.get("id")
    if not isinstance(check_id, str) or not check_id:
        return [*found, ((*at, "id"), "is required (a check id such as default.regexMatch)")]
    return found + _params_problems(check_id, check.get("parameters"), (*at, "id"), (*at, "parameters"))


def _shorthand_check_problems(key: str, value: Any, at: Path) -> list[Problem]:
    if not isinstance(value, Mapping):
        return [(at, "must be an object of the check's parameters")]
    found: list[Problem] = []
    if "is_enabled" in value and not isinstance(value["is_enabled"], bool):
        found.append(((*at, "is_enabled"), "must be true or false"))
    check_id = value["id"] if isinstance(value.get("id"), str) and value.get("id") else key
    params = {name: item for name, item in value.items() if name not in CHECK_KEYS}
    return found + _params_problems(check_id, params, at, at)


def _params_problems(check_id: str, params: Any, id_at: Path, params_at: Path) -> list[Problem]:
    spec = lookup(check_id)
    if spec is None:
        hint = "" if qualified(check_id).startswith("default.") else " (Portico runs only the default.* checks)"
        return [(id_at, f"unknown check '{qualified(check_id)}'{hint}")]
    return [((*params_at, *path), message) for path, message in problems(spec, params)]
