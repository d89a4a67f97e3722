"""A light asyncio stream server for the capacity section: a thousand paced SSE streams from one process.

    python -m bench.capacity_upstream --port 9991

POST /v1/chat/completions answers OpenAI chunks, POST /v1/messages Anthropic events, `x-fake-events` of them
`x-fake-event-interval-ms` apart, each text piece stamped "@t=<unix seconds>@" when written; a body without
"stream": true gets a small JSON answer, or `x-fake-body-bytes` bytes of JSON whitespace. The test fake
(tests/fakes/provider.py) spends a thread per stream.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

CHAT = json.dumps({"id": "chatcmpl-cap", "object": "chat.completion", "created": 0, "model": "cap",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                "finish_reason": "stop"}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _openai(text: str) -> bytes:
    return b"data: " + json.dumps({"id": "chatcmpl-cap", "object": "chat.completion.chunk", "created": 0,
                                   "model": "cap", "choices": [{"index": 0, "delta": {"content": text},
                                                                "finish_reason": None}]}).encode() + b"\n\n"


OPENAI_END = (b'data: {"id":"chatcmpl-cap","object":"chat.completion.chunk","created":0,"model":"cap",'
              b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
              b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\n\ndata: [DONE]\n\n')
ANTHROPIC_START = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_cap","type":"message",'
                   b'"role":"assistant","model":"cap","content":[],"stop_reason":null,"stop_sequence":null,'
                   b'"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
                   b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                   b'"content_block":{"type":"text","text":""}}\n\n')
ANTHROPIC_END = (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                 b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
                 b'"stop_sequence":null},"usage":{"output_tokens":5}}\n\n'
                 b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def _anthropic(text: str) -> bytes:
    return (b"event: content_block_delta\ndata: " + json.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}).encode()
        + b"\n\n")


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    """Read one request: path, lower-cased headers, body (Content-Length only)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length") or 0))
    return path, headers, body


async def _stream(writer: asyncio.StreamWriter, path: str, headers: dict[str, str]) -> None:
    """Write the paced stream, each event at start + i * interval (no drift)."""
    events = int(headers.get("x-fake-events", "50"))
    interval = int(headers.get("x-fake-event-interval-ms", "200")) / 1000
    anthropic = path.endswith("/messages")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    if anthropic:
        writer.write(_chunk(ANTHROPIC_START))
    start = time.monotonic()
    for index in range(events):
        delay = start + index * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        text = f"@t={time.time():.6f}@"
        writer.write(_chunk(_anthropic(text) if anthropic else _openai(text)))
        await writer.drain()
    writer.write(_chunk(ANTHROPIC_END if anthropic else OPENAI_END) + b"0\r\n\r\n")
    await writer.drain()


async def _large(writer: asyncio.StreamWriter, size: int) -> None:
    """Write a JSON answer of `size` bytes (the head-of-line case), a block at a time as the reader takes it."""
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
    block = b" " * 65536
    for start in range(0, size, len(block)):
        writer.write(block[:size - start])
        await writer.drain()


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer requests on one keep-alive connection until the peer closes it."""
    try:
        while (request := await _read_request(reader)) is not None:
            path, headers, body = request
            if b'"stream":true' in body.replace(b" ", b""):
                await _stream(writer, path, headers)
            elif "x-fake-body-bytes" in headers:
                await _large(writer, int(headers["x-fake-body-bytes"]))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(CHAT), CHAT))
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    """Listen on loopback until killed."""
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=4096, limit=1 << 20)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
