"""Azure OpenAI's deployment paths on the fake provider: `api-key` auth, a required `api-version`, OpenAI bodies."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.native import route
from tests.fakes.provider import _json_answer, _openai_chat, _openai_embeddings


def _served(ctx: Any, handler: Callable[[Any], Any]) -> Any:
    """Return Azure's error for a missing key or api-version, else the OpenAI handler's answer."""
    request = ctx.request
    if not request.headers.get("api-key"):
        return _json_answer(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key "
                                            "or wrong API endpoint."}})
    if not parse_qs(request.query).get("api-version"):
        return _json_answer(404, {"error": {"code": "404", "message": "Resource not found"}})
    # The OpenAI handlers check a Bearer token; Azure's key stands in for it.
    headers = {**request.headers, "authorization": f"Bearer {request.headers['api-key']}"}
    return handler(replace(ctx, request=replace(request, headers=headers)))


@route("POST", r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions")
def chat(ctx: Any, match: re.Match[str]) -> Any:
    """Answer a chat completion on a deployment."""
    return _served(ctx, _openai_chat)


@route("POST", r"/openai/deployments/(?P<deployment>[^/]+)/embeddings")
def embeddings(ctx: Any, match: re.Match[str]) -> Any:
    """Answer embeddings on a deployment."""
    return _served(ctx, _openai_embeddings)
