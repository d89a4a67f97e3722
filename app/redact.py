"""Secrets kept out of logs, stored records and error bodies (docs/security.md).

Three ways, each linear in the text it reads:

- by name: a query or form parameter whose name says it holds a secret (`api_key=`, `password=`,
  `X-Amz-Signature=`...) keeps its name and loses its value;
- by shape: Bearer tokens, `sk-` keys, Google `AIza` keys and AWS access key ids, wherever they are;
- by value: the credentials of the call (the provider key used, AWS keys, the gateway key and the
  Authorization / x-api-key values the client sent) and those the gateway file holds (catalog and
  saved-config keys), whatever their shape, in the forms they take in URLs and JSON.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Protocol
from urllib.parse import quote, quote_plus, unquote_plus

MASK = "[REDACTED]"
# Shorter values are not real credentials, and masking them would garble ordinary words in a message.
MIN_SECRET_CHARS = 8
# AWS session tokens run to about 2 KB; a longer value is not looked for (it bounds each search).
MAX_SECRET_CHARS = 8192
# Error bodies up to this size are searched for the call's credentials; larger ones pass as they are.
MAX_MASKED_BODY = 1 << 20

# A parameter whose name contains one of these words (any case) holds a secret.
SECRET_WORDS = ("key", "secret", "token", "passw", "pwd", "auth", "sig", "credential", "session", "cookie", "jwt")
_SECRET_NAME = re.compile("|".join(SECRET_WORDS), re.IGNORECASE)
# name=value in free text; a name is read from its start only, at once (no backtracking): linear in the text.
_PAIR = re.compile(r"(?<![\w.%\[\]-])([\w.%\[\]-]++)=([^&\s\"',;<>]*)")
# Bearer tokens, OpenAI/Anthropic-style sk- keys, Google API keys (AIza...), then AWS access key ids.
_SHAPES = re.compile(r"(?i:(bearer\s+|sk-[a-z]*-?|\bAIza)[A-Za-z0-9._~+/=-]{4,})|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_PLAIN = re.compile(r"[A-Za-z0-9._~-]*")  # a value written the same way in a URL and in JSON

# Client headers that carry credentials (the proxy forwards api-key and x-goog-api-key as they are).
CREDENTIAL_HEADERS = ("x-portkey-api-key", "authorization", "x-api-key", "api-key", "x-goog-api-key",
                      "proxy-authorization", "x-portkey-aws-access-key-id", "x-portkey-aws-secret-access-key",
                      "x-portkey-aws-session-token")
# The same as WSGI environ keys: read there directly, a lookup costs a dict hit instead of a name rewrite.
_ENVIRON_KEYS = tuple("HTTP_" + name.upper().replace("-", "_") for name in CREDENTIAL_HEADERS)
CREDENTIAL_OPTIONS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_TEXT_TYPES = ("json", "text/", "xml", "html", "x-www-form-urlencoded")


class Attempt(Protocol):
    """What masking reads of an upstream attempt (a pipeline ResolvedTarget): its credential and options."""

    @property
    def credential(self) -> str | None: ...

    @property
    def options(self) -> Mapping[str, str]: ...


class Call(Protocol):
    """What masking reads of a call (a pipeline RequestContext): the client's headers and the current attempt."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def target(self) -> Attempt | None: ...


def redact(text: str) -> str:
    """Hide secrets found by name (`password=...`) or by shape (Bearer tokens, sk- and AIza keys)."""
    if "=" in text:
        text = _PAIR.sub(_pair, text)
    low = text.lower()  # most text holds none of the shapes: a few substring checks are cheaper than the regex
    if "bearer" in low or "sk-" in low or "aiza" in low or "akia" in low or "asia" in low:
        text = _SHAPES.sub(_shape, text)
    return text


def _shape(match: re.Match[str]) -> str:
    return (match.group(1) or "") + MASK


