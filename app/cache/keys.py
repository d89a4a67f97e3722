"""Cache keys: a sha256 over every part of a request that can change its answer (docs/cache.md)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from app.jsonwire import compact_bytes

# Domain-separation prefixes: a key or credential digest can never equal a digest made for another purpose.
_KEY_DOMAIN = b"portico/cache-key/v1\x00"
_CREDENTIAL_DOMAIN = b"portico/cache-credential/v1\x00"


def cache_key(*, provider: str, url: str, method: str, body: bytes | None, content_type: str | None,
              credential: str | None, namespace: str | None, parsed_json: Any = None) -> str:
    """Return the sha256 hex key of a request: same request, same key; any field changed, another key.

    `parsed_json` is the body already parsed by the caller (a JSON body), to save parsing it twice.
    """
    media_type = _media_type(content_type)
    canonical: bytes | None
    if parsed_json is not None and body is not None and _may_be_json(media_type):
        body_kind, canonical = "json", compact_bytes(parsed_json, sort_keys=True)
    else:
        body_kind, canonical = _canonical_body(body, media_type)
    digest = hashlib.sha256(_KEY_DOMAIN)
    for part in (
        _utf8(provider),
        _utf8(url),
        _utf8(method.upper()),
        _utf8(body_kind),
        canonical,
        _credential_identity(credential),
        None if namespace is None else _utf8(namespace),
    ):
        _feed(digest, part)
    return digest.hexdigest()


def _feed(digest: hashlib._Hash, part: bytes | None) -> None:
    """Add one length-prefixed field, so fields cannot bleed into each other ("ab"+"c" vs "a"+"bc")."""
    if part is None:
        digest.update(b"-")  # absent differs from empty
        return
    digest.update(b"+%d:" % len(part))
    digest.update(part)


def _utf8(text: str) -> bytes:
    """Encode text without ever failing (a stray surrogate must not break a request)."""
    return text.encode("utf-8", "surrogatepass")


def _credential_identity(credential: str | None) -> bytes | None:
    """Return a digest that identifies the credential; the key then holds no trace of the secret itself."""
    if credential is None:
        return None
    return hashlib.sha256(_CREDENTIAL_DOMAIN + _utf8(credential)).digest()


def _media_type(content_type: str | None) -> str | None:
    """Return the lower-cased media type without parameters (a multipart boundary lives in the body anyway)."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _canonical_body(body: bytes | None, media_type: str | None) -> tuple[str, bytes | None]:
    """Return (kind, bytes): JSON re-serialised with sorted keys and compact separators, else the raw bytes."""
    if body is None:
        return "none", None
    if _may_be_json(media_type):
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # not JSON after all (or absurdly nested): key on the raw bytes
            pass
        else:
            return "json", compact_bytes(parsed, sort_keys=True)
    return f"raw:{media_type or ''}", body


def _may_be_json(media_type: str | None) -> bool:
    """Tell whether a body with this media type should be parsed as JSON (untyped bodies are tried too)."""
    return media_type is None or media_type == "application/json" or media_type.endswith("+json")
