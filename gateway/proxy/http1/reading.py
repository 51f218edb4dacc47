"""Reading a head from an asyncio stream: for callers that hold a StreamReader (the gateway reads heads in
callbacks, ``gateway.proxy.client``; these stay for stream users and are tested with the rest of the grammar)."""

from __future__ import annotations

import asyncio

from gateway.proxy.errors import BadRequest, BadResponse, GatewayError
from gateway.proxy.http1.grammar import (
    _strip_leading_crlf,
)


async def read_head(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """Read a request head, up to and including CRLF CRLF; None on EOF before any request byte.

    Empty lines before the request line are skipped (RFC 9112 2.2).  ``BadRequest(431)`` past
    ``max_bytes``, ``BadRequest(400)`` on EOF mid-head.  Exact when the stream's limit is at least
    ``max_bytes``; a smaller limit still works, line by line.
    """
    return await _read_head(reader, max_bytes, response=False)


async def read_response_head(reader: asyncio.StreamReader, max_bytes: int) -> bytes | None:
    """Read a response head; None on EOF before any byte (a stale pooled connection), else
    ``BadResponse`` when it is too large or cut short."""
    return await _read_head(reader, max_bytes, response=True)


async def _read_head(reader: asyncio.StreamReader, max_bytes: int, *, response: bool) -> bytes | None:
    skipped = 0
    while True:
        try:
            data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            partial = exc.partial
            if not partial.strip(b"\r\n"):
                return None
            if skipped + len(partial) > max_bytes:
                raise _too_large(max_bytes, response) from None
            raise _truncated(response) from None
        except asyncio.LimitOverrunError as exc:
            if skipped + exc.consumed > max_bytes:
                raise _too_large(max_bytes, response) from None
            data = await _read_head_by_lines(reader, max_bytes - skipped, response)
        if skipped + len(data) > max_bytes:
            raise _too_large(max_bytes, response)
        if data[:2] != b"\r\n":
            return data
        stripped = _strip_leading_crlf(data)
        if stripped:
            return stripped
        skipped += len(data)


async def _read_head_by_lines(reader: asyncio.StreamReader, budget: int, response: bool) -> bytes:
    """The slow path for a stream whose limit is below the head size: one line at a time."""
    lines: list[bytes] = []
    size = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise _truncated(response) from None
        except asyncio.LimitOverrunError:
            raise _too_large(budget, response) from None
        size += len(line)
        if size > budget:
            raise _too_large(budget, response)
        lines.append(line)
        if line == b"\r\n" and len(lines) > 1 and lines[-2][-2:] == b"\r\n" and lines[-2] != b"\r\n":
            return b"".join(lines)


def _too_large(max_bytes: int, response: bool) -> GatewayError:
    if response:
        return BadResponse(f"response head larger than {max_bytes} bytes")
    return BadRequest(431, f"request head larger than {max_bytes} bytes")


def _truncated(response: bool) -> GatewayError:
    if response:
        return BadResponse("upstream closed the connection in the middle of the response head")
    return BadRequest(400, "connection closed in the middle of the request head")
