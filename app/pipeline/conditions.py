"""The conditional router's query language (docs/configs.md, Routing).

A query is a JSON object. Its keys are `$and` / `$or` (lists of queries) or dotted paths
into the context (`metadata.tier`, `params.messages.0.role`); a path's value is either a
plain value (meaning `$eq`) or an object of operators, all of which must hold. Several
keys in one object must all hold.

Queries are compiled into predicates first, so every structural error (unknown operator,
bad regex, `$in` without a list, too deep) is raised whatever the request data is, not
only when evaluation happens to reach the faulty part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.config.models import Strategy, Target
from app.errors import BadRequest
from app.textmatch import PatternRefused, compile_pattern

MAX_DEPTH = 32  # nested $and/$or levels; keeps hostile queries from exhausting the stack
MAX_REGEX_LENGTH = 1000
# $regex runs in linear time (app.textmatch, docs/security.md); bounding the subject bounds one search.
MAX_REGEX_SUBJECT_LENGTH = 100_000

LOGICAL_OPERATORS = ("$and", "$or")
FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$regex")

Predicate = Callable[[Mapping[str, Any]], bool]


class _Missing:
    """The value of a path that does not exist in the context."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def matches(query: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    """Return True when `context` satisfies `query`."""
    return compile_query(query)(context)


def pick_conditional(strategy: Strategy, targets: Sequence[Target], context: Mapping[str, Any]) -> int:
    """Return the index of the target the conditional strategy picks for `context`."""
    by_name = _index_by_name(targets)
    # Check every condition and name up front so a broken config fails on every request, not by chance.
    compiled = [(compile_query(condition.query), condition.then) for condition in strategy.conditions]
    for name in [then for _, then in compiled] + ([strategy.default] if strategy.default is not None else []):
        if name not in by_name:
            raise BadRequest(f"Invalid target name found in the query router: {name}")
    for predicate, then in compiled:
        if predicate(context):
            return by_name[then]
    if strategy.default is not None:
        return by_name[strategy.default]
    raise BadRequest("Query router did not resolve to any valid target")


def _index_by_name(targets: Sequence[Target]) -> dict[str, int]:
    """Map each target name to its index; the first of duplicate names wins."""
    by_name: dict[str, int] = {}
    for index, target in enumerate(targets):
        if target.name is not None:
            by_name.setdefault(target.name, index)
    return by_name


# ---------------------------------------------------------------------------------------
# Compilation


def compile_query(query: Any, depth: int = 0) -> Predicate:
    """Return a predicate over a context for `query`; raise BadRequest when it is malformed."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"Query router conditions are nested deeper than {MAX_DEPTH} levels")
    if not isinstance(query, Mapping):
        raise BadRequest("Each query in the query router must be an object")
    parts = [_compile_key(key, operand, depth) for key, operand in query.items()]
    return lambda context: all(part(context) for part in parts)


def _compile_key(key: Any, operand: Any, depth: int) -> Predicate:
    """Compile one key of a query object: a logical operator or a path condition."""
    if not isinstance(key, str):
        raise BadRequest("Query router keys must be strings")
    if key.startswith("$"):
        return _compile_logical(key, operand, depth)
    test = _compile_field_test(key, operand)
    path = key.split(".")
    return lambda context: test(resolve_path(context, path))


def _compile_logical(operator: str, operand: Any, depth: int) -> Predicate:
    """Compile `$and` / `$or` over a list of sub-queries."""
    if operator in FIELD_OPERATORS:
        raise BadRequest(f"Operator {operator} needs a field in the query router")
    if operator not in LOGICAL_OPERATORS:
        raise BadRequest(f"Unsupported operator used in the query router: {operator}")
    if not isinstance(operand, list):
        raise BadRequest(f"Operator {operator} needs a list of queries in the query router")
    parts = [compile_query(sub, depth + 1) for sub in operand]
    if operator == "$and":
        return lambda context: all(part(context) for part in parts)
    return lambda context: any(part(context) for part in parts)


def _compile_field_test(path: str, operand: Any) -> Callable[[Any], bool]:
    """Compile what a path's value must satisfy: a plain value, or an object of operators."""
    if not _is_operator_object(operand):
        return lambda value: _strict_equal(value, operand)
    tests = [_compile_operator(op, arg, path) for op, arg in operand.items()]
    return lambda value: all(test(value) for test in tests)


def _is_operator_object(operand: Any) -> bool:
    """Return True when `operand` is an object of operators rather than a plain value to compare."""
    return isinstance(operand, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in operand)


