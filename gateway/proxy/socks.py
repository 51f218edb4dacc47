"""The SOCKS wire format, server side: SOCKS5 (RFC 1928) with username/password (RFC 1929), SOCKS4 and 4a.

Sans-IO and strict, like ``gateway.proxy.http1``: ``SocksHandshake.feed(bytes)`` returns what the
client has said so far (``Greeting``, ``UserPass``, ``Request``) or raises ``SocksError`` carrying the
reply to send before closing.  The encoders build the server's answers.  Nothing here knows about
upstreams, users or sockets; ``gateway.proxy.socksproto`` drives it.

Client messages (RFC 1928 section 3, 4; RFC 1929 section 2; SOCKS4/4a protocol documents)::

    greeting   VER=5 NMETHODS METHODS[NMETHODS]
    userpass   VER=1 ULEN UNAME[ULEN] PLEN PASSWD[PLEN]
    request5   VER=5 CMD RSV=0 ATYP (IPv4[4] | LEN DOMAIN[LEN] | IPv6[16]) PORT[2]
    request4   VER=4 CMD PORT[2] IPv4[4] USERID NUL            (4a: IPv4 = 0.0.0.x, x != 0, then DOMAIN NUL)
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass

__all__ = [
    "GRANTED4",
    "MAX_HANDSHAKE",
    "SUCCEEDED5",
    "Command",
    "Greeting",
    "Method",
    "Reply",
    "Request",
    "SocksError",
    "SocksHandshake",
    "State",
    "UserPass",
    "method_selection",
    "reply4",
    "reply5",
    "userpass_status",
]

MAX_FIELD = 255  # SOCKS4 user ids and 4a domain names, like SOCKS5's length-prefixed fields
MAX_HANDSHAKE = 1024  # no legal message is longer; more buffered bytes before a message ends is an attack


class Method(enum.IntEnum):
    NO_AUTH = 0x00
    USERPASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class Reply(enum.IntEnum):
    """SOCKS5 reply codes (RFC 1928 section 6)."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


SOCKS4_GRANTED = 0x5A
SOCKS4_REJECTED = 0x5B

_ATYP_IPV4, _ATYP_DOMAIN, _ATYP_IPV6 = 0x01, 0x03, 0x04


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the first message (a SOCKS5 greeting or a SOCKS4 request)
    METHOD = "method"  # greeting read; the server must choose a method (``select``)
    AUTH = "auth"  # waiting for RFC 1929 username/password
    AUTH_REPLY = "auth-reply"  # username/password read; the server must answer (``authenticated``)
    REQUEST = "request"  # waiting for the SOCKS5 request
    DONE = "done"  # a request was read: the rest of the bytes belong to the tunnel
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Greeting:
    methods: frozenset[int]


@dataclass(frozen=True, slots=True)
class UserPass:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Request:
    """A CONNECT (other commands raise ``SocksError``).  ``host`` is an address without brackets or a
    domain name exactly as sent (never resolved here); ``username`` is SOCKS4's user id."""

    version: int
    host: str
    port: int
    is_domain: bool
    username: str | None = None


class SocksError(Exception):
    """The client broke the protocol or asked for what we do not do: send ``reply`` (may be empty), then close."""

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


def method_selection(method: int) -> bytes:
    return bytes((5, method))


def userpass_status(ok: bool) -> bytes:
    """RFC 1929: VER=1 STATUS (0 success; anything else failure, and the server closes)."""
    return b"\x01\x00" if ok else b"\x01\x01"


