"""What one answer consumed: tokens, search units, images, audio seconds, and the model that served it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Usage:
    """Usage read from one answer; a field is None when the answer did not report it.

    input_tokens counts the whole prompt, cached parts included: providers that report cache reads and
    writes beside the prompt (Anthropic, Bedrock) have them added in, so that cache_read_tokens and
    cache_write_tokens are always parts of input_tokens and total_tokens means the same everywhere.
    """

    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    search_units: int | None = None
    images: int | None = None
    audio_seconds: float | None = None

    @property
    def total_tokens(self) -> int | None:
        """Return input plus output tokens, or None when neither was reported."""
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)

    def is_empty(self) -> bool:
        """Return True when nothing billable was reported (a model name alone is not usage)."""
        return (self.input_tokens is None and self.output_tokens is None and self.cache_read_tokens is None
                and self.cache_write_tokens is None and self.search_units is None and self.images is None
                and self.audio_seconds is None)


class UsageSource(Protocol):
    """Reports what one answer used once its body ended or was cut: the byte tap, or a translator's report."""

    def result(self) -> Usage:
        """Return the usage found so far; never raises."""
        ...
