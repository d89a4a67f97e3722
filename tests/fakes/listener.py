"""A loopback socket that counts the connections it accepts: proof that the gateway did (not) dial a host."""

from __future__ import annotations

import socket
import threading
from types import TracebackType

from tests.fakes.net import listen_port


class Listener:
    """Accept every connection on a loopback port, count it and close it at once, answering nothing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", listen_port()))
        self.sock.settimeout(0.5)  # a fallback: close() wakes accept() itself
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1  # counted before the close: a caller that saw the close sees the count
            conn.close()

    def close(self) -> None:
        """Stop accepting and free the port."""
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() at once on Linux
        except OSError:
            pass
        self._thread.join()
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
