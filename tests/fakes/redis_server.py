"""A real, throwaway redis-server on a loopback port, for tests of the Redis cache backend.

    with RedisServer() as server:
        cache = RedisCache(server.url, max_entry_bytes=1 << 20)
        server.stop()   # Redis goes away...
        server.start()  # ...and comes back on the same port, empty
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Self

from tests.fakes.net import free_port

_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_POLL_S = 0.01


def find_redis_server() -> str:
    """Return the redis-server binary, or raise a RuntimeError saying how to install it."""
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("redis-server not found: install redis-server (apt-get install redis-server)")


def _answers_ping(port: int) -> bool:
    """Tell whether a Redis on the port answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """Run redis-server on 127.0.0.1 with no persistence; stop and start it again on the same port."""

    def __init__(self, port: int | None = None) -> None:
        """Prepare a server on port (a free one by default); start() or `with` runs it."""
        self.binary = find_redis_server()
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="portico-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Return the redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        if self._process is not None:
            return
        log_path = os.path.join(self._dir.name, "redis.log")
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [self.binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
                 "--port", str(self.port), "--daemonize", "no", "--dir", self._dir.name],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(log_path, errors="replace") as log_file:
                    tail = log_file.read()[-2000:]
                raise RuntimeError(f"redis-server did not come up on port {self.port}:\n{tail}")
            time.sleep(_POLL_S)

    def stop(self) -> None:
        """Stop the server (its data is lost) and wait for the process to end."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def close(self) -> None:
        """Stop the server and delete its working directory."""
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> Self:
        """Start the server."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Stop the server and clean up."""
        self.close()