def reply5(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """VER=5 REP RSV=0 ATYP BND.ADDR BND.PORT."""
    address = ipaddress.ip_address(host)
    atyp = _ATYP_IPV4 if address.version == 4 else _ATYP_IPV6
    return bytes((5, code, 0, atyp)) + address.packed + struct.pack("!H", port)


def reply4(granted: bool) -> bytes:
    """VN=0 CD DSTPORT DSTIP (ignored by clients for CONNECT)."""
    return bytes((0, SOCKS4_GRANTED if granted else SOCKS4_REJECTED)) + b"\x00" * 6


_FAIL5 = reply5(Reply.GENERAL_FAILURE)
SUCCEEDED5 = reply5(Reply.SUCCEEDED)  # the reply of every tunnel: built once
GRANTED4 = reply4(True)


def _text(raw: bytes, what: str, reply: bytes) -> str:
    """A name field: UTF-8 without spaces or control characters (it becomes a routing username or a host)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SocksError(f"{what} is not valid UTF-8", reply) from None
    if any(ord(c) < 0x21 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise SocksError(f"{what} contains control characters or spaces", reply)
    return text


def _domain(raw: bytes, reply: bytes) -> str:
    if not raw:
        raise SocksError("empty domain name", reply)
    host = _text(raw, "domain name", reply).lower()
    if any(c in host for c in "/\\@?#[]"):
        raise SocksError("invalid domain name", reply)
    return host


class SocksHandshake:
    """One client's handshake, fed bytes as they arrive.

    ``feed`` returns the next message once it is complete (None: more bytes needed).  After a
    ``Greeting`` the server calls ``select(method)``; after a ``UserPass``, ``authenticated()``.
    ``rest`` holds bytes after the request (early tunnel data).  States are explicit (h11's lesson):
    a message in the wrong state is a ``SocksError``, and the state is left ``FAILED``.
    """

    def __init__(self) -> None:
        self.state = State.GREETING
        self.version = 0
        self.buffer = bytearray()
        self.rest = b""

    def __repr__(self) -> str:
        return f"<SocksHandshake v{self.version or '?'} {self.state.value}>"

    def feed(self, data: bytes) -> Greeting | UserPass | Request | None:
        if self.state in (State.DONE, State.FAILED, State.METHOD, State.AUTH_REPLY):
            raise self._fail(SocksError(f"unexpected bytes in state {self.state.value}"))
        self.buffer += data
        try:
            message = self._parse()
        except SocksError as exc:
            raise self._fail(exc) from None
        if message is None and len(self.buffer) > MAX_HANDSHAKE:
            raise self._fail(SocksError("handshake message too long", self._failure_reply()))
        return message

    def _fail(self, exc: SocksError) -> SocksError:
        self.state = State.FAILED
        self.buffer.clear()
        return exc

    def _failure_reply(self) -> bytes:
        if self.version == 4:
            return reply4(False)
        if self.state is State.REQUEST:
            return _FAIL5
        return b""

    def select(self, method: int) -> bytes:
        """The method chosen after a greeting; its bytes for the client."""
        if self.state is not State.METHOD:
            raise SocksError(f"select() in state {self.state.value}")
        if method == Method.USERPASS:
            self.state = State.AUTH
        elif method == Method.NO_AUTH:
            self.state = State.REQUEST
        else:
            self.state = State.FAILED
        return method_selection(method)

    def authenticated(self, ok: bool) -> bytes:
        if self.state is not State.AUTH_REPLY:
            raise SocksError(f"authenticated() in state {self.state.value}")
        self.state = State.REQUEST if ok else State.FAILED
        return userpass_status(ok)

    # parsing -------------------------------------------------------------------------------
    def _parse(self) -> Greeting | UserPass | Request | None:
        buf = self.buffer
        if self.state is State.GREETING:
            if not buf:
                return None
            if buf[0] == 5:
                self.version = 5
                return self._greeting()
            if buf[0] == 4:
                self.version = 4
                return self._request4()
            raise SocksError(f"not a SOCKS version: {buf[0]:#04x}")
        if self.state is State.AUTH:
            return self._userpass()
        if self.state is State.REQUEST:
            return self._request5()
        return None  # pragma: no cover  (feed refuses the other states)

    def _greeting(self) -> Greeting | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        n = buf[1]
        if n == 0:
            raise SocksError("greeting offers no method", method_selection(Method.NO_ACCEPTABLE))
        if len(buf) < 2 + n:
            return None
        methods = frozenset(buf[2 : 2 + n])
        self._consume(2 + n, extra_allowed=False)
        self.state = State.METHOD
        return Greeting(methods)

    def _userpass(self) -> UserPass | None:
        buf = self.buffer
        fail = userpass_status(False)
        if not buf:
            return None
        if buf[0] != 1:
            raise SocksError(f"username/password version {buf[0]} (expected 1)", fail)
        if len(buf) < 2:
            return None
        ulen = buf[1]
        if len(buf) < 2 + ulen + 1:
            return None
        plen = buf[2 + ulen]
        end = 3 + ulen + plen
        if len(buf) < end:
            return None
        username = _text(bytes(buf[2 : 2 + ulen]), "username", fail) if ulen else ""
        try:
            password = bytes(buf[3 + ulen : end]).decode("utf-8")
        except UnicodeDecodeError:
            raise SocksError("password is not valid UTF-8", fail) from None
        self._consume(end, extra_allowed=False)
        self.state = State.AUTH_REPLY
        return UserPass(username, password)

    def _request5(self) -> Request | None:
        buf = self.buffer
        if len(buf) < 4:
            return None
        if buf[0] != 5:
            raise SocksError(f"request version {buf[0]} (expected 5)", _FAIL5)
        command, reserved, atyp = buf[1], buf[2], buf[3]
        if reserved != 0:
            raise SocksError("reserved byte is not zero", _FAIL5)
        if atyp == _ATYP_IPV4:
            end = 4 + 4
        elif atyp == _ATYP_IPV6:
            end = 4 + 16
        elif atyp == _ATYP_DOMAIN:
            if len(buf) < 5:
                return None
            end = 5 + buf[4]
        else:
            raise SocksError(f"address type {atyp} is not supported", reply5(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
        if len(buf) < end + 2:
            return None
        if command != Command.CONNECT:
            name = {Command.BIND: "BIND", Command.UDP_ASSOCIATE: "UDP ASSOCIATE"}.get(command, f"command {command}")
            raise SocksError(f"{name} is not supported", reply5(Reply.COMMAND_NOT_SUPPORTED))
        if atyp == _ATYP_IPV4:
            host, is_domain = socket.inet_ntoa(bytes(buf[4:8])), False  # what str(IPv4Address) spells, faster
        elif atyp == _ATYP_IPV6:
            host, is_domain = str(ipaddress.IPv6Address(bytes(buf[4:20]))), False
        else:
            host, is_domain = _domain(bytes(buf[5:end]), _FAIL5), True
        (port,) = struct.unpack_from("!H", buf, end)
        if port == 0:
            raise SocksError("port 0", _FAIL5)
        self._consume(end + 2, extra_allowed=True)
        self.state = State.DONE
        return Request(5, host, port, is_domain)

    def _request4(self) -> Request | None:
        buf = self.buffer
        fail = reply4(False)
        if len(buf) < 9:
            return None
        command = buf[1]
        (port,) = struct.unpack_from("!H", buf, 2)
        address = bytes(buf[4:8])
        user_end = buf.find(b"\x00", 8)
        if user_end < 0:
            if len(buf) - 8 > MAX_FIELD:
                raise SocksError("SOCKS4 user id too long", fail)
            return None
        if user_end - 8 > MAX_FIELD:
            raise SocksError("SOCKS4 user id too long", fail)
        end = user_end + 1
        is_domain = address[:3] == b"\x00\x00\x00" and address[3] != 0  # SOCKS4a
        if is_domain:
            name_end = buf.find(b"\x00", end)
            if name_end < 0:
                if len(buf) - end > MAX_FIELD:
                    raise SocksError("SOCKS4a domain name too long", fail)
                return None
            if name_end - end > MAX_FIELD:
                raise SocksError("SOCKS4a domain name too long", fail)
            host = _domain(bytes(buf[end:name_end]), fail)
            end = name_end + 1
        else:
            host = str(ipaddress.IPv4Address(address))
        if command != Command.CONNECT:
            raise SocksError("only CONNECT is supported", fail)
        if port == 0:
            raise SocksError("port 0", fail)
        username = _text(bytes(buf[8:user_end]), "user id", fail) if user_end > 8 else None
        self._consume(end, extra_allowed=True)
        self.state = State.DONE
        return Request(4, host, port, is_domain, username)

    def _consume(self, n: int, *, extra_allowed: bool) -> None:
        extra = bytes(self.buffer[n:])
        self.buffer.clear()
        if extra and not extra_allowed:
            # a client that pipelines its next message before our answer: keep it for the next feed
            self.buffer += extra
        else:
            self.rest = extra
