"""Check parameters: one spec per check, used by the config validation and again before every run.

Names follow docs/guardrails.md. A parameter set to null counts as absent. Unknown parameters are refused: a typo
such as `maxword` would otherwise leave a guardrail silently at its default. Every check also takes
`fail_on_error` (alias `failOnError`) and, where inverting makes sense, `not`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from app.guardrails.context import CheckError
from app.textmatch import PatternRefused, TextPattern, compile_pattern

if TYPE_CHECKING:
    from app.guardrails.context import CheckInput

Path = tuple[str | int, ...]
Problem = tuple[Path, str]
Validator = Callable[[Any], "str | None"]

MAX_RULE_LENGTH = 1000
MAX_WEBHOOK_TIMEOUT_MS = 60_000
ERROR_FLAGS = ("fail_on_error", "failOnError")
ROLES = ("user", "system", "assistant", "developer")
OPERATORS = ("any", "all", "none")
# Portkey's request type names (plugins' allowedRequestTypes); a typo here would allow or block nothing.
REQUEST_TYPES = frozenset({
    "complete", "chatComplete", "embed", "messages", "rerank", "moderate", "stream-complete",
    "stream-chatComplete", "stream-messages", "proxy", "imageGenerate", "createSpeech", "createTranscription",
    "createTranslation", "realtime", "uploadFile", "listFiles", "retrieveFile", "deleteFile",
    "retrieveFileContent", "createBatch", "retrieveBatch", "cancelBatch", "listBatches", "getBatchOutput",
    "listFinetunes", "createFinetune", "retrieveFinetune", "cancelFinetune", "createModelResponse",
    "getModelResponse", "deleteModelResponse", "listResponseInputItems",
})
# Headers that decide how the request is framed or routed belong to the HTTP client, not to a config.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "upgrade", "te",
                              "trailer", "keep-alive", "proxy-connection", "proxy-authorization"})
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_DURATION_UNITS = {
    "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800,
}


@dataclass(frozen=True)
class Param:
    """One parameter: its validator, whether it is required, and its default."""

    check: Validator
    required: bool = False
    default: Any = None


CheckFn = Callable[["CheckInput", Mapping[str, Any]], Any]


@dataclass(frozen=True)
class CheckSpec:
    """A built-in check: its function, parameters, and how the runner treats it."""

    name: str
    run: CheckFn
    params: Mapping[str, Param] = field(default_factory=dict)
    cross: Callable[[Mapping[str, Any]], list[Problem]] | None = None
    invertible: bool = True
    io: bool = False
    timeout_s: Callable[[Mapping[str, Any]], float] | None = None


def problems(spec: CheckSpec, raw: Any) -> list[Problem]:
    """Return every problem of `raw` as parameters of `spec`, with paths relative to the parameters."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        return [((), "parameters must be an object")]
    found: list[Problem] = []
    for name, value in raw.items():
        if value is None:
            continue
        message = _common_problem(spec, name, value) if _is_common(name) else _param_problem(spec, name, value)
        if message:
            found.append(((name,), message))
    found += [((name,), "is required") for name, param in spec.params.items()
              if param.required and raw.get(name) is None]
    if not found and spec.cross is not None:
        found += spec.cross(_with_defaults(spec, raw))
    return found


def resolve(spec: CheckSpec, raw: Any) -> dict[str, Any]:
    """Return the parameters with defaults filled in, or raise CheckError naming every problem."""
    found = problems(spec, raw)
    if found:
        raise CheckError("invalid parameters: " + "; ".join(describe(path, message) for path, message in found))
    return _with_defaults(spec, raw or {})


def describe(path: Path, message: str) -> str:
    """Return `path: message` for one problem."""
    return f"{'.'.join(str(part) for part in path)}: {message}" if path else message


def fails_on_error(params: Any, hook: Mapping[str, Any]) -> bool:
    """Tell whether an errored check fails its hook: yes unless the check or the hook says fail_on_error: false."""
    if isinstance(params, Mapping):
        for name in ERROR_FLAGS:
            if isinstance(params.get(name), bool):
                return bool(params[name])
    flag = hook.get("fail_on_error", hook.get("failOnError"))
    return flag if isinstance(flag, bool) else True


def _is_common(name: str) -> bool:
    return name == "not" or name in ERROR_FLAGS


def _common_problem(spec: CheckSpec, name: str, value: Any) -> str | None:
    if not isinstance(value, bool):
        return "must be true or false"
    if name == "not" and value and not spec.invertible:
        return f"is not supported by {spec.name}"
    return None


def _param_problem(spec: CheckSpec, name: str, value: Any) -> str | None:
    param = spec.params.get(name)
    if param is None:
        known = ", ".join(sorted(spec.params)) or "none"
        return f"is not a parameter of {spec.name} (known: {known})"
    return param.check(value)


def _with_defaults(spec: CheckSpec, raw: Mapping[str, Any]) -> dict[str, Any]:
    resolved = {name: raw[name] if raw.get(name) is not None else param.default
                for name, param in spec.params.items()}
    resolved["not"] = raw.get("not") is True
    return resolved


# --- validators: each returns a message, or None when the value is fine ---------------------------

def text(value: Any) -> str | None:
    """Require a non-empty string."""
    return None if isinstance(value, str) and value else "must be a non-empty string"


def any_text(value: Any) -> str | None:
    """Require a string, empty allowed."""
    return None if isinstance(value, str) else "must be a string"


def flag(value: Any) -> str | None:
    """Require a boolean."""
    return None if isinstance(value, bool) else "must be true or false"


