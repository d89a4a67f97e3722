"""Worker memory: find gunicorn's worker under its master and read its resident set size."""

from __future__ import annotations

from pathlib import Path

from bench.procs import BenchError


def children(pid: int) -> list[int]:
    """Return the pids whose parent is pid (read from /proc/*/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process ended while we looked
        # The command name is in parentheses and may hold spaces; the parent pid is the 2nd field after it.
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def only_worker(master: int) -> int:
    """Return the single worker of a one-worker gunicorn master."""
    workers = children(master)
    if len(workers) != 1:
        raise BenchError(f"expected one gunicorn worker under pid {master}, found {workers}")
    return workers[0]


def rss_kib(pid: int) -> int:
    """Return VmRSS of a process in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")
