"""Bodies: find where one ends as its bytes pass, for requests and answers alike (RFC 9112 6, 7)."""

from __future__ import annotations

import enum

from gateway.proxy.errors import BadResponse
from gateway.proxy.http1.grammar import (
    _CHUNK_LINE,
    FramingKind,
    _TRAILER_LINE,
)

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