def is_number(value: Any) -> bool:
    """Tell whether `value` is a finite JSON number (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    # Ints are exact; a huge one is still a number (and would overflow math.isfinite).
    return isinstance(value, int) or math.isfinite(value)


def count(value: Any) -> str | None:
    """Require a number of at least 0."""
    return None if is_number(value) and value >= 0 else "must be a number, 0 or more"


def texts(value: Any) -> str | None:
    """Require a non-empty list of non-empty strings."""
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return None
    return "must be a non-empty list of non-empty strings"


def one_of(*choices: str) -> Validator:
    """Require one of `choices`."""
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of: " + ", ".join(choices)
    return check


def rule(value: Any) -> str | None:
    """Require a regular expression of at most MAX_RULE_LENGTH characters that the linear-time engine runs."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_RULE_LENGTH:
        return f"must be at most {MAX_RULE_LENGTH} characters"
    try:
        compile_rule(value)
    except PatternRefused as err:
        return f"is not a valid regular expression: {err}"
    return None


def schema(value: Any) -> str | None:
    """Require a JSON schema object that is valid under its own dialect."""
    if not isinstance(value, Mapping):
        return "must be a JSON schema object"
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.exceptions.SchemaError as err:
        return f"is not a valid JSON schema: {err.message}"
    return None


def http_url(value: Any) -> str | None:
    """Require an absolute http(s) URL with a host."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if any(ch.isspace() for ch in value):
        return "must be an http or https URL without whitespace"
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError:
        return "must be a valid http or https URL"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL"
    return None


def header_map(value: Any) -> str | None:
    """Require header names and values as an object of strings (or that object as a JSON string)."""
    headers = header_dict(value)
    if headers is None:
        return "must be an object of header names to string values"
    if any(_unsafe_header(name) or _unsafe_header(text) for name, text in headers.items()):
        return "header names and values must not contain line breaks"
    framing = sorted(name for name in headers if name.lower() in _FRAMING_HEADERS)
    return f"must not set {', '.join(framing)}" if framing else None


def duration(value: Any) -> str | None:
    """Require seconds as a number, or text such as "3600", "30m", "1d"."""
    return None if parse_duration(value) is not None else 'must be seconds or a duration such as "30m", "1h", "1d"'


def request_types(value: Any) -> str | None:
    """Require Portkey request type names, as a list or a comma-separated string."""
    names = type_names(value)
    if names is None or not names:
        return "must be a non-empty list of request types"
    unknown = [name for name in names if name not in REQUEST_TYPES]
    return f"has unknown request types: {', '.join(unknown)}" if unknown else None


def webhook_timeout(value: Any) -> str | None:
    """Require a timeout in milliseconds, above 0 and at most MAX_WEBHOOK_TIMEOUT_MS."""
    if is_number(value) and 0 < value <= MAX_WEBHOOK_TIMEOUT_MS:
        return None
    return f"must be a number of milliseconds, above 0 and at most {MAX_WEBHOOK_TIMEOUT_MS}"


def model_rules(value: Any) -> str | None:
    """Require `{"defaults": [models], "metadata": {key: {value: [models]}}}` or just the metadata mapping."""
    if not isinstance(value, Mapping):
        return "must be an object"
    try:
        defaults, mapping = rules_parts(value)
    except ValueError as err:
        return str(err)
    return None if defaults or mapping else "must name at least one model"


# --- parsing shared with the checks ------------------------------------------------------------

def compile_rule(pattern: str) -> TextPattern:
    """Compile a rule in linear time (docs/security.md); JavaScript's (?<name>...) groups are read too."""
    return compile_pattern(pattern)


def parse_duration(value: Any) -> float | None:
    """Return a duration in seconds from a number or text such as "3600", "30m", "1d"; None when unreadable."""
    if is_number(value):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _DURATION.fullmatch(value.strip().lower())
    if not match or match.group(2) not in _DURATION_UNITS:
        return None
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def header_dict(value: Any) -> dict[str, str] | None:
    """Return headers from an object or a JSON string of one; None when it is neither."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, Mapping):
        return None
    if not all(isinstance(name, str) and name and isinstance(text, str) for name, text in value.items()):
        return None
    return dict(value)


def type_names(value: Any) -> list[str] | None:
    """Return request type names from a list or a comma-separated string; None when it is neither."""
    if isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return list(value)
    return None


def rules_parts(rules: Mapping[str, Any]) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """Split modelRules into default models and metadata key → value → models; raise ValueError on a bad shape."""
    nested = set(rules) <= {"defaults", "metadata"}
    defaults = rules.get("defaults", []) if nested else []
    mapping = rules.get("metadata", {}) if nested else rules
    if not _is_model_list(defaults):
        raise ValueError("defaults must be a list of model names")
    if not isinstance(mapping, Mapping):
        raise ValueError("metadata must be an object of metadata key → value → models")
    for key, values in mapping.items():
        if not isinstance(values, Mapping) or not all(_is_model_list(models) for models in values.values()):
            raise ValueError(f"rules for metadata key '{key}' must map each value to a list of model names")
    return list(defaults), {key: {str(val): list(models) for val, models in values.items()}
                            for key, values in mapping.items()}


def _is_model_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _unsafe_header(value: str) -> bool:
    return any(ch in value for ch in "\r\n\0")


def range_of(low: str, high: str) -> Callable[[Mapping[str, Any]], list[Problem]]:
    """Return a cross-check that `low` is not above `high`."""
    def check(params: Mapping[str, Any]) -> list[Problem]:
        if params[low] > params[high]:
            return [((high,), f"must not be less than {low} ({params[low]})")]
        return []
    return check