def _pair(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    if value and _SECRET_NAME.search(unquote_plus(name)):
        return f"{name}={MASK}"
    return match.group(0)


def redact_query(query: str) -> str:
    """Return a query string with the value of every secret-named parameter replaced, then redacted by shape."""
    parts = query.split("&")
    for index, part in enumerate(parts):
        name, sep, value = part.partition("=")
        if sep and value and _SECRET_NAME.search(unquote_plus(name)):
            parts[index] = f"{name}={MASK}"
    return redact("&".join(parts))


def _forms(value: str) -> set[str]:
    """Return the ways a value with characters other than [A-Za-z0-9._~-] is written in text, a URL or JSON."""
    escaped = json.dumps(value)[1:-1]
    return {value, quote(value, safe=""), quote_plus(value, safe=""), escaped, escaped.replace("/", "\\/")}


class Secrets:
    """Credential values to mask wherever they appear, in each form they take."""

    __slots__ = ("forms",)

    def __init__(self, values: Iterable[str | None] = ()) -> None:
        forms: list[str] = []
        for value in values:
            if value and MIN_SECRET_CHARS <= len(value) <= MAX_SECRET_CHARS:
                if _PLAIN.fullmatch(value):
                    forms.append(value)
                else:
                    forms.extend(_forms(value))
        # Longest first: a secret that contains another is masked whole.
        self.forms = tuple(sorted(set(forms), key=len, reverse=True)) if len(forms) > 1 else tuple(forms)

    def __bool__(self) -> bool:
        return bool(self.forms)

    def __add__(self, other: Secrets) -> Secrets:
        joined = Secrets()
        joined.forms = tuple(sorted(set(self.forms) | set(other.forms), key=len, reverse=True))
        return joined

    def mask(self, text: str) -> str:
        """Return the text with every form of every secret replaced by the mask."""
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def mask_bytes(self, data: bytes) -> bytes:
        """Return the bytes with every form of every secret (as UTF-8) replaced by the mask."""
        for form in self.forms:
            raw = form.encode("utf-8", "surrogateescape")
            if raw in data:
                data = data.replace(raw, MASK.encode())
        return data

    def scrub(self, text: str) -> str:
        """Return the text masked by value, then redacted by name and shape."""
        return redact(self.mask(text))


NO_SECRETS = Secrets()


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """Return the credentials a client sent in its headers (a scheme's token on its own too)."""
    found: list[str] = []
    environ = getattr(headers, "environ", None)  # werkzeug's request headers
    if isinstance(environ, dict):
        values = [environ.get(key) for key in _ENVIRON_KEYS]
    else:
        values = [headers.get(name) for name in CREDENTIAL_HEADERS]
    for name, value in zip(CREDENTIAL_HEADERS, values, strict=True):
        if value:
            # `Bearer <key>`: the key alone is what a provider quotes back (and masking it masks the whole).
            token = value.strip().partition(" ")[2].strip() if name.endswith("authorization") else ""
            found.append(token or value)
    return found


def target_secrets(target: Attempt | None) -> list[str]:
    """Return the credentials an attempt uses: its provider key and AWS keys."""
    if target is None:
        return []
    found = [target.credential] if target.credential else []
    return found + [target.options[name] for name in CREDENTIAL_OPTIONS if target.options.get(name)]


def call_secrets(headers: Mapping[str, str], target: Attempt | None) -> Secrets:
    """Return the secrets of one call: what the client sent and what the attempt uses."""
    return Secrets([*header_secrets(headers), *target_secrets(target)])


def textual(content_type: str | None) -> bool:
    """Return True for a whole body a person could read (JSON, text, XML, HTML, a form), or one without a type.

    A stream (text/event-stream, ndjson) is not: it is relayed as it comes, not read ahead.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if "stream" in media or "ndjson" in media:
        return False
    return not media or any(kind in media for kind in _TEXT_TYPES)


# The call each thread is serving, for log lines written while it runs (a weak reference: a finished
# call's body and headers are not kept alive by it).
_current = threading.local()
_held = NO_SECRETS
_held_lock = threading.Lock()


def track_call(ctx: Call) -> None:
    """Remember the call this thread serves, so its log lines are masked with its secrets."""
    _current.call = weakref.ref(ctx)


def current_secrets() -> Secrets:
    """Return the secrets of the call this thread serves (if any) and those the gateway file holds."""
    ref = getattr(_current, "call", None)
    ctx = ref() if ref is not None else None
    if ctx is None:
        return _held
    return call_secrets(ctx.headers, ctx.target) + _held


def hold(secrets: Secrets) -> None:
    """Add credentials held by a gateway in this process to those every log line is masked with."""
    global _held
    with _held_lock:
        _held = _held + secrets


class SecretFilter(logging.Filter):
    """Mask secrets in a log line and its traceback: by value (the call's and the gateway's), name and shape."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = current_secrets()
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the logging module's to report
            return True
        record.msg, record.args = secrets.scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = secrets.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = secrets.scrub(record.stack_info)
        return True
