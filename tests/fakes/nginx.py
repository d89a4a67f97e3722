"""A real nginx for tests: one process (daemon off) in a temp dir, on loopback, stopped for good afterwards."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def nginx_binary() -> str | None:
    """Return the nginx executable (in /usr/sbin, off a non-root PATH), or None when it is not installed."""
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


class NginxProcess:
    """An nginx run from `nginx.conf` in its own temp dir (`dir`), which the caller writes before `run`."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="portico-nginx-")
        self.dir = Path(self.tmp.name)
        self.dir.chmod(0o755)  # run as root, nginx's workers (nobody) write the temp paths under it
        self.proc: subprocess.Popen[bytes] | None = None

    def run(self, wait_port: int) -> None:
        """Start nginx with dir/nginx.conf and wait until wait_port accepts connections."""
        binary = nginx_binary()
        assert binary is not None, "nginx is not installed (make test installs it from Debian)"
        self.proc = subprocess.Popen([binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                                      "-e", str(self.dir / "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=(self.dir / "stderr.log").open("wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited {self.proc.returncode}: {self.errors()}")
            try:
                socket.create_connection(("127.0.0.1", wait_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not come up: " + self.errors())

    def stop(self) -> None:
        """Stop nginx (SIGTERM: fast shutdown) and remove its files."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()

    def errors(self) -> str:
        """Return the end of what nginx wrote to its error logs (why it answered 502, if it did)."""
        return "".join(path.read_text(errors="replace")[-2000:] for path in sorted(self.dir.glob("*.log"))
                       if "error" in path.name or path.name == "stderr.log")
