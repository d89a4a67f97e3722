"""Regular expressions written by clients and configs, run on a linear-time engine (RE2).

Conditional routing's `$regex` and the guardrails' `rule` (regexMatch, regexReplace) come from whoever
sends the config. Python's `re` backtracks: `(a+)+$` on 30 characters holds a worker for minutes, and it
cannot be interrupted. RE2 never backtracks: a search costs at most (text length × pattern size), and it
releases the GIL while it runs. The price is that RE2 refuses what needs backtracking (backreferences,
lookahead and lookbehind, atomic groups); such a pattern is refused with a message that says so, never run
on `re` instead (docs/security.md). This module is the only place that compiles a client's pattern.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

# RE2 keeps a DFA cache per pattern up to this size; the default (8 MiB) times the cache below is too much.
MAX_PATTERN_MEMORY = 1 << 20
PATTERN_CACHE_SIZE = 128
# (?P<name>...) and JavaScript's (?<name>...): RE2 captures named groups even under never_capture.
_NAMED_GROUP = re.compile(r"\(\?P?<[A-Za-z_][A-Za-z0-9_]*>")
_BACKREFERENCE = re.compile(r"invalid escape sequence: \\(?:[0-9]|k)")
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")
_NOT_LINEAR = "the gateway runs patterns on a linear-time engine (RE2)"


class PatternRefused(ValueError):
    """A pattern the linear-time engine cannot run; the message says why, in the client's terms."""


class OutOfTime(Exception):
    """A replacement ran past its deadline; `matches` says how far it got."""

    def __init__(self, matches: int) -> None:
        super().__init__(f"stopped after {matches} matches")
        self.matches = matches


@dataclass(frozen=True)
class TextPattern:
    """A compiled client pattern; every method runs in time linear in the text."""

    source: str
    regex: Any  # re2's compiled pattern (the library ships no type hints)

    def first_match(self, text: str) -> str | None:
        """Return the leftmost match in `text`, or None."""
        match = self.regex.search(_subject(text))
        return None if match is None else _text(match.group(0))

    def found_in(self, text: str) -> bool:
        """Tell whether the pattern matches anywhere in `text` (like re.search)."""
        return self.regex.search(_subject(text)) is not None

    def matches_empty(self) -> bool:
        """Tell whether the whole pattern can match the empty string."""
        return self.regex.fullmatch(b"") is not None

    def replace_all(self, text: str, replacement: str, deadline: float) -> tuple[str, int]:
        """Replace every match with `replacement` (literal text); raise OutOfTime past `deadline` (monotonic).

        Each search is linear, but finding every match repeats the search from each match's end, which some
        patterns (`\\w+x|\\w`) turn quadratic: the deadline bounds that.
        """
        data, redaction = _subject(text), _subject(replacement)
        pieces: list[bytes] = []
        end = count = 0
        previous = (-1, -1)
        for match in self.regex.finditer(data):
            if time.monotonic() > deadline:
                raise OutOfTime(count)
            span = match.span()
            if span == previous or (span[0] == span[1] and _inside_character(data, span[0])):
                continue  # re2's iterator can yield one empty match twice; none may split a character
            pieces += (data[end:span[0]], redaction)
            end, previous, count = span[1], span, count + 1
        if not count:
            return text, 0
        pieces.append(data[end:])
        return _text(b"".join(pieces)), count


def _subject(text: str) -> bytes:
    """Return `text` as RE2 reads it: UTF-8, keeping the lone surrogates that JSON strings may hold."""
    return text.encode("utf-8", "surrogatepass")


def _text(data: bytes) -> str:
    """Return UTF-8 bytes from `_subject` (or slices of it at character boundaries) as text again."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # not expected (\C is refused); a mangled character beats a 500
        return data.decode("utf-8", "replace")


def _inside_character(data: bytes, index: int) -> bool:
    """Tell whether `index` falls between the bytes of one UTF-8 character (on a continuation byte)."""
    return index < len(data) and 0x80 <= data[index] <= 0xBF


def compile_pattern(source: str) -> TextPattern:
    """Return `source` compiled on the linear-time engine; raise PatternRefused naming the problem."""
    return _compile(source)


@lru_cache(maxsize=PATTERN_CACHE_SIZE)
def _compile(source: str) -> TextPattern:
    """Compile once per process: configs repeat the same few patterns on every request."""
    try:
        return TextPattern(source, re2.compile(_for_re2(source), _options()))
    except re2.error as err:
        raise PatternRefused(_explain(source, err)) from None


def _options() -> Any:
    """Return RE2's options for client patterns: nothing reads captures, errors are ours to report."""
    options = re2.Options()
    options.never_capture = True  # no submatch pass: matching stays on RE2's DFA
    options.log_errors = False  # RE2 would print the client's pattern to the worker's stderr
    options.max_mem = MAX_PATTERN_MEMORY
    return options


def _explain(source: str, err: Exception) -> str:
    """Return RE2's complaint in the client's terms, naming backreferences and lookaround."""
    detail = err.args[0] if err.args else str(err)
    reason = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
    if _BACKREFERENCE.match(reason) or "(?P=" in source:
        return f"backreferences (\\1, \\k<name>, (?P=name)) are not supported: {_NOT_LINEAR}"
    if reason.startswith("invalid perl operator") and any(mark in source for mark in _LOOKAROUND):
        return f"lookahead and lookbehind ((?=, (?!, (?<=, (?<!) are not supported: {_NOT_LINEAR}"
    if reason.startswith("pattern too large"):
        return "the pattern is too large for the linear-time engine (RE2); use smaller repetition counts"
    return reason


def _for_re2(source: str) -> str:
    """Return the pattern RE2 compiles: named groups made plain (outside classes and \\Q...\\E); refuse \\C."""
    out: list[str] = []
    index, in_class = 0, False
    while index < len(source):
        char = source[index]
        if source.startswith("\\C", index):
            raise PatternRefused("\\C (any single byte) is not supported: it can split a character")
        if char == "\\":
            step = _quoted_length(source, index) if source.startswith("\\Q", index) else 2
        elif in_class:
            step = _class_item_length(source, index)
            in_class = char != "]"
        elif char == "[":
            step = _class_start_length(source, index)
            in_class = True
        elif named := _NAMED_GROUP.match(source, index):
            out.append("(?:")
            index = named.end()
            continue
        else:
            step = 1
        out.append(source[index:index + step])
        index += step
    return "".join(out)


def _quoted_length(source: str, index: int) -> int:
    """Return the length of a \\Q...\\E quote (to the end of the pattern when unclosed)."""
    close = source.find("\\E", index + 2)
    return len(source) - index if close < 0 else close + 2 - index


def _class_start_length(source: str, index: int) -> int:
    """Return the length of `[`, `[^`, and a leading `]`, which is literal there."""
    step = 1
    if source.startswith("^", index + step):
        step += 1
    if source.startswith("]", index + step):
        step += 1
    return step


def _class_item_length(source: str, index: int) -> int:
    """Return the length of one item inside a class: a POSIX `[:name:]` or one character."""
    if source.startswith("[:", index):
        close = source.find(":]", index + 2)
        if close >= 0:
            return close + 2 - index
    return 1
