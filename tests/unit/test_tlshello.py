"""The ClientHello reader (gateway.proxy.tlshello): real ClientHellos however split, strict and bounded on
anything else (hypothesis): only NotHello, BadHello, None or a Hello ever comes out."""

from __future__ import annotations

import contextlib
import functools
import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.tlshello import MAX_HELLO, BadHello, Hello, NotHello, read_hello


@functools.cache
def real_hello(name: str | None, alpn: tuple[str, ...] = ()) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if name is None:
        context.check_hostname = False
    if alpn:
        context.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def split_records(record: bytes, size: int) -> bytes:
    """The same handshake bytes re-framed in records of ``size`` bytes."""
    body = record[5:]
    out = b""
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += record[:3] + struct.pack("!H", len(piece)) + piece
    return out


def test_real_client_hellos():
    hello = read_hello(real_hello("Shop.Example", ("h2", "http/1.1")))
    assert hello == Hello("shop.example", ("h2", "http/1.1"), hello.size)
    assert read_hello(real_hello(None)).sni is None  # type: ignore[union-attr]
    assert read_hello(real_hello("127.0.0.1")).sni is None  # type: ignore[union-attr]  # Python sends no SNI for an address


@given(st.integers(min_value=1, max_value=300), st.data())
@settings(max_examples=60, deadline=None)
def test_any_split_reads_the_same(size, data):
    """Records of any size, bytes arriving in any pieces: None until the last byte, then the same Hello."""
    raw = split_records(real_hello("split.example"), size)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    assert read_hello(raw[:cut]) is None
    assert read_hello(raw).sni == "split.example"  # type: ignore[union-attr]


@given(st.binary(max_size=400))
@settings(max_examples=300, deadline=None)
def test_garbage_is_refused_never_crashes(data):
    try:
        read_hello(data)
    except (NotHello, BadHello):
        pass


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=300, deadline=None)
def test_mutated_hellos_are_refused_or_read(noise):
    raw = bytearray(real_hello("mutate.example"))
    for i, byte in enumerate(noise):
        raw[(i * 7919) % len(raw)] ^= byte
    try:
        read_hello(bytes(raw))
    except (NotHello, BadHello):
        pass


def test_not_tls_and_oversized():
    with pytest.raises(NotHello):
        read_hello(b"GET / HTTP/1.1\r\n")
    with pytest.raises(NotHello):
        read_hello(b"\x16\x01")
    header = b"\x16\x03\x01\x40\x00" + b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(BadHello, match="at most"):
        read_hello(header)  # refused from its header, before the rest arrives
    with pytest.raises(BadHello, match="impossible length"):
        read_hello(b"\x16\x03\x01\xff\xff")
