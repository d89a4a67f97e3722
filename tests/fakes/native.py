"""Routes of the fake provider's native APIs whose paths carry parameters (Gemini, Vertex, Bedrock, Cohere v2).

Each API lives in its own module and registers its handlers with ``@route(method, pattern)``;
a handler gets the request context and the pattern's match. The modules are imported on the
first request, so they may import the fake provider's helpers freely.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import threading
from collections.abc import Callable
from typing import Any

MODULES = ("tests.fakes.fake_gemini", "tests.fakes.fake_cohere", "tests.fakes.fake_bedrock", "tests.fakes.fake_azure",
           "tests.fakes.fake_vertex_anthropic")
_ROUTES: list[tuple[str, re.Pattern[str], Callable[[Any, re.Match[str]], Any]]] = []
_loaded = threading.Event()
_lock = threading.Lock()


def route(method: str, pattern: str) -> Callable[[Callable[[Any, re.Match[str]], Any]],
                                                  Callable[[Any, re.Match[str]], Any]]:
    """Register a handler for requests whose path matches the pattern in full."""
    def register(handler: Callable[[Any, re.Match[str]], Any]) -> Callable[[Any, re.Match[str]], Any]:
        _ROUTES.append((method, re.compile(pattern), handler))
        return handler
    return register


def match(method: str, path: str) -> Callable[[Any], Any] | None:
    """Return the handler of a native route for this request, bound to its match; None when none matches."""
    _load()
    for route_method, pattern, handler in _ROUTES:
        found = pattern.fullmatch(path) if route_method == method else None
        if found is not None:
            return lambda ctx, handler=handler, found=found: handler(ctx, found)
    return None


def _load() -> None:
    if _loaded.is_set():
        return
    with _lock:
        if not _loaded.is_set():
            for name in MODULES:
                if importlib.util.find_spec(name) is not None:
                    importlib.import_module(name)
            _loaded.set()
