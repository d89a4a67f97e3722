"""PorticoWorker: gunicorn's gthread worker, with request heads read on the poller and read deadlines.

What it changes (docs/deploy.md, "Slow clients" and "Shutdown"):

- A thread takes a connection only once its request head (request line and headers) is here: the head is
  read without blocking on the worker's event loop, so clients that send their headers slowly cost a
  poller registration and a small buffer, never a thread. A head not complete within the header deadline
  is answered 408 and closed.
- The body must arrive within the body deadline (a base plus time per MiB); past it the call fails with
  408 and the connection is closed.
- An answer that leaves a refused body unread (docs/deploy.md, Early refusals) says `Connection: close`;
  the worker then reads and discards what the client still sends, for up to 2 s, before it closes.
- A worker whose threads all hold a connection (serving it, or with its head here and queued for a thread)
  stops accepting until one is free, so the kernel hands new connections to a worker that has a free thread
  (docs/decisions.md, Workers).
- Told to stop, the worker closes its listening sockets at once, so new connections are refused (or go to
  a new master) instead of waiting unanswered; at the end of the graceful period it records the calls it
  cuts (status 499, error `shutdown`) before it exits.

Everything else is gthread's: keep-alive, max_requests, the graceful drain.
"""

from __future__ import annotations

import errno
import gc
import json
import logging
import math
import os
import selectors
import socket
import sys
import threading
import time
from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http.errors import NoMoreData
from gunicorn.http2 import negotiation
from gunicorn.workers import gthread

from app.call.answer import Relay
from app.errors import RequestTimeout
from app.server import inflight
from app.server.reader import ClientReader, ReadDeadline
from app.server.relay import PolledRelay, pollable
from app.settings import Settings

# gunicorn's graceful_timeout is when the master kills a stopping worker. The worker cuts what is still in
# flight this much earlier, so it can record those calls and flush the request log before it goes.
CUT_MARGIN_S = 3
HEAD_BUFFER_MAX = 64 * 1024  # past this an unfinished head is read by a thread (still within the deadline)
HEAD_READ = 16 * 1024
BODY_S_PER_MIB = 1.0  # the body deadline grows by this per MiB: 60 s + 1 s/MiB by default
STOP_LINGER_S = getattr(gthread, "STOP_KEEPALIVE_LINGER", 2.0)

# After an answer that leaves a body unread, the worker reads and discards what still comes for this long
# (gunicorn's own linger stops after 64 KiB, and closing on unread bytes resets the connection).
LINGER_S = 2.0
LINGER_READ = 256 * 1024

_serving = threading.local()  # the request this thread serves: the app may ask for its connection to close


def close_after_answer() -> None:
    """Have the worker close this thread's connection after the answer, which then says `Connection: close`.

    gunicorn drops a Connection header set by the app (WSGI forbids hop-by-hop headers); this is the app's way to
    say the rest of a refused body will not be read. The worker then lingers after the answer so the client reads
    it rather than a reset (docs/deploy.md, Early refusals). Outside PorticoWorker it does nothing.
    """
    request = getattr(_serving, "request", None)
    if request is not None:
        request.must_close = True
        _serving.linger = True


