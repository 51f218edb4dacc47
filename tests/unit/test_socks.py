"""The SOCKS wire format (server side): RFC 1928 / 1929 / SOCKS4a messages fed as bytes, strict and fuzzed."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.socks import (
    MAX_HANDSHAKE,
    Greeting,
    Method,
    Reply,
    Request,
    SocksError,
    SocksHandshake,
    State,
    UserPass,
    reply4,
    reply5,
)


def request5(host: str, port: int, command: int = 1) -> bytes:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raw = host.encode()
        return bytes((5, command, 0, 3, len(raw))) + raw + struct.pack("!H", port)
    atyp = 1 if address.version == 4 else 4
    return bytes((5, command, 0, atyp)) + address.packed + struct.pack("!H", port)


def request4(host: str, port: int, user: bytes = b"", command: int = 1) -> bytes:
    try:
        packed = ipaddress.IPv4Address(host).packed
        tail = b""
    except ValueError:
        packed, tail = b"\x00\x00\x00\x01", host.encode() + b"\x00"
    return bytes((4, command)) + struct.pack("!H", port) + packed + user + b"\x00" + tail


def userpass(user: bytes, password: bytes) -> bytes:
    return bytes((1, len(user))) + user + bytes((len(password),)) + password


def test_socks5_no_auth_connect_with_each_address_type():
    """Greeting, method 0, then CONNECT to an IPv4, IPv6 or domain target; the bytes after the request are kept."""
    for host, domain in (("192.0.2.7", False), ("2001:db8::1", False), ("example.com", True)):
        hs = SocksHandshake()
        assert hs.feed(b"\x05\x01\x00") == Greeting(frozenset({0}))
        assert hs.select(Method.NO_AUTH) == b"\x05\x00"
        assert hs.feed(request5(host, 443) + b"early") == Request(5, host, 443, domain)
        assert hs.state is State.DONE and hs.rest == b"early"


def test_socks5_userpass_and_byte_by_byte():
    """RFC 1929 after method 2, each message fed one byte at a time."""
    hs = SocksHandshake()
    wire = b"\x05\x02\x00\x02"
    got = [hs.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert got[:-1] == [None] * 3 and got[-1] == Greeting(frozenset({0, 2}))
    assert hs.select(Method.USERPASS) == b"\x05\x02"
    wire = userpass(b"alice-country-de", b"p:w")
    got = [hs.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert got[-1] == UserPass("alice-country-de", "p:w") and got[:-1] == [None] * (len(wire) - 1)
    assert hs.authenticated(True) == b"\x01\x00"
    assert hs.feed(request5("example.org", 80)) == Request(5, "example.org", 80, True)


def test_pipelined_messages_wait_for_the_servers_answer():
    """A client that sends greeting, credentials and request at once: each comes out after the answer before it."""
    hs = SocksHandshake()
    assert hs.feed(b"\x05\x01\x02" + userpass(b"u", b"p") + request5("1.2.3.4", 80)) == Greeting(frozenset({2}))
    hs.select(Method.USERPASS)
    assert hs.feed(b"") == UserPass("u", "p")
    hs.authenticated(True)
    assert hs.feed(b"") == Request(5, "1.2.3.4", 80, False)


def test_wrong_credentials_answer_failure_and_fail_the_handshake():
    hs = SocksHandshake()
    hs.feed(b"\x05\x01\x02")
    hs.select(Method.USERPASS)
    hs.feed(userpass(b"alice", b"nope"))
    assert hs.authenticated(False) == b"\x01\x01"
    assert hs.state is State.FAILED
    with pytest.raises(SocksError):
        hs.feed(request5("1.2.3.4", 80))


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (request5("1.2.3.4", 80, command=2), reply5(Reply.COMMAND_NOT_SUPPORTED)),  # BIND
        (request5("1.2.3.4", 80, command=3), reply5(Reply.COMMAND_NOT_SUPPORTED)),  # UDP ASSOCIATE
        (b"\x05\x01\x00\x07" + b"\x00" * 6, reply5(Reply.ADDRESS_TYPE_NOT_SUPPORTED)),
        (b"\x05\x01\x01\x01" + b"\x00" * 6, reply5(Reply.GENERAL_FAILURE)),  # reserved byte set
        (b"\x04\x01\x00\x50\x01\x02\x03\x04\x00", reply5(Reply.GENERAL_FAILURE)),  # a SOCKS4 request after a v5 greeting
        (request5("1.2.3.4", 0), reply5(Reply.GENERAL_FAILURE)),
        (b"\x05\x01\x00\x03\x00\x00\x50", reply5(Reply.GENERAL_FAILURE)),  # empty domain
        (b"\x05\x01\x00\x03\x03a b\x00\x50", reply5(Reply.GENERAL_FAILURE)),  # a space in a name
    ],
)
def test_bad_socks5_requests_get_their_reply_code(wire, reply):
    hs = SocksHandshake()
    hs.feed(b"\x05\x01\x00")
    hs.select(Method.NO_AUTH)
    with pytest.raises(SocksError) as caught:
        hs.feed(wire)
    assert caught.value.reply == reply
    assert hs.state is State.FAILED


def test_greeting_without_methods_gets_no_acceptable_method():
    with pytest.raises(SocksError) as caught:
        SocksHandshake().feed(b"\x05\x00")
    assert caught.value.reply == b"\x05\xff"


def test_socks4_and_4a():
    """SOCKS4 to an address with a user id; SOCKS4a (0.0.0.x) with a name sent unresolved."""
    assert SocksHandshake().feed(request4("192.0.2.1", 80, b"country-de")) == Request(4, "192.0.2.1", 80, False, "country-de")
    hs = SocksHandshake()
    assert hs.feed(request4("Example.COM", 443) + b"tls") == Request(4, "example.com", 443, True, None)
    assert hs.rest == b"tls"


@pytest.mark.parametrize(
    "wire",
    [
        request4("1.2.3.4", 80, command=2),  # BIND
        request4("1.2.3.4", 80, user=b"u" * 256),  # user id too long
        request4("a" * 256, 80),  # 4a name too long
        request4("1.2.3.4", 0),
        request4("1.2.3.4", 80, user=b"\xff\xfe"),  # not UTF-8
    ],
)
def test_bad_socks4_requests_are_rejected_with_5b(wire):
    with pytest.raises(SocksError) as caught:
        SocksHandshake().feed(wire)
    assert caught.value.reply == reply4(False)


def test_unterminated_socks4_user_id_is_cut_off_at_the_field_limit():
    """An endless user id (no NUL) fails as soon as it passes 255 bytes, not when memory runs out."""
    hs = SocksHandshake()
    assert hs.feed(b"\x04\x01\x00\x50\x01\x02\x03\x04" + b"u" * 255) is None
    with pytest.raises(SocksError):
        hs.feed(b"u")


def test_not_socks_and_oversized_messages():
    with pytest.raises(SocksError):
        SocksHandshake().feed(b"GET / HTTP/1.1\r\n")
    hs = SocksHandshake()
    hs.feed(b"\x05\x01\x02")
    hs.select(Method.USERPASS)
    assert hs.feed(b"\x01\xff" + b"u" * 255 + b"\xff") is None  # 255-byte name, password follows
    assert isinstance(hs.feed(b"p" * 255), UserPass)


def test_replies():
    assert reply5(Reply.SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert reply5(0, "::1", 1080)[:4] == b"\x05\x00\x00\x04" and len(reply5(0, "::1", 1080)) == 22
    assert reply4(True) == b"\x00\x5a" + b"\x00" * 6


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=1, max_value=64))
def test_fuzzed_bytes_never_crash_or_hang(data, step):
    """Any bytes, fed in any chunking: a message, None, or SocksError; never another exception or unbounded buffer."""
    hs = SocksHandshake()
    methods: frozenset[int] = frozenset()
    for i in range(0, len(data), step):
        if hs.state is State.METHOD:
            hs.select(Method.USERPASS if Method.USERPASS in methods else Method.NO_AUTH)
        if hs.state is State.AUTH_REPLY:
            hs.authenticated(True)
        if hs.state in (State.DONE, State.FAILED):
            break
        try:
            message = hs.feed(data[i : i + step])
        except SocksError as exc:
            assert isinstance(exc.reply, bytes)
            assert hs.state is State.FAILED
            break
        if isinstance(message, Greeting):
            methods = message.methods
        assert len(hs.buffer) <= MAX_HANDSHAKE + step


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,3}", fullmatch=True),
    ),
    st.integers(min_value=1, max_value=65535),
    st.integers(min_value=1, max_value=16),
)
def test_any_valid_request_round_trips_in_any_chunking(host, port, step):
    hs = SocksHandshake()
    hs.feed(b"\x05\x01\x00")
    hs.select(Method.NO_AUTH)
    wire = request5(host, port)
    message = None
    for i in range(0, len(wire), step):
        message = hs.feed(wire[i : i + step])
    assert message == Request(5, str(ipaddress.ip_address(host)) if _is_ip(host) else host, port, not _is_ip(host))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
