"""Reading /proc: a process's children, its resident memory, CPU time of a process tree and of cores."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from bench.procs import BenchError

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Return the fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()  # the name is in parentheses and may hold spaces


def children(pid: int) -> list[int]:
    """Return the pids whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
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


def tree_cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds used so far by a process and its direct children (all threads)."""
    total = 0
    for member in (pid, *children(pid)):
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
    return total / TICK


def cores_busy_seconds(cpus: Iterable[int]) -> float:
    """Return CPU seconds the given cores spent running anything (user, nice, system) or stolen by the host."""
    wanted = {f"cpu{n}" for n in cpus}
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name in wanted:
            user, nice, system, _idle, _iowait, _irq, _softirq, steal = map(int, values[:8])
            busy += user + nice + system + steal
    return busy / TICK