def _compile_operator(operator: Any, arg: Any, path: str) -> Callable[[Any], bool]:
    """Compile one field operator with its argument."""
    if operator in LOGICAL_OPERATORS:
        raise BadRequest(f"Operator {operator} cannot be applied to a field in the query router: {path}")
    if operator not in FIELD_OPERATORS:
        # Also catches a plain key mixed into an operator object, which would otherwise be ignored.
        raise BadRequest(f"Unsupported operator used in the query router: {operator}")
    if operator == "$eq":
        return lambda value: value is not MISSING and _strict_equal(value, arg)
    if operator == "$ne":
        return lambda value: value is MISSING or not _strict_equal(value, arg)
    if operator in ("$in", "$nin"):
        return _compile_membership(operator, arg)
    if operator == "$regex":
        return _compile_regex(arg, path)
    return _compile_ordering(operator, arg)


def _compile_membership(operator: str, arg: Any) -> Callable[[Any], bool]:
    """Compile `$in` / `$nin`; the operand must be a list."""
    if not isinstance(arg, list):
        raise BadRequest(f"Operator {operator} needs a list in the query router")
    choices = list(arg)

    def contained(value: Any) -> bool:
        return value is not MISSING and any(_strict_equal(value, choice) for choice in choices)

    if operator == "$in":
        return contained
    return lambda value: not contained(value)


_ORDERINGS: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def _compile_ordering(operator: str, arg: Any) -> Callable[[Any], bool]:
    """Compile `$gt` / `$gte` / `$lt` / `$lte`: numbers with numbers, strings with strings, else false."""
    compare = _ORDERINGS[operator]
    return lambda value: _comparable(value, arg) and compare(value, arg)


def _comparable(a: Any, b: Any) -> bool:
    """Return True when `a` and `b` are both numbers (bools excluded) or both strings."""
    if _is_number(a) and _is_number(b):
        return True
    return isinstance(a, str) and isinstance(b, str)


def _is_number(value: Any) -> bool:
    """Return True for ints and floats but not bools, which JSON keeps apart from numbers."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _compile_regex(arg: Any, path: str) -> Callable[[Any], bool]:
    """Compile `$regex` on the linear-time engine; it matches (searches) string values only."""
    if not isinstance(arg, str):
        raise BadRequest(f"Invalid regex in the query router: {path}: the pattern must be a string")
    if len(arg) > MAX_REGEX_LENGTH:
        raise BadRequest(f"Invalid regex in the query router: {path}: pattern longer than {MAX_REGEX_LENGTH} "
                         "characters")
    try:
        pattern = compile_pattern(arg)
    except PatternRefused as err:
        raise BadRequest(f"Invalid regex in the query router: {path}: {err}") from None

    def search(value: Any) -> bool:
        if not isinstance(value, str) or len(value) > MAX_REGEX_SUBJECT_LENGTH:
            return False
        return pattern.found_in(value)

    return search


# ---------------------------------------------------------------------------------------
# Evaluation helpers


def resolve_path(context: Any, path: Sequence[str]) -> Any:
    """Return the value at a dotted path split into segments, or MISSING."""
    current = context
    for segment in path:
        if isinstance(current, Mapping):
            if segment not in current:
                return MISSING
            current = current[segment]
        elif isinstance(current, (list, tuple)) and segment.isdecimal() and segment.isascii():
            index = int(segment)
            if index >= len(current):
                return MISSING
            current = current[index]
        else:
            return MISSING
    return current


def _strict_equal(a: Any, b: Any) -> bool:
    """Compare JSON values like `==`, but keep bools apart from numbers at any depth.

    Iterative, so a deeply nested request body cannot exhaust the stack.
    """
    pending = [(a, b)]
    while pending:
        x, y = pending.pop()
        if isinstance(x, bool) or isinstance(y, bool):
            if type(x) is not type(y) or x != y:
                return False
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            if x.keys() != y.keys():
                return False
            pending.extend((x[key], y[key]) for key in x)
        elif _is_array(x) and _is_array(y):
            if len(x) != len(y):
                return False
            pending.extend(zip(x, y, strict=True))
        elif isinstance(x, Mapping) or isinstance(y, Mapping) or _is_array(x) or _is_array(y):
            return False
        elif x is MISSING or y is MISSING or x != y:
            return False
    return True


def _is_array(value: Any) -> bool:
    """Return True for a JSON array."""
    return isinstance(value, (list, tuple))
