"""Translation between the unified formats and each provider's native API (docs/providers.md, Translation).

A call needs translating when its provider does not speak the route's format natively. The
adapter (provider side) turns a unified request into the native one and the native answer,
stream and error back; the front (client side) is the route's own format: OpenAI's for chat
and embeddings, Anthropic's for /v1/messages (bridged through the unified chat format).
"""

from __future__ import annotations

import importlib
import time
from functools import cache
from typing import Any

from app.call.context import UNIFIED, RequestContext, ResolvedTarget
from app.errors import BadRequest
from app.providers.registry import CHAT
from app.translate.base import CallFacts
from app.translate.call import Translator
from app.translate.fronts import Front, OpenAIFront

MESSAGES = "messages"
OPENAI_CHAT = "app.translate.openai:CHAT"  # the unified chat format itself, for /v1/messages to OpenAI-like providers


def translator_for(ctx: RequestContext, target: ResolvedTarget, strict: bool | None) -> Translator | None:
    """Return the translator of a leaf's call; None when the provider speaks the route's format natively.

    An endpoint the provider does not offer is a 400 `<route> is not supported by <provider>`.
    """
    provider = target.provider
    if ctx.route != UNIFIED or provider.native_format == ctx.unified_format:
        return None
    endpoint = ctx.endpoint or ""
    front: Front
    if endpoint == MESSAGES:
        name = provider.adapters.get(CHAT) or (OPENAI_CHAT if provider.native_format else None)
        front = _load("app.translate.messages:FRONT")
    else:
        name = provider.adapters.get(endpoint)
        front = OpenAIFront(endpoint)
    route = ctx.path[:100]  # the client's name for the endpoint; Portkey's (chatComplete, ...) is internal
    if name is None:
        raise BadRequest(f"{route} is not supported by {provider.slug}")
    return Translator(_load(name), front, call_facts(ctx, target, strict), route)


def call_facts(ctx: RequestContext, target: ResolvedTarget, strict: bool | None) -> CallFacts:
    """Return what the adapters know of this call before its body is read (the body fills in the rest)."""
    header = (ctx.headers.get("x-portkey-strict-open-ai-compliance") or "").strip().lower()
    if header in ("true", "false"):
        strict = header == "true"
    return CallFacts(provider=target.provider.slug, model=None, stream=False,
                     id=f"chatcmpl-{ctx.trace_id.replace('-', '')}", created=int(time.time()),
                     strict=strict is not False, options=target.options)


@cache
def _load(name: str) -> Any:
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)
