"""Where the checked text lives in each format: reading it, and rewriting text without touching the caller's body.

Before the request the checked text is the last user message (chat and Anthropic messages: a content
string, or its text parts joined with newlines), the prompt (completions) or the input (embeddings);
after it, the answer's text (chat: the first choice's message content; completions: the first
choice's text; Anthropic: the text blocks of `content`). Bodies are never changed in place: a rewrite
copies the path down to each changed text and shares everything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Part types that carry plain text: OpenAI chat parts, Anthropic blocks, Responses-style parts.
TEXT_PART_TYPES = frozenset({"text", "input_text", "output_text"})

TextFn = Callable[[str], str]


def event_text(event: str, endpoint: str, request_json: Any, response_json: Any) -> str | None:
    """Return the text the checks of `event` look at, or None when there is none."""
    if event == "after":
        return response_text(endpoint, response_json)
    return request_text(endpoint, request_json)


def request_text(endpoint: str, body: Any) -> str | None:
    """Return the text of the request the before-request checks look at."""
    if not isinstance(body, Mapping):
        return None
    if endpoint in ("chatComplete", "messages"):
        found = last_message(body.get("messages"), "user")
        return content_text(found[1].get("content")) if found else None
    if endpoint == "complete":
        return joined_strings(body.get("prompt"))
    if endpoint == "embed":
        return joined_strings(body.get("input"))
    return None


def response_text(endpoint: str, body: Any) -> str | None:
    """Return the text of the answer the after-request checks look at."""
    if not isinstance(body, Mapping):
        return None
    if endpoint == "messages":
        return content_text(body.get("content"))
    choice = first_choice(body)
    if choice is None:
        return None
    if endpoint == "chatComplete":
        message = choice.get("message")
        return content_text(message.get("content")) if isinstance(message, Mapping) else None
    if endpoint == "complete":
        text = choice.get("text")
        return text if isinstance(text, str) else None
    return None


def content_text(content: Any) -> str | None:
    """Return a message content's text: the string itself, or its text parts joined with newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part["text"] for part in content if is_text_part(part)]
        return "\n".join(texts) if texts else None
    return None


def is_text_part(part: Any) -> bool:
    """Tell whether a content part (OpenAI part, Anthropic block) is plain text."""
    return (isinstance(part, Mapping) and isinstance(part.get("text"), str)
            and part.get("type", "text") in TEXT_PART_TYPES)


def joined_strings(value: Any) -> str | None:
    """Return a prompt or input as text: a string, or the strings of a list joined (token ids are skipped)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = [item for item in value if isinstance(item, str)]
        return "\n".join(texts) if texts else None
    return None


def last_message(messages: Any, role: str) -> tuple[int, Mapping[str, Any]] | None:
    """Return the index and the last message with `role`, or None."""
    if not isinstance(messages, list):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == role:
            return index, message
    return None


def first_choice(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the first choice of an OpenAI-format answer."""
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        return choices[0]
    return None


# --- rewriting ---------------------------------------------------------------------------------

def map_content(content: Any, fn: TextFn) -> tuple[Any, bool]:
    """Apply `fn` to every text of a content (string or parts); return the new content and whether it changed."""
    if isinstance(content, str):
        new = fn(content)
        return new, new != content
    if not isinstance(content, list):
        return content, False
    parts: list[Any] = []
    changed = False
    for part in content:
        if is_text_part(part):
            text = fn(part["text"])
            if text != part["text"]:
                part = {**part, "text": text}
                changed = True
        parts.append(part)
    return (parts if changed else content), changed


def map_strings(value: Any, fn: TextFn) -> tuple[Any, bool]:
    """Apply `fn` to a prompt or input: a string, or each string of a list."""
    if isinstance(value, list):
        items = [fn(item) if isinstance(item, str) else item for item in value]
        changed = items != value
        return (items if changed else value), changed
    return map_content(value, fn) if isinstance(value, str) else (value, False)


def map_request_texts(endpoint: str, body: Any, fn: TextFn) -> dict[str, Any] | None:
    """Apply `fn` to every text of a request (all messages, system, prompt, input); return the new body or None."""
    if not isinstance(body, Mapping):
        return None
    new = dict(body)
    changed = False
    if endpoint in ("chatComplete", "messages"):
        messages, changed = _map_messages(body.get("messages"), fn)
        new["messages"] = messages
        if endpoint == "messages" and "system" in body:
            new["system"], system_changed = map_content(body["system"], fn)
            changed = changed or system_changed
    elif endpoint == "complete" and "prompt" in body:
        new["prompt"], changed = map_strings(body["prompt"], fn)
    elif endpoint == "embed" and "input" in body:
        new["input"], changed = map_strings(body["input"], fn)
    return new if changed else None


def map_response_texts(endpoint: str, body: Any, fn: TextFn) -> dict[str, Any] | None:
    """Apply `fn` to every text of an answer (every choice, every text block); return the new body or None."""
    if not isinstance(body, Mapping):
        return None
    if endpoint == "messages":
        content, changed = map_content(body.get("content"), fn)
        return {**body, "content": content} if changed else None
    key = {"chatComplete": "message", "complete": "text"}.get(endpoint)
    choices = body.get("choices")
    if key is None or not isinstance(choices, list):
        return None
    new_choices, changed = _map_list(choices, lambda choice: _map_choice(choice, key, fn))
    return {**body, "choices": new_choices} if changed else None


def _map_choice(choice: Any, key: str, fn: TextFn) -> tuple[Any, bool]:
    """Apply `fn` to one choice's text (`text`) or message content (`message`)."""
    if not isinstance(choice, Mapping):
        return choice, False
    if key == "text":
        text, changed = map_strings(choice.get("text"), fn)
        return ({**choice, "text": text} if changed else choice), changed
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return choice, False
    content, changed = map_content(message.get("content"), fn)
    return ({**choice, "message": {**message, "content": content}} if changed else choice), changed


def _map_messages(messages: Any, fn: TextFn) -> tuple[Any, bool]:
    """Apply `fn` to the content of every message."""
    if not isinstance(messages, list):
        return messages, False

    def one(message: Any) -> tuple[Any, bool]:
        if not isinstance(message, Mapping):
            return message, False
        content, changed = map_content(message.get("content"), fn)
        return ({**message, "content": content} if changed else message), changed

    return _map_list(messages, one)


def _map_list(items: Sequence[Any], fn: Callable[[Any], tuple[Any, bool]]) -> tuple[list[Any], bool]:
    """Map `fn` over items, keeping the original list when nothing changed."""
    results = [fn(item) for item in items]
    changed = any(flag for _, flag in results)
    return ([value for value, _ in results] if changed else list(items)), changed
