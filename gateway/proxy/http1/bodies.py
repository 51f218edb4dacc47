"""Bodies: copy one between streams, or find where one ends as its bytes pass (RFC 9112 6, 7)."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable

from gateway.proxy.errors import BadRequest, BadResponse, GatewayError, IncompleteBody
from gateway.proxy.http1.grammar import (
    _CHUNK_LINE,
    Framing,
    FramingKind,
    _TRAILER_LINE,
)


_READ_SIZE = 1 << 16
# RFC 9110 6.5.1: fields that frame, route, authenticate or describe the content are not allowed in
# trailers, and a recipient that merged them would be desynchronised (RFC 9112 7.1.2): refused.
_NOT_IN_TRAILERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"content-encoding",
        b"content-type",
        b"content-range",
        b"authorization",
        b"proxy-authorization",
        b"set-cookie",
        b"expect",
    }
)


def _forbidden_trailer(line: bytes) -> bool:
    return line.partition(b":")[0].strip().lower() in _NOT_IN_TRAILERS
_MAX_CHUNK_LINE = 4096
_MAX_TRAILER_BYTES = 1 << 16


async def copy_body(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framing: Framing,
    *,
    on_bytes: Callable[[int], None] | None = None,
    response: bool = False,
    dechunk: bool = False,
    prefix: bytes = b"",
) -> None:
    """Stream one body from ``reader`` to ``writer``, never holding more than one read of it.

    LENGTH copies exactly n bytes; CHUNKED passes the chunks, extensions and trailers through
    verbatim while parsing the sizes to find the end (``dechunk=True`` writes only the data, for
    HTTP/1.0 clients); UNTIL_CLOSE copies until EOF.  ``on_bytes`` gets every count written.
    ``prefix`` (the message head) leaves in the same write as the first body bytes: one send
    system call for a small message instead of two.
    Raises ``IncompleteBody`` on an early EOF, and on malformed chunk framing ``BadRequest(400)``
    (``response=False``, a client's body) or ``BadResponse`` (``response=True``).
    """
    kind = framing.kind
    if kind is FramingKind.LENGTH:
        await _copy_exact(reader, writer, framing.length, on_bytes, prefix)
    elif kind is FramingKind.CHUNKED:
        await _copy_chunked(reader, writer, on_bytes, response, dechunk, prefix)
    elif kind is FramingKind.UNTIL_CLOSE:
        pending = prefix
        while data := await reader.read(_READ_SIZE):
            writer.write(pending + data if pending else data)
            pending = b""
            if on_bytes is not None:
                on_bytes(len(data))
            await writer.drain()
        if pending:
            writer.write(pending)
    elif prefix:
        writer.write(prefix)


async def _copy_exact(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    n: int,
    on_bytes: Callable[[int], None] | None,
    prefix: bytes = b"",
) -> None:
    remaining = n
    pending = prefix
    while remaining:
        data = await reader.read(min(remaining, _READ_SIZE))
        if not data:
            if pending:
                writer.write(pending)
            raise IncompleteBody(f"body ended after {n - remaining} of {n} bytes")
        writer.write(pending + data if pending else data)
        pending = b""
        remaining -= len(data)
        if on_bytes is not None:
            on_bytes(len(data))
        await writer.drain()
    if pending:
        writer.write(pending)


def _buffered(reader: asyncio.StreamReader) -> int:
    """Bytes the reader holds already (StreamReader keeps them in ``_buffer``; stable since 3.4)."""
    return len(reader._buffer)  # noqa: SLF001


async def _copy_chunked(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    on_bytes: Callable[[int], None] | None,
    response: bool,
    dechunk: bool,
    prefix: bytes = b"",
) -> None:
    """Chunk lines, data and CRLFs are gathered and written together while the input is buffered:
    a many-chunk body costs one send per read, not three per chunk."""
    out: list[bytes] = [prefix] if prefix else []
    out_size = len(prefix)

    def malformed(message: str) -> GatewayError:
        return BadResponse(message) if response else BadRequest(400, message)

    async def flush() -> None:
        nonlocal out_size
        if out:
            writer.write(b"".join(out))
            out.clear()
            out_size = 0
            await writer.drain()

    async def before_read(needed: int) -> None:
        if out and (out_size >= _READ_SIZE or _buffered(reader) < needed):
            await flush()

    def emit(data: bytes, framing: bool) -> None:
        nonlocal out_size
        if framing and dechunk:
            return
        out.append(data)
        out_size += len(data)
        if on_bytes is not None:
            on_bytes(len(data))

    async def read_line() -> bytes:
        await before_read(3)
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError:
            raise IncompleteBody("chunked body ended before its last chunk") from None
        except asyncio.LimitOverrunError:
            raise malformed("chunk-size line too long") from None
        if len(line) > _MAX_CHUNK_LINE:
            raise malformed("chunk-size line too long")
        return line

    while True:
        line = await read_line()
        m = _CHUNK_LINE.fullmatch(line)
        if m is None:
            raise malformed(f"invalid chunk-size line {line[:40]!r}")
        emit(line, framing=True)
        size = int(m.group(1), 16)
        if size == 0:
            break
        remaining = size
        while remaining:
            await before_read(1)
            data = await reader.read(min(remaining, _READ_SIZE))
            if not data:
                raise IncompleteBody(f"chunk ended after {size - remaining} of {size} bytes")
            remaining -= len(data)
            emit(data, framing=False)
        await before_read(2)
        try:
            crlf = await reader.readexactly(2)
        except asyncio.IncompleteReadError:
            raise IncompleteBody("chunked body ended after a chunk's data") from None
        if crlf != b"\r\n":
            raise malformed("chunk data not followed by CRLF")
        emit(crlf, framing=True)

    trailer_bytes = 0
    while True:
        line = await read_line()
        emit(line, framing=True)
        if line == b"\r\n":
            break
        trailer_bytes += len(line)
        if trailer_bytes > _MAX_TRAILER_BYTES:
            raise malformed("trailer section too large")
        if _TRAILER_LINE.fullmatch(line) is None:
            raise malformed(f"invalid trailer line {line[:40]!r}")
        if _forbidden_trailer(line):
            raise malformed(f"framing or routing field in the trailer section {line[:40]!r}")
    await flush()


class BodyState(enum.Enum):
    SIZE = "size"
    DATA = "data"
    DATA_CRLF = "data-crlf"
    TRAILER = "trailer"


class BodyTracker:
    """Finds where a response body ends while its bytes pass through untouched."""

    __slots__ = ("kind", "remaining", "state", "line", "trailer_bytes")

    def __init__(self, kind: FramingKind, length: int = 0) -> None:
        self.kind = kind
        self.remaining = length
        self.state = BodyState.SIZE
        self.line = bytearray()
        self.trailer_bytes = 0

    def feed(self, data: bytes, start: int = 0, collect: list[bytes] | None = None) -> tuple[int, bool]:
        """How many bytes of ``data[start:]`` belong to the body, and whether it ended.

        With ``collect``, the body's data without its chunk framing is appended there (for an HTTP/1.0
        client, which cannot read chunks)."""
        kind = self.kind
        if kind is FramingKind.NONE:
            return 0, True
        if kind is FramingKind.UNTIL_CLOSE:
            if collect is not None:
                collect.append(data[start:])
            return len(data) - start, False
        if kind is FramingKind.LENGTH:
            take = min(self.remaining, len(data) - start)
            self.remaining -= take
            if collect is not None and take:
                collect.append(data[start : start + take])
            return take, self.remaining == 0
        return self._chunked(data, start, collect)

    def _chunked(self, data: bytes, start: int, collect: list[bytes] | None) -> tuple[int, bool]:
        i, n = start, len(data)
        while i < n:
            if self.state is BodyState.DATA:
                take = min(self.remaining, n - i)
                if collect is not None:
                    collect.append(data[i : i + take])
                i += take
                self.remaining -= take
                if not self.remaining:
                    self.state = BodyState.DATA_CRLF
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > _MAX_CHUNK_LINE:
                    raise BadResponse("chunk-size line too long")
                return n - start, False
            self.line += data[i : j + 1]
            i = j + 1
            line, self.line = bytes(self.line), bytearray()
            if len(line) > _MAX_CHUNK_LINE:
                raise BadResponse("chunk-size line too long")
            if self.state is BodyState.SIZE:
                m = _CHUNK_LINE.fullmatch(line)
                if m is None:
                    raise BadResponse(f"invalid chunk-size line {line[:40]!r}")
                self.remaining = int(m.group(1), 16)
                self.state = BodyState.DATA if self.remaining else BodyState.TRAILER
            elif self.state is BodyState.DATA_CRLF:
                if line != b"\r\n":
                    raise BadResponse("chunk data not followed by CRLF")
                self.state = BodyState.SIZE
            else:  # trailer section, ended by an empty line
                if line == b"\r\n":
                    return i - start, True
                self.trailer_bytes += len(line)
                if self.trailer_bytes > _MAX_TRAILER_BYTES or _TRAILER_LINE.fullmatch(line) is None:
                    raise BadResponse(f"invalid trailer line {line[:40]!r}")
                if _forbidden_trailer(line):
                    raise BadResponse(f"framing or routing field in the trailer section {line[:40]!r}")
        return i - start, False
