"""A streamed answer relayed by the worker's event loop: upstream socket to client socket, no thread held.

A thread serves the call up to the answer's first bytes (docs/decisions.md, Streams). From there the rest of
a stream only waits on two sockets, so the worker's poller moves it: each event costs one read, one write
and the relay's own bookkeeping (`Relay.deliver`: bytes counted, cache copy, usage tap), with no thread to
wake. A slow client pauses the upstream read until its socket drains; silence longer than the upstream's
read timeout, on either side, ends the stream as a thread's socket timeout would.
"""

from __future__ import annotations

import http.client
import logging
import selectors
import socket
import ssl
import time
from collections.abc import Callable

import urllib3

from app.call.answer import CHUNK, Relay, broke_off
from app.errors import UpstreamUnreachable
from app.server.framing import BadFraming, framing_of

log = logging.getLogger(__name__)
HIGH_WATER = 256 * 1024  # client bytes held before the upstream read pauses
READS_PER_TURN = 16  # reads per readiness event, so one busy stream cannot starve the others
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def pollable(relay: Relay) -> bool:
    """Tell whether a relay's upstream body can be read off its socket (a plain chunked/length/close body)."""
    response = relay.response
    if not relay.stream or response is None or relay.pending:
        return False
    raw = response.raw
    if type(raw) is not urllib3.HTTPResponse or raw._has_decoded_content or len(raw._decoded_buffer):
        return False
    fp = raw._fp
    connection = raw.connection
    return (type(fp) is http.client.HTTPResponse and fp.fp is not None and connection is not None
            and isinstance(connection.sock, socket.socket))


