"""The printed report: lines are shown as they are made and saved together at the end."""

from __future__ import annotations

import sys
from pathlib import Path


def verdict(ok: bool) -> str:
    """Return PASS or FAIL."""
    return "PASS" if ok else "FAIL"


class Report:
    """Collects the report's lines, printing each one at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, line: str = "") -> None:
        """Print a line and keep it for the saved copy."""
        self.lines.append(line)
        print(line, flush=True)

    def note(self, line: str) -> None:
        """Print a progress line to stderr only (not part of the report)."""
        print(f"  .. {line}", file=sys.stderr, flush=True)

    def section(self, title: str) -> None:
        """Start a titled section."""
        self.say()
        self.say(title)
        self.say("-" * len(title))

    def save(self, path: Path) -> None:
        """Write the report to path, making its folder if needed."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(self.lines) + "\n")
