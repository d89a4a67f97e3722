"""The request body, spooled once so every attempt can replay it byte for byte (docs/decisions.md, Proxy)."""

from __future__ import annotations

import tempfile
from typing import IO, BinaryIO

from app.errors import BadRequest, PayloadTooLarge

CHUNK = 64 * 1024


class Body:
    """A request body held in memory up to a threshold, then in a temporary file."""

    def __init__(self, data: bytes = b"", file: IO[bytes] | None = None, size: int = 0) -> None:
        self._data = data
        self._file = file
        self.size = size if file is not None else len(data)

    @classmethod
    def read_from(cls, stream: BinaryIO, declared: int | None, limit: int, memory_limit: int) -> Body:
        """Spool a client body, refusing it with 413 as soon as it is over the limit."""
        if declared is not None and declared > limit:
            raise PayloadTooLarge(f"Request body of {declared} bytes is over the limit of {limit} bytes")
        buffer = bytearray()
        file: IO[bytes] | None = None
        size = 0
        try:
            while True:
                chunk = stream.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body is over the limit of {limit} bytes")
                if file is None and size > memory_limit:
                    file = tempfile.TemporaryFile(prefix="portico-body-")
                    file.write(buffer)
                    buffer.clear()
                if file is not None:
                    file.write(chunk)
                else:
                    buffer += chunk
        except (OSError, ValueError) as err:
            if file is not None:
                file.close()
            raise BadRequest("The request body could not be read completely (client disconnected?)") from err
        except PayloadTooLarge:
            if file is not None:
                file.close()
            raise
        if declared is not None and size < declared:
            if file is not None:
                file.close()
            raise BadRequest(f"The request body ended after {size} of {declared} declared bytes")
        if file is not None:
            file.flush()
            return cls(file=file, size=size)
        return cls(bytes(buffer))

    def payload(self) -> bytes | IO[bytes] | None:
        """Return what an attempt sends: the bytes, or the file rewound to its start."""
        if self._file is None:
            return self._data or None
        self._file.seek(0)
        return self._file

    def bytes(self) -> bytes:
        """Return the whole body as bytes (for JSON bodies that the gateway reads)."""
        if self._file is None:
            return self._data
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        """Delete the temporary file, if any."""
        if self._file is not None:
            self._file.close()