class PolledRelay:
    """The rest of one streamed answer, moved by the poller; `done(self, keep_alive)` once it is over."""

    def __init__(self, relay: Relay, client: socket.socket, chunked: bool,
                 done: Callable[[PolledRelay, bool], None]) -> None:
        assert relay.response is not None
        self.relay = relay
        self.raw = relay.response.raw
        self.fp: http.client.HTTPResponse = self.raw._fp  # type: ignore[assignment]  # pollable() checked it
        self.upstream: socket.socket = self.raw.connection.sock  # type: ignore[union-attr]
        self.framing = framing_of(self.fp)
        self.idle_s = self.upstream.gettimeout()  # the upstream read timeout, as a thread's socket would have it
        self.client = client
        self.chunked = chunked
        self.done = done
        self.poller: selectors.BaseSelector | None = None
        self.out = bytearray()  # client bytes its socket did not take yet
        self.reading = False  # registered for upstream reads
        self.writing = False  # registered for the client's socket to take more
        self.read_ahead = self.fp.fp is not None  # http.client may hold bytes it read ahead: those go first
        self.drained = False  # the last read emptied the socket: wait for the poller rather than read again
        self.ending = False  # the last bytes are queued; over once they are written
        self.over = False
        self.moved = time.monotonic()  # last time bytes came from the upstream or went to the client

    # Starting, and the poller's calls.

    def start(self, poller: selectors.BaseSelector) -> None:
        """Take both sockets off blocking mode and relay what is already here, then what comes."""
        self.poller = poller
        self.client.setblocking(False)
        self.upstream.setblocking(False)
        self._resume()

    def on_upstream(self, _sock: object = None) -> None:
        """Relay what the upstream has sent, a bounded number of reads per turn."""
        try:
            turns = 0
            while not (self.over or self.ending or len(self.out) > HIGH_WATER):
                if not self._step():
                    return
                turns += 1
                # Past the turn, level-triggered polling calls back; TLS bytes already decrypted would not.
                if turns >= READS_PER_TURN and not self._tls_pending():
                    return
        except UpstreamUnreachable as err:
            self._abort(err)
        except Exception as err:  # noqa: BLE001 - a failure of ours ends this stream, never the worker's loop
            log.exception("trace_id=%s stream relay failed", self.relay.ctx.trace_id)
            self._abort(UpstreamUnreachable(f"The stream could not be relayed: {type(err).__name__}"))

    def on_client(self, _sock: object = None) -> None:
        """Write what the client's socket can take; go back to reading the upstream once it has taken it all."""
        if not self._flush():
            return
        if self.ending:
            self._finish(keep=True)
        else:
            self._resume()

    def expired(self, now: float) -> bool:
        """Tell whether the stream has been silent (neither side moved) for longer than the read timeout."""
        return self.idle_s is not None and not self.over and now - self.moved > self.idle_s

    def time_out(self) -> None:
        """End a silent stream: the upstream's silence as its read timeout, a stuck client as gone."""
        if self.out:
            self._client_gone()
        else:
            self._abort(broke_off(self.relay.response, TimeoutError("timed out")))  # type: ignore[arg-type]

    def cut(self) -> None:
        """Shut both sockets (the worker stops); the call is recorded by the shutdown, not here."""
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # One step: read, unframe, translate, deliver.

    def _step(self) -> bool:
        """Move one piece of the body; return False when there is nothing more to do this turn."""
        transform = self.relay.answer.transform
        if transform is not None and transform.broken:
            return self._end(b"", reusable=False)  # the error event is out; the rest is not read
        if transform is not None and transform.backlog:
            body = b""
        else:
            data = self._read()
            if data is None:
                return False
            if data:
                body = self.framing.feed(data)
            else:
                self._closed_by_upstream()
                body = b""
        out = transform.feed(body) if transform is not None else body
        if self.framing.done and not (transform is not None and (transform.backlog or transform.broken)):
            tail = transform.finish() if transform is not None else b""
            return self._end(out + tail, reusable=self.framing.exact)
        if out:
            self._queue(self.relay.deliver(out))
            self._flush()
        return not self.over

    def _read(self) -> bytes | None:
        """Return the next bytes from the upstream: first what http.client read ahead; None when none are here."""
        try:
            if self.read_ahead:
                buffered = self.fp.fp.peek() if self.fp.fp is not None else b""
                if buffered:
                    return self.fp.fp.read(len(buffered))  # within the buffer: no read of the socket
                self.read_ahead = False
            if self.drained:
                self.drained = False
                return None  # the last read took all there was: the poller calls back when more comes
            data = self.upstream.recv(CHUNK)
        except _WOULD_BLOCK:
            return None
        except OSError as err:
            raise broke_off(self.relay.response, err) from err  # type: ignore[arg-type]
        self.moved = time.monotonic()
        # A short read emptied the socket's buffer: one more read now would only fail (a system call and an
        # exception per event). TLS may hold decrypted bytes the poller does not see, so it reads on.
        self.drained = 0 < len(data) < CHUNK and not self._tls_pending()
        return data

    def _tls_pending(self) -> bool:
        return isinstance(self.upstream, ssl.SSLSocket) and self.upstream.pending() > 0

    def _closed_by_upstream(self) -> None:
        try:
            self.framing.closed()
        except BadFraming as err:
            raise broke_off(self.relay.response, http.client.IncompleteRead(b"")) from err  # type: ignore[arg-type]

    # The client side.

    def _queue(self, chunk: bytes) -> None:
        """Queue a piece for the client, as a chunk when the answer is chunked."""
        self.out += b"%X\r\n%b\r\n" % (len(chunk), chunk) if self.chunked else chunk

    def _flush(self) -> bool:
        """Write queued bytes; return True once none are left (False: waiting on the client, or it is gone)."""
        while self.out:
            try:
                sent = self.client.send(self.out)
            except _WOULD_BLOCK:
                self._watch_client()
                return False
            except OSError:
                self._client_gone()
                return False
            del self.out[:sent]
            self.moved = time.monotonic()
        return not self.over

    def _watch_client(self) -> None:
        """Stop reading the upstream and wait for the client's socket to take more."""
        self._stop_reading()
        if not self.writing:
            assert self.poller is not None
            self.poller.register(self.client, selectors.EVENT_WRITE, self.on_client)
            self.writing = True

    def _resume(self) -> None:
        """Read the upstream again: relay what is here now, and have the poller call back for more."""
        if self.writing:
            self.writing = False
            self._unregister(self.client)
        if not self.reading and not self.over:
            assert self.poller is not None
            self.poller.register(self.upstream, selectors.EVENT_READ, self.on_upstream)
            self.reading = True
        self.on_upstream()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self._unregister(self.upstream)

    # Ends: clean, upstream broke off, client gone.

    def _end(self, last: bytes, reusable: bool) -> bool:
        """Queue the body's last bytes and the end of the chunked answer; finish once they are written."""
        self.relay.finished = True
        self._release(reusable)
        if last:
            self._queue(self.relay.deliver(last))
        if self.chunked:
            self.out += b"0\r\n\r\n"
        self.ending = True
        if self._flush():
            self._finish(keep=True)
        return False

    def _abort(self, err: UpstreamUnreachable) -> None:
        """The upstream broke off: the client's connection is cut, never ended as if the answer were whole."""
        if self.over:
            return
        self.relay.aborted(err)
        self._release(reusable=False)
        self._finish(keep=False)

    def _client_gone(self) -> None:
        if self.over:
            return
        self.relay.finished = False
        self._release(reusable=False)
        self._finish(keep=False)

    def _release(self, reusable: bool) -> None:
        """Give the upstream connection back to its pool, or close it when its state is not known to be clean."""
        self._stop_reading()
        if self.relay.response is None:
            return
        self.relay.response = None  # Relay.close must not touch it again
        try:
            if reusable:
                self.upstream.settimeout(self.idle_s)
                self.fp.close()  # as http.client does at a body's end: the connection may send the next request
            else:
                self.raw.close()
            self.raw.release_conn()
        except Exception:  # noqa: BLE001 - a connection that cannot be handed back is dropped
            self.raw.close()

    def _finish(self, keep: bool) -> None:
        """Record the call (Relay.close) and hand the client connection back to the worker."""
        if self.over:
            return
        self.over = True
        self._stop_reading()
        if self.writing:
            self.writing = False
            self._unregister(self.client)
        try:
            self.relay.close()
        except Exception:  # noqa: BLE001 - recording must never take the worker's loop down
            log.exception("trace_id=%s could not close the relay", self.relay.ctx.trace_id)
        self.done(self, keep and self.relay.finished)

    def _unregister(self, sock: socket.socket) -> None:
        if self.poller is None:
            return
        try:
            self.poller.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass
