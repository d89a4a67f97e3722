"""The capacity section's load generator: many streams on raw asyncio sockets in one process (no thread each)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from bench.procs import LOOPBACK

STAMP = re.compile(rb"@t=([0-9.]+)@")
STREAM_BODY = b'{"model":"cap","stream":true,"max_tokens":64,"messages":[{"role":"user","content":"hi"}]}'
SHORT_BODY = b'{"model":"cap","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'


@dataclass
class StreamResult:
    """One stream: ms to first byte, each event's delay (upstream stamp to arrival), whether it ended cleanly."""

    ttfb_ms: float | None = None
    delays_ms: list[float] = field(default_factory=list)
    complete: bool = False
    error: str | None = None


def request_bytes(path: str, headers: dict[str, str], body: bytes) -> bytes:
    """Return an HTTP/1.1 POST with a Content-Length body."""
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body


async def _dechunk(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """Yield the pieces of a chunked body as they arrive, ending at the last (empty) chunk."""
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        yield await reader.readexactly(size)
        await reader.readline()


async def one_stream(port: int, path: str, headers: dict[str, str], events: int, timeout: float) -> StreamResult:
    """Open a connection, send one streamed call and note first byte and every stamped event's delay."""
    result = StreamResult()
    try:
        await asyncio.wait_for(_stream(port, path, headers, events, result), timeout)
    except Exception as err:  # noqa: BLE001 -- every failure is a counted error, not a crash of the run
        result.error = type(err).__name__ + (f": {err}" if str(err) else "")
    return result


async def _stream(port: int, path: str, headers: dict[str, str], events: int, result: StreamResult) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=1 << 20)
    try:
        sent = time.perf_counter()
        writer.write(request_bytes(path, headers, STREAM_BODY))
        head = await reader.readuntil(b"\r\n\r\n")
        result.ttfb_ms = (time.perf_counter() - sent) * 1000
        status = head.split(b" ", 2)[1]
        if status != b"200" or b"chunked" not in head.lower():
            raise RuntimeError(f"answered {status.decode()}: {(await reader.read(300))!r}")
        pending, done = b"", False
        async for piece in _dechunk(reader):
            now = time.time()
            pending += piece
            *whole, pending = pending.split(b"\n\n")
            for event in whole:
                if match := STAMP.search(event):
                    result.delays_ms.append((now - float(match.group(1))) * 1000)
                done = done or event.strip() == b"data: [DONE]"
        result.complete = done and len(result.delays_ms) == events
    finally:
        writer.close()


async def short_calls(port: int, headers: dict[str, str], every_s: float, stop: asyncio.Event) -> list[float]:
    """Make a short non-streamed call every `every_s` on a fresh connection until stopped; return ms each."""
    taken: list[float] = []
    tasks = []
    while not stop.is_set():
        tasks.append(asyncio.create_task(_short(port, headers)))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
    for outcome in await asyncio.gather(*tasks, return_exceptions=True):
        taken.append(outcome if isinstance(outcome, float) else float("inf"))
    return taken


async def _short(port: int, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(request_bytes("/v1/chat/completions", {**headers, "Connection": "close"}, SHORT_BODY))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 120)
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        await (reader.readexactly(int(length.group(1))) if length else reader.read())
        if head.split(b" ", 2)[1] != b"200":
            raise RuntimeError("short call failed")
        return (time.perf_counter() - started) * 1000
    finally:
        writer.close()


async def large_calls(port: int, headers: dict[str, str], size: int, upload: bool, stop: asyncio.Event) -> int:
    """Send `size`-byte bodies (upload) or fetch `size`-byte answers back to back until stopped; return how many."""
    done = 0
    body = b'{"model":"cap","messages":[{"role":"user","content":"' + b"x" * size + b'"}]}' if upload else SHORT_BODY
    extra = {} if upload else {"x-fake-body-bytes": str(size), "x-portkey-forward-headers": "x-fake-body-bytes"}
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=1 << 20)
        try:
            writer.write(request_bytes("/v1/chat/completions", {**headers, **extra, "Connection": "close"}, body))
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            await (reader.readexactly(int(length.group(1))) if length else reader.read())
            if head.split(b" ", 2)[1] != b"200":
                raise RuntimeError(f"a large call answered {head[:40]!r}")
            done += 1
        finally:
            writer.close()
    return done