def linger(sock: socket.socket, seconds: float = LINGER_S) -> None:
    """End the answer with a FIN, then read and discard what the client still sends, until it stops or time is up."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    deadline = time.monotonic() + seconds
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(LINGER_READ):
                break  # the client read the answer and closed
    except OSError:  # timed out, or the client reset: nothing more to wait for
        pass
    try:
        sock.shutdown(socket.SHUT_RD)  # gthread's close then does not wait again on an idle client
    except OSError:
        pass


class ClientConn(gthread.TConn):  # type: ignore[misc]
    """A client connection whose request head is read on the poller before a thread takes it."""

    initialized: bool  # gthread's TConn attributes used here
    parser: Any

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any, preread: bool) -> None:
        super().__init__(cfg, sock, client, server)
        self.reader = ClientReader(sock) if preread else None
        self.head = bytearray()
        self.scanned = 0
        self.head_ready = False
        self.deadline = 0.0
        self.relay: PolledRelay | None = None  # its answer's stream, once a thread hands it to the poller
        self.keep_after_relay = False

    def init(self) -> None:
        """Build gunicorn's parser on the deadline-bound reader (TLS, h2c and PROXY keep gthread's way)."""
        if self.initialized or self.reader is None:
            super().init()
            return
        self.initialized = True
        self.sock.setblocking(True)
        self.parser = http.get_parser(self.cfg, self.reader, self.client)

    def head_complete(self) -> bool:
        """Return True once the buffer holds a blank line (the head's end), or is as large as the poller reads."""
        start = max(self.scanned - 3, 0)  # a new read may finish a terminator begun in the last one
        self.scanned = len(self.head)
        # A bare-LF head ends here too: gunicorn's parser then refuses it, rather than the deadline.
        return (self.head.find(b"\r\n\r\n", start) >= 0 or self.head.find(b"\n\n", start) >= 0
                or len(self.head) >= HEAD_BUFFER_MAX)


def preread_allowed(cfg: Any, client: Any) -> bool:
    """Return True when the poller may read the head: plain HTTP/1 (TLS, PROXY, uwsgi, h2c preface: not)."""
    return (not cfg.is_ssl and cfg.proxy_protocol == "off" and getattr(cfg, "protocol", "http") == "http"
            and not negotiation.prior_knowledge_allowed(cfg, client))


def declared_length(req: Any) -> int:
    """Return the request's Content-Length, 0 when absent or chunked."""
    for name, value in req.headers:
        if name == "CONTENT-LENGTH":
            return int(value) if value.isdigit() else 0
    return 0


def freeze_startup_objects() -> None:
    """Move what the app built at start-up out of the garbage collector's sight (gc.freeze).

    The app's modules, tables and caches are some 70,000 objects that live as long as the worker; every full
    collection walked them again, and with a thousand streams in flight those pauses reached 120-260 ms
    holding the GIL, which stalled every stream of the worker and every call it was starting
    (docs/decisions.md, Streams on the event loop). Frozen, they are never scanned; what calls create is
    collected as before.
    """
    gc.collect()
    gc.freeze()


def completed(result: bool) -> Future[bool]:
    """Return a future already done with result, as gthread's finish_request takes a thread's outcome."""
    done: Future[bool] = Future()
    done.set_result(result)
    return done


def timeout_answer(message: str) -> bytes:
    """Return a whole 408 response with the gateway's JSON error body, closing the connection."""
    body = json.dumps(RequestTimeout(message).body()).encode()
    head = ("HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class PorticoWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gthread, with request heads read on the poller, client read deadlines and a recorded shutdown."""

    alive: bool  # gunicorn's worker attributes used here

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = Settings()
        self.late_head = b""
        self.waiting: dict[ClientConn, None] = {}  # watched by the poller for their head
        self.next_expiry = math.inf  # the earliest head deadline among them
        self.busy: set[ClientConn] = set()  # handed to a thread: served, or queued for one with its head here
        self.relays: dict[PolledRelay, ClientConn] = {}  # streams the poller relays, no thread held
        self.next_relay_check = self.next_notify = self.next_parent_check = 0.0
        self.cut = 0

    def init_process(self) -> None:
        """Drain for gunicorn's graceful timeout less the cut margin, then serve (gthread's run)."""
        self.cfg.set("graceful_timeout", max(self.cfg.graceful_timeout - CUT_MARGIN_S, 0))
        super().init_process()

    def load_wsgi(self) -> None:
        """Load the app, take the read deadlines from its settings, and freeze what start-up built."""
        super().load_wsgi()
        gateway = getattr(self.wsgi, "extensions", {}).get("portico")
        if gateway is not None:
            self.limits = gateway.settings
        freeze_startup_objects()
        self.late_head = timeout_answer(
            f"The request head (request line and headers) did not arrive within {self.limits.header_timeout_s} s")

    # Connections: accepted, their head read on the poller, then handed to a thread.

    def accept(self, listener: Any) -> None:
        """Accept a client; its request head is read on the poller, not by a thread."""
        if not self._accepting:
            return  # paused (or stopped) earlier in this poller round: the client stays in the kernel's backlog
        try:
            sock, client = listener.accept()
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.enqueue_req(ClientConn(self.cfg, sock, client, listener.getsockname(),
                                    preread_allowed(self.cfg, client)))

    def enqueue_req(self, conn: ClientConn) -> None:
        """Hand a connection to a thread once its request head is here; until then, read it on the poller."""
        if conn.reader is None or conn.head_ready:
            conn.head_ready = False
            self.busy.add(conn)
            super().enqueue_req(conn)
            if self._accepting and self.no_free_thread():
                self.set_accept_enabled(False)
            return
        if conn.parser is not None:
            conn.head[:0] = conn.parser.unreader.take_buffered()  # read ahead by the last request
        if conn.sock.gettimeout() != 0.0:
            conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.limits.header_timeout_s
        conn.scanned = 0
        self.read_head(conn)

    def read_head(self, conn: ClientConn, _sock: Any = None) -> None:
        """Read what the client sent of its request head; hand the connection to a thread once it is whole."""
        if not conn.head_complete():
            try:
                data = conn.sock.recv(HEAD_READ)
            except (BlockingIOError, InterruptedError):
                self.watch(conn)
                return
            except OSError:
                self.drop(conn)
                return
            if not data:
                self.drop(conn)  # closed before (or while) sending a request
                return
            conn.head += data
            if not conn.head_complete():
                self.watch(conn)
                return
        self.unwatch(conn)
        conn.head_ready = True
        self.enqueue_req(conn)

    def watch(self, conn: ClientConn) -> None:
        """Have the poller call read_head when more of the head arrives, until the header deadline."""
        if conn in self.waiting:
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.read_head, conn))
        self.waiting[conn] = None
        self.next_expiry = min(self.next_expiry, conn.deadline)

    def unwatch(self, conn: ClientConn) -> None:
        """Stop watching a connection for its head."""
        if self.waiting.pop(conn, False) is False:
            return
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass

    def drop(self, conn: ClientConn) -> None:
        """Close a connection that no thread holds."""
        self.unwatch(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Close what gthread closes, connections whose head did not arrive in time, and silent streams."""
        super().murder_pending()
        self.expire_relays()
        now = time.monotonic()
        if now < self.next_expiry:
            return
        self.next_expiry = math.inf
        for conn in list(self.waiting):
            if conn.deadline <= now:
                self.head_too_slow(conn)
            else:
                self.next_expiry = min(self.next_expiry, conn.deadline)

    def head_too_slow(self, conn: ClientConn) -> None:
        """Answer 408 to a client that started a request but did not finish its head in time; close it."""
        if conn.head:
            self.log.debug("request head from %s not complete within %s s: 408", conn.client,
                           self.limits.header_timeout_s)
            try:
                for _ in range(4):  # unread bytes would turn the close into a reset; a flood is not waited out
                    if not conn.sock.recv(HEAD_READ):
                        break
            except OSError:
                pass
            try:
                conn.sock.send(self.late_head)
            except OSError:
                pass
        self.drop(conn)

    def evict_idle(self, count: int) -> None:
        """Close up to count of the longest-idle kept-alive connections, to make room for new clients."""
        while count > 0 and self.keepalived_conns:
            conn = self.keepalived_conns.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.nr_conns -= 1
            conn.close()
            count -= 1

    def murder_keepalived(self, force: bool = False) -> None:
        """Close expired kept-alive connections; a full worker also gives up its longest-idle ones."""
        super().murder_keepalived(force)
        # A full worker stops accepting: idle kept-alive connections are the cheapest room for new clients.
        self.evict_idle(self.nr_conns - self.worker_connections + 1)

    # In a thread: the request, with its head replayed and its reads bound by deadlines.

    def handle(self, conn: ClientConn) -> Any:
        """Serve a request in a thread: the parser reads the buffered head first, the rest within the deadline."""
        if conn.reader is not None:
            conn.init()
            if conn.head:
                conn.parser.unreader.unread(bytes(conn.head))
                conn.head.clear()
            conn.reader.deadline = ReadDeadline(max(conn.deadline - time.monotonic(), 0.0), lambda _: NoMoreData())
        try:
            return super().handle(conn)
        finally:
            if conn.reader is not None:
                conn.reader.deadline = None
            inflight.forget_thread()

    def handle_request(self, req: Any, conn: ClientConn) -> Any:
        """Serve one request; a body that does not arrive within the body deadline fails it with 408."""
        if conn.reader is not None:
            conn.reader.deadline = ReadDeadline(self.limits.body_timeout_s, partial(self.body_too_slow, req),
                                                declared_length(req), BODY_S_PER_MIB)
        _serving.request, _serving.linger = req, False
        try:
            keepalive = self.serve(req, conn)
            if _serving.linger:
                linger(conn.sock)  # here, in the thread: gthread closes connections on its event loop
            return keepalive
        finally:
            _serving.request = None
            if conn.reader is not None:
                conn.reader.deadline = None

    def serve(self, req: Any, conn: ClientConn) -> bool:
        """Run the app and write its answer, as gthread does; a stream goes to the poller after its first bytes.

        Returns whether the connection stays open for another request (gthread's handle_request contract).
        """
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive or len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            body = self.wsgi(environ, resp.start_response)
            handed_off = False
            try:
                handed_off = self.write_answer(body, resp, environ, conn)
            finally:
                self.log.access(resp, req, environ, datetime.now() - started)
                if not handed_off and hasattr(body, "close"):
                    body.close()
            return not resp.should_close()
        except Exception:
            if resp is not None and resp.headers_sent:
                # An answer already started cannot become an error page: the connection is cut.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def write_answer(self, body: Any, resp: Any, environ: dict[str, Any], conn: ClientConn) -> bool:
        """Write an answer; return True when a stream was handed to the poller after its first bytes instead."""
        if isinstance(body, Relay) and body.stream and conn.reader is not None and self.alive:
            first = next(body, b"")  # the head and first bytes go out from this thread
            if first:
                resp.write(first)
            else:
                resp.send_headers()
            if not body.finished and pollable(body):
                conn.relay = PolledRelay(body, conn.sock, resp.chunked, self.relay_done)
                inflight.hand_off()  # the call goes on after this thread's request is over
                return True
            for chunk in body:
                resp.write(chunk)
        elif isinstance(body, environ["wsgi.file_wrapper"]):
            resp.write_file(body)
        else:
            for chunk in body:
                resp.write(chunk)
        resp.close()
        return False

    def body_too_slow(self, req: Any, deadline: ReadDeadline) -> Exception:
        """Return the 408 the app answers for a body that came too slowly; the connection closes after it."""
        req.must_close = True
        return RequestTimeout(f"The request body did not arrive within {deadline.allowed_s:.0f} s")

    def finish_request(self, conn: ClientConn, fs: Any) -> None:
        """Take a connection back from its thread: relay its stream, keep it alive, or close it off the loop."""
        self.busy.discard(conn)
        relay = conn.relay
        if relay is not None:
            conn.keep_after_relay = not fs.cancelled() and fs.exception() is None and bool(fs.result())
            self.relays[relay] = conn
            relay.start(self.poller)
            return
        if fs.cancelled() or fs.exception() is not None or fs.result() is False:
            self.close_softly(conn)
            return
        super().finish_request(conn, fs)

    def close_softly(self, conn: ClientConn) -> None:
        """Close a connection after its answer, in a thread: gunicorn's graceful close waits for the client's FIN."""
        self.nr_conns -= 1
        self.tpool.submit(conn.close, True)

    # Streams relayed on the poller (app/server/relay.py).

    def relay_done(self, relay: PolledRelay, keep: bool) -> None:
        """Take a connection back once its stream is over: keep it alive, close it, or cut it (upstream broke)."""
        conn = self.relays.pop(relay)
        conn.relay = None
        if keep and conn.keep_after_relay:
            super().finish_request(conn, completed(True))
        elif relay.relay.finished:
            self.close_softly(conn)
        else:
            self.nr_conns -= 1
            conn.close()  # a cut stream: the client must not take it for a whole answer

    def notify(self) -> None:
        """Tell the master this worker is alive, at most once a second: gthread's loop turns once per event."""
        now = time.monotonic()
        if now >= self.next_notify:
            self.next_notify = now + 1.0
            super().notify()

    def is_parent_alive(self) -> bool:
        """Check the master is still ours, at most once a second (a system call each loop turn otherwise)."""
        now = time.monotonic()
        if now < self.next_parent_check:
            return True
        self.next_parent_check = now + 1.0
        return bool(super().is_parent_alive())

    def expire_relays(self) -> None:
        """End streams silent for longer than the upstream read timeout (checked about once a second)."""
        now = time.monotonic()
        if now < self.next_relay_check:
            return  # the loop turns once per event: a scan of every stream each turn would cost more than the events
        self.next_relay_check = now + 1.0
        for relay in [relay for relay in self.relays if relay.expired(now)]:
            relay.time_out()

    def no_free_thread(self) -> bool:
        """Return True when every thread has a connection, serving it or with its head here and waiting for it."""
        return len(self.busy) >= self.cfg.threads

    # Accepting, and stopping.

    def set_accept_enabled(self, enabled: bool) -> None:
        """Stop or resume accepting; resume only with a free thread; when stopping for good, close the listeners.

        A worker with no free thread leaves new connections to the kernel, which hands them to a worker that is
        accepting (docs/decisions.md, Workers). gthread's loop asks to resume every round; it does once a thread
        is free, and never after the worker is told to stop.
        """
        if enabled and (not self.alive or self.no_free_thread()):
            return
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self.stop_listening()

    def stop_listening(self) -> None:
        """Close this worker's listeners (the kernel refuses new connections once no process holds them)."""
        for listener in self.sockets:
            listener.close()
        # A connection that has sent nothing yet lingers no longer than gthread's kept-alive ones.
        linger = time.monotonic() + STOP_LINGER_S
        for conn in self.waiting:
            if not conn.head and conn.deadline > linger:
                conn.deadline = linger
                self.next_expiry = min(self.next_expiry, linger)

    def run(self) -> None:
        """Serve and drain as gthread does; then record and cut the calls the graceful period did not see end."""
        try:
            super().run()
        finally:
            self.cut_in_flight()

    def cut_in_flight(self) -> None:
        """Record the calls still in flight as cut (499, `shutdown`) and end their connections."""
        self.cut = inflight.cut_all()
        for relay in self.relays:
            relay.cut()
        for conn in list(self.busy):
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.cut:
            self.log.warning("stopping: cut %d call(s) still in flight (recorded with status 499, error "
                             "shutdown)", self.cut)

    def exit_if_cut(self) -> None:
        """Exit now when connections were cut: their threads would keep the process alive until SIGKILL.

        Call it last, once the request log is flushed (gunicorn.conf.py worker_exit).
        """
        if not self.cut and not self.busy and not self.relays:
            return
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
