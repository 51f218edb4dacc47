"""A TLS ClientHello, read before any handshake (sans-IO, strict, bounded): is it one, and which name it asks for.

The interception port (``gateway.proxy.intercept``) reads what a client sends after its CONNECT: a
ClientHello is terminated with a certificate for the name it asks for (its SNI), anything else is
relayed raw.  Only what that decision needs is parsed (RFC 8446 4.1.2, RFC 6066 3, RFC 7301)::

    record        type=22 legacy_version[2] length[2] fragment[length]      (length <= 2^14)
    handshake     msg_type=1 length[3] body                                  (may span several records)
    client_hello  legacy_version[2] random[32] session_id<0..32> cipher_suites<2..2^16-2>
                  compression_methods<1..2^8-1> extensions<0..2^16-1>
    server_name   server_name_list<1..2^16-1> of (name_type=0 host_name<1..2^16-1>)

``read_hello(buffer)`` returns a ``Hello``, ``None`` while more bytes are needed, or raises ``NotHello``
(not TLS at all: relay raw) or ``BadHello`` (TLS that no honest client sends: close).  A ClientHello is
at most ``MAX_HELLO`` bytes however it is split, and a host name at most 253 characters.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["MAX_HELLO", "BadHello", "Hello", "NotHello", "read_hello"]

MAX_HELLO = 16384  # bytes of ClientHello (handshake body), whatever the record split: real ones are < 4 KiB
_RECORD_MAX = 1 << 14
_HANDSHAKE = 22
_CLIENT_HELLO = 1
_EXT_SERVER_NAME = 0
_EXT_ALPN = 16
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.?")


class NotHello(ValueError):
    """The bytes are not TLS: relay them raw."""


class BadHello(ValueError):
    """TLS, but not a ClientHello we will answer (malformed, too large, a name that is no host name)."""


@dataclass(frozen=True, slots=True)
class Hello:
    """A complete ClientHello: ``sni`` (lowercase, no trailing dot; None when not sent; an address when
    the client put one there), ``alpn`` (what it offers), ``size`` (bytes of records it spans)."""

    sni: str | None
    alpn: tuple[str, ...]
    size: int


def read_hello(buffer: bytes | bytearray) -> Hello | None:
    if not buffer:
        return None
    if buffer[0] != _HANDSHAKE:
        raise NotHello("not a TLS handshake record")
    if len(buffer) >= 2 and buffer[1] != 3:
        raise NotHello("not a TLS record version")
    body = bytearray()
    at = 0
    needed = -1  # handshake body length, once its header is in
    while True:
        if len(buffer) < at + 5:
            return None
        if buffer[at] != _HANDSHAKE or buffer[at + 1] != 3:
            raise BadHello("a ClientHello interrupted by another record")
        length = int.from_bytes(buffer[at + 3 : at + 5], "big")
        if length == 0 or length > _RECORD_MAX:
            raise BadHello("a TLS record of an impossible length")
        if len(buffer) < at + 5 + length:
            if needed < 0 and len(body) + len(buffer) - at - 5 >= 4:  # the header arrived: refuse early
                _check_header(bytes(body) + bytes(buffer[at + 5 : at + 9]))
            return None
        body += buffer[at + 5 : at + 5 + length]
        at += 5 + length
        if needed < 0 and len(body) >= 4:
            needed = _check_header(body)
        if needed >= 0 and len(body) >= 4 + needed:
            if len(body) > 4 + needed:
                raise BadHello("bytes after the ClientHello in its records")
            return _parse(memoryview(bytes(body))[4:], at)


def _check_header(body: bytes | bytearray) -> int:
    if body[0] != _CLIENT_HELLO:
        raise BadHello("the first handshake message is not a ClientHello")
    needed = int.from_bytes(body[1:4], "big")
    if needed > MAX_HELLO:
        raise BadHello(f"ClientHello of {needed} bytes (at most {MAX_HELLO})")
    return needed


class _Reader:
    __slots__ = ("at", "data")

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> memoryview:
        if self.at + n > len(self.data):
            raise BadHello("truncated ClientHello")
        piece = self.data[self.at : self.at + n]
        self.at += n
        return piece

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int) -> _Reader:
        return _Reader(self.take(self.number(size)))

    @property
    def done(self) -> bool:
        return self.at == len(self.data)


def _parse(body: memoryview, size: int) -> Hello:
    reader = _Reader(body)
    reader.take(2 + 32)  # legacy_version, random
    if reader.number(1) > 32:
        raise BadHello("session id longer than 32 bytes")
    reader.at -= 1
    reader.vector(1)
    reader.vector(2)  # cipher suites
    reader.vector(1)  # compression methods
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    if not reader.done:
        extensions = reader.vector(2)
        if not reader.done:
            raise BadHello("bytes after the extensions")
        seen: set[int] = set()
        while not extensions.done:
            kind = extensions.number(2)
            data = extensions.vector(2)
            if kind in seen:
                raise BadHello(f"extension {kind} sent twice")
            seen.add(kind)
            if kind == _EXT_SERVER_NAME:
                sni = _server_name(data)
            elif kind == _EXT_ALPN:
                alpn = _alpn(data)
    elif not reader.done:
        raise BadHello("bytes after the compression methods")
    return Hello(sni, alpn, size)


def _server_name(data: _Reader) -> str | None:
    names = data.vector(2)
    found: str | None = None
    while not names.done:
        kind = names.number(1)
        raw = bytes(names.vector(2).data)
        if kind != 0:
            continue
        if found is not None:
            raise BadHello("two host names in server_name")
        if len(raw) > 253 + 1:
            raise BadHello(f"server name of {len(raw)} bytes")
        try:
            name = raw.decode("ascii").lower()
        except UnicodeDecodeError:
            raise BadHello("server name is not ASCII (IDNA names are sent as A-labels)") from None
        try:
            found = str(ipaddress.ip_address(name))  # RFC 6066 forbids it; some clients send it anyway
            continue
        except ValueError:
            pass
        if _HOST_NAME.fullmatch(name) is None:
            raise BadHello("server name is not a host name")
        found = name.rstrip(".")
    return found


def _alpn(data: _Reader) -> tuple[str, ...]:
    protocols = data.vector(2)
    offered: list[str] = []
    while not protocols.done:
        offered.append(bytes(protocols.vector(1).data).decode("latin-1"))
    return tuple(offered)
