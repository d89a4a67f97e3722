"""Where a model lives: the bedrock model id of a call and its percent-encoded native path."""

from __future__ import annotations

from typing import Any

from app.errors import BadRequest
from app.translate.base import CallFacts
from app.translate.shape import path_segment


def model_of(body: dict[str, Any], facts: CallFacts) -> str:
    """Return the bedrock model id (or ARN) of the call; none is a 400."""
    model = body.get("model")
    if isinstance(model, str) and model.startswith("@") and "/" in model:
        model = model.partition("/")[2]  # a catalog `@name/model`
    if not isinstance(model, str) or not model:
        model = facts.model
    if not model:
        raise BadRequest("bedrock needs a model: the model id, inference profile id or ARN to call")
    return model


def model_path(model: str, operation: str) -> str:
    """Return the native path of an operation on a model; the id is encoded whole (ARNs hold `:` and `/`)."""
    return f"/model/{path_segment(model, 'model')}/{operation}"
