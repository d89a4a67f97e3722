"""Child processes for the benchmark: each in its own process group, all stopped on the way out."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

# One port helper for the tests, the demo and the benchmark: it honours PORTICO_TEST_PORT_BASE (README).
from tests.fakes.net import free_port as free_port

LOOPBACK = "127.0.0.1"


class BenchError(RuntimeError):
    """The benchmark cannot go on (a tool is missing or a server did not come up)."""


def pinned(cmd: Sequence[str], cpus: str | None) -> list[str]:
    """Return the command, run under `taskset -c cpus` when cpus is given."""
    return ["taskset", "-c", cpus, *cmd] if cpus else list(cmd)


class Proc:
    """A long-running child started in a new session, so the whole group can be stopped at once."""

    def __init__(self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, stdout: Path | None = None, stderr: Path | None = None) -> None:
        self.name = name
        self.stderr_path = stderr
        out = _sink(stdout)
        err = _sink(stderr)
        try:
            self.popen = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=err, start_new_session=True)
        finally:
            for handle in (out, err):
                if not isinstance(handle, int):
                    handle.close()  # the child has its own copy

    @property
    def pid(self) -> int:
        """Return the pid of the child (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """Return True while the child runs."""
        return self.popen.poll() is None

    def tail(self, chars: int = 1500) -> str:
        """Return the end of what the child wrote to stderr, for error messages."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return ""
        return self.stderr_path.read_text(errors="replace")[-chars:]

    def stop(self, grace: float = 10.0) -> None:
        """Send SIGTERM to the child's group, then SIGKILL whatever is left after the grace time."""
        if self.alive():
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.pid, signal.SIGKILL)  # stragglers in the group (e.g. workers) too
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _sink(path: Path | None) -> IO[bytes] | int:
    return path.open("wb") if path is not None else subprocess.DEVNULL


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Procs:
    """Every long-running child of a run; leaving the `with` block stops them, newest first."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def start(self, name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              stdout: Path | None = None, stderr: Path | None = None) -> Proc:
        """Start a child and remember it for clean-up."""
        proc = Proc(name, cmd, env=env, cwd=cwd, stdout=stdout, stderr=stderr)
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one child now."""
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A second Ctrl-C must not cut the clean-up short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for proc in reversed(self._procs):
                proc.stop(grace=5.0)
            self._procs.clear()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_bounded(cmd: Sequence[str], timeout: float) -> str:
    """Run a short-lived command in its own group and return its stdout; kill the group on timeout or Ctrl-C."""
    popen = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, text=True)
    try:
        out, err = popen.communicate(timeout=timeout)
    except BaseException:
        _signal_group(popen.pid, signal.SIGKILL)
        popen.communicate()
        raise
    if popen.returncode != 0:
        raise BenchError(f"{cmd[0]} exited {popen.returncode}: {err.strip()[-800:]}")
    return out


def wait_http(proc: Proc, port: int, path: str = "/", timeout: float = 30.0) -> None:
    """Wait until the child answers any HTTP request on loopback:port, or fail with its stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited {proc.popen.returncode}: {proc.tail()}")
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    raise BenchError(f"{proc.name} did not answer on {LOOPBACK}:{port} within {timeout:.0f}s: {proc.tail()}")


def ensure_tool(binary: str, package: str) -> str | None:
    """Return the path of a tool, installing its Debian package when missing and possible; None if not."""
    found = shutil.which(binary) or _sbin(binary)
    if found or not shutil.which("apt-get") or os.geteuid() != 0:
        return found
    install = ["apt-get", "install", "-y", "-qq", package]
    if not _apt(install):
        _apt(["apt-get", "update", "-qq"])
        _apt(install)
    return shutil.which(binary) or _sbin(binary)


def _apt(cmd: list[str]) -> bool:
    """Run an apt-get command quietly; return True when it succeeded."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=300, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _sbin(binary: str) -> str | None:
    """Find tools that live in /usr/sbin, which is not on every PATH."""
    path = Path("/usr/sbin") / binary
    return str(path) if path.exists() else None
