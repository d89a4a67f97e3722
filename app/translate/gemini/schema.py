"""JSON schema → Gemini's Schema: local $refs inlined, the keys Gemini refuses dropped."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__package__)  # the package's name, as before the split into modules


# The fields of Gemini's Schema (an OpenAPI 3.0 subset) that both the Gemini API and Vertex take.
_SCHEMA_KEYS = frozenset({
    "type", "format", "description", "nullable", "enum", "items", "properties", "required", "anyOf",
    "minItems", "maxItems", "minProperties", "maxProperties", "minLength", "maxLength", "pattern",
    "minimum", "maximum", "default", "example", "propertyOrdering"})
# String formats the Gemini API takes (others are refused); number formats it takes.
_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
_MAX_DEPTH = 32  # a schema nested (or $ref-recursive) deeper than this is cut there
# Annotations Gemini refuses but whose loss changes nothing it generates: dropped without a warning.
_QUIET = frozenset({"title", "$schema", "$id", "$comment", "examples", "additionalProperties", "strict"})


def gemini_schema(schema: dict[str, Any], slug: str = "google") -> dict[str, Any]:
    """Return a JSON schema as Gemini's Schema: local $refs inlined, the keys Gemini refuses dropped."""
    dropped: set[str] = set()
    definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    result = _schema(schema, definitions, dropped, 0)
    if dropped:
        log.warning("%s: dropped JSON-schema keys Gemini does not take: %s", slug, ", ".join(sorted(dropped)))
    return result


def _schema(node: Any, definitions: dict[str, Any], dropped: set[str], depth: int) -> dict[str, Any]:
    if not isinstance(node, dict):
        return {}
    if depth > _MAX_DEPTH:
        dropped.add("(nesting deeper than 32)")
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str):
        target = definitions.get(ref.rsplit("/", 1)[-1]) if ref.startswith(("#/$defs/", "#/definitions/")) else None
        if target is None:
            dropped.add("$ref")
        merged = {**(target or {}), **{k: v for k, v in node.items() if k != "$ref"}}
        return _schema(merged, definitions, dropped, depth + 1)
    all_of = node.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:  # pydantic's way of describing a $ref'd field
        return _schema({**all_of[0], **{k: v for k, v in node.items() if k != "allOf"}}, definitions, dropped,
                       depth + 1)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key == "type" and isinstance(value, list):
            kinds = [kind for kind in value if kind != "null"]
            if len(kinds) < len(value):
                result["nullable"] = True
            if len(kinds) == 1:
                result["type"] = kinds[0]
            elif kinds:
                result["anyOf"] = [{"type": kind} for kind in kinds]
        elif key == "const":
            result["enum"] = [value]
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            options = [_schema(v, definitions, dropped, depth + 1) for v in value]
            if {"nullable": True} in options:  # Optional[X]: anyOf [X, null]
                result["nullable"] = True
                options = [option for option in options if option != {"nullable": True}]
            if len(options) == 1:
                result.update(options[0])
            elif options:
                result["anyOf"] = options
        elif key == "properties" and isinstance(value, dict):
            if value:
                result["properties"] = {name: _schema(v, definitions, dropped, depth + 1) for name, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            result["items"] = _schema(value, definitions, dropped, depth + 1)
        elif key == "format" and value not in _FORMATS:
            dropped.add(f"format={value}")
        elif key in _SCHEMA_KEYS:
            result[key] = value
        elif key not in _QUIET and key not in ("$defs", "definitions"):
            dropped.add(key)
    if result.get("type") == "null":
        result = {"nullable": True}
    return result
