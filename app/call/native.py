"""The provider's own form of a request, as a translator builds it and the upstream sends it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NativeRequest:
    """The provider's own request: the path after its base URL (query included) and the JSON body."""

    path: str
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)  # extra headers the native API needs
    from_root: bool = False  # the path names its own version: it replaces the base URL's /v1 (Cohere's /v2)
