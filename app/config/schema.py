"""Validate an `x-portkey-config` dict into the frozen models of `app.config.models` (docs/configs.md, Validation).

A config is attacker-controlled, so the shape of its `targets` tree is bounded by an
iterative walk before marshmallow (which recurses) ever sees it. marshmallow then checks
every field of every node and builds the models in its post_load hooks; a second pass over
the raw tree checks the rules that span fields or nodes. Every problem found is reported at
once, each as "path: <comma-joined path>, message: <text>".
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, missing, post_load, validate

from app.config.models import (
    MODES,
    PROVIDER_OPTION_FIELDS,
    CachePolicy,
    Condition,
    RetryPolicy,
    Strategy,
    Target,
)
from app.errors import BadRequest, InvalidConfig
from app.guardrails import validate_hooks
from app.providers.registry import PROVIDERS, URL_OPTIONS, did_you_mean, odd_character, option_problem

MAX_TIMEOUT_MS = 24 * 3600 * 1000
MAX_AGE_S = 365 * 24 * 3600
MAX_ERRORS = 50
MAX_HEADLINE = 240  # characters of the first problem the message repeats

MAX_DEPTH = 10
MAX_TARGETS = 100
MAX_RETRY_ATTEMPTS = 5

INVALID_CONFIG = "Invalid config passed"
NOT_JSON = "Invalid config passed. You need to pass a valid json"
LEGACY_CONFIG = "This version of config is not supported in this route. Please migrate to the latest version"
MODE_MESSAGE = f"Invalid 'mode' value. Must be one of: {', '.join(MODES)}"
MODE_ERROR = f"Must be one of: {', '.join(MODES)}."
VIRTUAL_KEY_ERROR = "virtual keys are not supported; use a Model Catalog @name as provider"
ALL_ZERO_WEIGHTS = "all targets of a loadbalance have weight 0; at least one must be above 0"
STRATEGY_WITHOUT_TARGETS = "a node with a strategy needs a non-empty 'targets' list"
CONDITIONAL_WITHOUT_CONDITIONS = "conditional mode needs a non-empty 'conditions' list"

Path = tuple[str | int, ...]


# ---------------------------------------------------------------------------- fields


class StrictInteger(fields.Field[int]):
    """An int that is really an int: no bools, no floats, no numeric strings."""

    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> int:
        # bool is a subclass of int, so `true` would otherwise pass as 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class StrictBoolean(fields.Field[bool]):
    """A JSON true or false; marshmallow's Boolean would also take "yes", 1 and the like."""

    default_error_messages = {"invalid": "Not a valid boolean."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictNumber(fields.Field[float]):
    """A finite JSON number as a float: no bools, no strings, no NaN or infinity."""

    default_error_messages = {"invalid": "Not a valid number.", "finite": "Must be a finite number."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            raise self.make_error("finite") from None
        if not math.isfinite(number):  # Python's json accepts NaN and Infinity
            raise self.make_error("finite")
        return number


class Mode(fields.Field[str]):
    """A strategy mode; anything else (null and non-strings too) gets the one mode message."""

    default_error_messages = {"null": MODE_ERROR, "invalid": MODE_ERROR}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> str:
        if not isinstance(value, str) or value not in MODES:
            raise self.make_error("invalid")
        return value


class Guardrail(fields.Field[Any]):
    """One guardrail entry: a hook-shaped object or a guardrail id string."""

    default_error_messages = {"invalid": "Must be an object or a string."}

    def _deserialize(self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any) -> Any:
        if isinstance(value, Mapping):
            return dict(value)
        if isinstance(value, str):
            return value
        raise self.make_error("invalid")


class Refused(fields.Field[Any]):
    """A key that is known but never accepted, whatever its value."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def deserialize(self, value: Any, attr: str | None = None, data: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> Any:
        """Refuse any given value, null included (hence deserialize, not _deserialize)."""
        if value is missing:
            return missing
        raise ValidationError(self.message)


class HeaderText(validate.Validator):
    """Refuse a string that becomes an upstream header or URL part but could not be sent as one."""

    def __init__(self, in_header: bool = True) -> None:
        self.in_header = in_header

    def __call__(self, value: str) -> str:
        problem = odd_character(value, self.in_header)
        if problem is not None:
            raise ValidationError(f"Must be plain text: it {problem}.")
        return value


HEADER_TEXT = HeaderText()


class KnownProvider(validate.Validator):
    """Refuse a provider slug the gateway does not know; a Model Catalog `@name` is checked per call."""

    def __call__(self, value: str) -> str:
        if value and not value.startswith("@") and value.strip().lower() not in PROVIDERS:
            raise ValidationError(f"Unknown provider {value[:64]!r}{did_you_mean(value)}: use a provider slug "
                                  "(openai, anthropic, cohere, ...) or a Model Catalog @name.")
        return value


def _int_in(low: int, high: int | None = None, error: str | None = None) -> StrictInteger:
    """Return a strict int field limited to low..high."""
    message = error or (f"Must be between {low} and {high}." if high is not None else f"Must be at least {low}.")
    return StrictInteger(validate=validate.Range(min=low, max=high, error=message))


def _status_codes() -> fields.List:
    """Return a list-of-HTTP-status-codes field."""
    return fields.List(_int_in(100, 599))


def _tuples(data: dict[str, Any], *names: str) -> dict[str, Any]:
    """Turn the named list values of data into tuples, in place, and return data."""
    for name in names:
        if name in data:
            data[name] = tuple(data[name])
    return data


# ---------------------------------------------------------------------------- schemas


class _StrictSchema(Schema):
    """Base of every config schema: unknown keys are errors."""

    class Meta:
        unknown = RAISE

    error_messages = {"unknown": "Unknown field.", "type": "Must be an object."}


class RetrySchema(_StrictSchema):
    """`retry`: how often and on which statuses to try again."""

    attempts = _int_in(0, MAX_RETRY_ATTEMPTS, error=f"Must be between 0 and {MAX_RETRY_ATTEMPTS} "
                                                    f"(the cap is {MAX_RETRY_ATTEMPTS}).")
    on_status_codes = _status_codes()
    use_retry_after_header = StrictBoolean()

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> RetryPolicy:
        return RetryPolicy(**_tuples(data, "on_status_codes"))


class CacheSchema(_StrictSchema):
    """`cache`: response cache mode and lifetime in seconds."""

    mode = fields.String(required=True, validate=validate.OneOf(("simple", "semantic"),
                                                                error="Must be one of: simple, semantic."))
    max_age = _int_in(0, MAX_AGE_S)

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> CachePolicy:
        return CachePolicy(**data)


class ConditionSchema(_StrictSchema):
    """One conditional-routing rule."""

    query = fields.Dict(required=True)
    then = fields.String(required=True)

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Condition:
        return Condition(**data)


class StrategySchema(_StrictSchema):
    """`strategy`: how a node picks among its targets."""

    mode = Mode(required=True)
    on_status_codes = _status_codes()
    conditions = fields.List(fields.Nested(ConditionSchema))
    default = fields.String()

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Strategy:
        return Strategy(**_tuples(data, "on_status_codes", "conditions"))


_TUPLE_FIELDS = ("forward_headers", "before_request_hooks", "after_request_hooks", "input_guardrails",
                 "output_guardrails", "targets")


class TargetSchema(_StrictSchema):
    """A config node (the root config too): a provider leaf, or a strategy over nested targets."""

    class Meta:
        unknown = RAISE
        # The provider fields ride along to the provider as Target.provider_options.
        include = {name: fields.String(validate=HEADER_TEXT) for name in PROVIDER_OPTION_FIELDS}

    provider = fields.String(validate=[validate.Length(min=1, error="Must not be empty."), KnownProvider()])
    api_key = fields.String(validate=HEADER_TEXT)
    virtual_key = Refused(VIRTUAL_KEY_ERROR)
    custom_host = fields.String(validate=HeaderText(in_header=False))  # the host policy reads the rest
    name = fields.String()
    weight = StrictNumber(validate=validate.Range(min=0, error="Must be at least 0."))
    override_params = fields.Dict()
    retry = fields.Nested(RetrySchema)
    cache = fields.Nested(CacheSchema)
    request_timeout = _int_in(1, MAX_TIMEOUT_MS,
                              error=f"Must be a whole number of milliseconds from 1 to {MAX_TIMEOUT_MS}.")
    forward_headers = fields.List(fields.String(validate=HEADER_TEXT))
    strict_open_ai_compliance = StrictBoolean()
    before_request_hooks = fields.List(fields.Dict())
    after_request_hooks = fields.List(fields.Dict())
    input_guardrails = fields.List(Guardrail())
    output_guardrails = fields.List(Guardrail())
    strategy = fields.Nested(StrategySchema)
    # Depth and size were bounded before loading, so this recursion is bounded too.
    targets = fields.List(fields.Nested(lambda: TargetSchema()),
                          validate=validate.Length(min=1, error="Must list at least one target."))

    @post_load
    def _build(self, data: dict[str, Any], **kwargs: Any) -> Target:
        options = {name: data.pop(name) for name in PROVIDER_OPTION_FIELDS if name in data}
        if "targets" in data and "strategy" not in data:
            data["strategy"] = Strategy()  # targets without a strategy: mode single, spelt out for the router
        return Target(provider_options=options, **_tuples(data, *_TUPLE_FIELDS))


_ROOT_SCHEMA = TargetSchema()


# ---------------------------------------------------------------------------- public API


def parse_config(data: object) -> Target:
    """Validate a config dict (already JSON-decoded) into the frozen root Target; raise InvalidConfig/BadRequest."""
    if not isinstance(data, Mapping):
        raise BadRequest(NOT_JSON)
    if "options" in data:
        raise BadRequest(LEGACY_CONFIG)
    guard_errors = _shape_errors(data)
    if guard_errors:
        # Stop here: the rest of a too-large tree is not worth (or safe) walking.
        raise InvalidConfig(_headline(guard_errors), errors=_render(guard_errors))
    errors = list(_structure_errors(data))
    errors.extend(_option_errors(data))
    errors.extend(_hook_errors(data, ()))
    try:
        target = _ROOT_SCHEMA.load(data)
    except ValidationError as exc:
        errors.extend(_flatten(exc.messages, ()))
    if errors:
        raise _invalid(errors)
    return target


_HOOK_FIELDS = ("before_request_hooks", "after_request_hooks", "input_guardrails", "output_guardrails")


def _hook_errors(node: Mapping[str, Any], path: Path) -> Iterator[tuple[Path, str]]:
    """Yield guardrail problems (unknown checks, bad parameters) of every node, with their full paths."""
    for name in _HOOK_FIELDS:
        hooks = node.get(name)
        if isinstance(hooks, list):
            for sub_path, message in validate_hooks(hooks):
                yield (*path, name, *sub_path), message
    targets = node.get("targets")
    if isinstance(targets, list):
        for index, child in enumerate(targets):
            if isinstance(child, Mapping):
                yield from _hook_errors(child, (*path, "targets", index))


def _invalid(errors: list[tuple[Path, str]]) -> InvalidConfig:
    """Return the InvalidConfig for errors, with the mode message when a mode is among them."""
    bad_mode = any(message == MODE_ERROR and path[-2:] == ("strategy", "mode") for path, message in errors)
    return InvalidConfig(MODE_MESSAGE if bad_mode else _headline(errors), errors=_render(errors))


def _headline(errors: list[tuple[Path, str]]) -> str:
    """Return `Invalid config passed: <path>: <first problem>`: SDKs show the message only, not `errors`."""
    path, message = min(set(errors), key=lambda item: (_path_key(item[0]), item[1]))
    where = f"{','.join(str(part) for part in path)}: " if path else ""
    more = f" (and {len(set(errors)) - 1} more, listed in errors)" if len(set(errors)) > 1 else ""
    first = f"{where}{message}"
    return f"{INVALID_CONFIG}: {first[:MAX_HEADLINE]}{'...' if len(first) > MAX_HEADLINE else ''}{more}"


def _render(errors: list[tuple[Path, str]]) -> list[str]:
    """Return errors as sorted, de-duplicated "path: ..., message: ..." strings."""
    unique = {(path, message) for path, message in errors}
    ordered = sorted(unique, key=lambda item: (_path_key(item[0]), item[1]))
    rendered = [f"path: {','.join(str(part) for part in path)}, message: {message}" for path, message in ordered]
    if len(rendered) > MAX_ERRORS:  # a hostile config must not buy a huge error body
        rendered = rendered[:MAX_ERRORS] + [f"path: (more), message: {len(rendered) - MAX_ERRORS} more problems"]
    return rendered


def _path_key(path: Path) -> tuple[tuple[int, int, str], ...]:
    """Return a sort key for a path that orders list indexes numerically."""
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in path)


def _flatten(messages: Any, path: Path) -> Iterator[tuple[Path, str]]:
    """Yield (path, message) for each leaf of a marshmallow error tree."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            # "_schema" holds a node's own errors (e.g. wrong type): they belong to the node's path.
            yield from _flatten(value, path if key == "_schema" else (*path, key))
    elif isinstance(messages, list | tuple):
        for message in messages:
            yield from _flatten(message, path)
    else:
        yield path, str(messages)


# ---------------------------------------------------------------------------- tree rules


def _nodes(data: Mapping[str, Any]) -> Iterator[tuple[Path, Mapping[str, Any]]]:
    """Yield (path, node) for the root and every object in a `targets` list, breadth first."""
    queue: deque[tuple[Path, Mapping[str, Any]]] = deque([((), data)])
    while queue:
        path, node = queue.popleft()
        yield path, node
        children = node.get("targets")
        if isinstance(children, list):
            queue.extend(((*path, "targets", index), child) for index, child in enumerate(children)
                         if isinstance(child, Mapping))


def _shape_errors(data: Mapping[str, Any]) -> list[tuple[Path, str]]:
    """Return errors for a tree nested deeper than MAX_DEPTH or with more than MAX_TARGETS targets."""
    total = 0
    for path, node in _nodes(data):
        children = node.get("targets")
        if not isinstance(children, list) or not children:
            continue
        if len(path) // 2 >= MAX_DEPTH:  # each level adds ("targets", index) to the path
            return [((*path, "targets"), f"Targets nest deeper than {MAX_DEPTH} levels; "
                                         f"at most {MAX_DEPTH} are allowed.")]
        total += len(children)
        if total > MAX_TARGETS:
            return [(("targets",), f"More than {MAX_TARGETS} targets in total; at most {MAX_TARGETS} are allowed.")]
    return []


def _structure_errors(data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Yield errors of the rules that span fields or nodes (strategy vs targets, weights, conditions)."""
    for path, node in _nodes(data):
        strategy = node.get("strategy")
        children = node.get("targets")
        if "strategy" in node and "targets" not in node:
            yield (*path, "strategy"), STRATEGY_WITHOUT_TARGETS
        if not isinstance(strategy, Mapping):
            continue
        mode = strategy.get("mode")
        # A missing or empty list; other wrong values are the schema's to report.
        if mode == "conditional" and strategy.get("conditions", []) == []:
            yield (*path, "strategy", "conditions"), CONDITIONAL_WITHOUT_CONDITIONS
        if mode == "loadbalance" and isinstance(children, list) and children and all(map(_zero_weight, children)):
            yield (*path, "targets"), ALL_ZERO_WEIGHTS


def _zero_weight(child: Any) -> bool:
    """Return True when a raw target's weight is given and is exactly 0."""
    weight = child.get("weight") if isinstance(child, Mapping) else None
    return not isinstance(weight, bool) and isinstance(weight, int | float) and weight == 0


def _option_errors(data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Yield errors of provider fields that go into an upstream URL but are not of their form (docs/security.md)."""
    for path, node in _nodes(data):
        for name in URL_OPTIONS:
            value = node.get(name)
            problem = option_problem(name, value) if isinstance(value, str) else None  # non-strings: the schema's
            if problem:
                yield (*path, name), problem[0].upper() + problem[1:]
