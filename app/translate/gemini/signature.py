"""Tool call ids that carry a call's thought signature, which Gemini needs sent back."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

_SIGNED = "__thought__"  # separates a tool call id from the thought signature it carries
_SIGNED_ID = re.compile(r"call_[0-9a-f]{24}" + _SIGNED + r"([A-Za-z0-9_-]+)")


def _call_id(signature: Any) -> str:
    """Return a new tool call id; it carries the call's thought signature, which Gemini needs sent back."""
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    if not isinstance(signature, str) or not signature:
        return call_id
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return call_id  # not the base64 Gemini sends: cannot carry it safely
    # URL-safe and unpadded, so the id stays within [A-Za-z0-9_-] (ids some clients validate).
    return call_id + _SIGNED + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signature_of(call_id: str) -> str | None:
    found = _SIGNED_ID.fullmatch(call_id)
    if found is None:
        return None
    token = found.group(1)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode()
