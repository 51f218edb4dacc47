"""HTTP/1.1 on the wire: request and response heads in, heads out, bodies streamed.

The only module of the gateway that knows the wire format (RFC 9110 / RFC 9112).  It is on the hot
path of every request, so a head is decoded once (latin-1: one character per byte, lossless), split
by a handful of precompiled regexes, and kept as a list of ``(name, value)`` tuples; nothing else is
allocated per header.  It is strict the way Squid and h11 are, because a proxy that is lenient where
its upstream is strict is how requests get smuggled:

    >>> head = parse_request_head(b"GET http://example.org/a?b HTTP/1.1\\r\\nHost: example.org\\r\\n\\r\\n")
    >>> head.host, head.port, head.path, head.keep_alive
    ('example.org', 80, '/a?b', True)
    >>> forward_request_head(head, absolute=False)
    b'GET /a?b HTTP/1.1\\r\\nHost: example.org\\r\\n\\r\\n'

The regexes are built from named pieces with the RFC ABNF quoted above each (h11 ``_abnf.py``);
deviations from the ABNF say why.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import ClassVar

from gateway.proxy.errors import BadRequest, BadResponse, GatewayError, IncompleteBody, OriginFormRequest

__all__ = [
    "CONNECT_ESTABLISHED",
    "CONTINUE_100",
    "REASONS",
    "BadRequest",
    "BadResponse",
    "Framing",
    "FramingKind",
    "IDEMPOTENT",
    "IncompleteBody",
    "OriginFormRequest",
    "RequestHead",
    "ResponseHead",
    "connect_request_head",
    "copy_body",
    "format_authority",
    "forward_request_head",
    "forward_response_head",
    "parse_request_head",
    "parse_response_head",
    "read_head",
    "read_response_head",
    "request_body_framing",
    "response_body_framing",
    "simple_response",
]

# ---------------------------------------------------------------------------------------------
# ABNF pieces (str patterns; heads are matched as latin-1 text, chunk lines as bytes)
# ---------------------------------------------------------------------------------------------

# RFC 9110 5.6.3
#   OWS = *( SP / HTAB )
OWS = r"[ \t]*"

# RFC 9110 5.6.2
#   token = 1*tchar
#   tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
#         / DIGIT / ALPHA
token = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"

# RFC 9110 5.1
#   field-name = token
field_name = token

# RFC 9110 5.5
#   field-value   = *field-content
#   field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
#   field-vchar   = VCHAR / obs-text
#   obs-text      = %x80-FF
# Written so a value can neither start nor end with whitespace: the OWS around it is not part of
# it, so values come out stripped.  Control characters (other than HTAB inside) are refused.
# (One greedy run and a last field-vchar: the same language, and faster in sre than a group
# repeated once per space.)
field_vchar = r"[\x21-\x7e\x80-\xff]"
field_content = rf"{field_vchar}(?:[\t \x21-\x7e\x80-\xff]*{field_vchar})?"
field_value = rf"(?:{field_content})?"

# Responses come from free proxies of every make: h11 #57 found cookies with \x01 in the wild, so
# response values may hold control characters, but never NUL, CR or LF (response splitting).
response_field_value = r"(?:[^\x00-\x20\x7f](?:[^\x00\r\n]*[^\x00-\x20\x7f])?)?"

# RFC 9112 5
#   field-line = field-name ":" OWS field-value OWS
# One line of the header section, its CRLF included.  Matched with MULTILINE over the whole
# section, so ``^`` anchors at each line start; obs-fold (a line starting with SP / HTAB) and a
# space before the colon cannot match (RFC 9112 5.1, 5.2: reject with 400).
field_line = rf"^({field_name}):{OWS}({field_value}){OWS}\r\n"
response_field_line = rf"^({field_name}):{OWS}({response_field_value}){OWS}\r\n"

# RFC 9112 3
#   request-line = method SP request-target SP HTTP-version
#   method       = token
# RFC 9112 2.3
#   HTTP-version = HTTP-name "/" DIGIT "." DIGIT
#   HTTP-name    = %s"HTTP"
# request-target is checked for its form separately; here it is visible ASCII (RFC 3986 has no
# room for obs-text in a URI).
method = token
request_target = r"[\x21-\x7e]+"
http_version = r"HTTP/([0-9])\.([0-9])"
request_line = rf"({method}) ({request_target}) {http_version}"

# RFC 9112 4
#   status-line   = HTTP-version SP status-code SP [ reason-phrase ]
#   status-code   = 3DIGIT
#   reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )
# The SP before an empty reason is optional here: servers leave it out (h11, scrapy #345).
status_code = r"[0-9]{3}"
reason_phrase = r"[\t \x21-\x7e\x80-\xff]*"
status_line = rf"{http_version} ({status_code})(?: ({reason_phrase}))?"

# RFC 3986 3.2.2
#   host       = IP-literal / IPv4address / reg-name
#   IP-literal = "[" ( IPv6address / IPvFuture  ) "]"
#   reg-name   = *( unreserved / pct-encoded / sub-delims )
#   unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
#   sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
# IPv4address is a reg-name to the pattern; an empty reg-name and IPvFuture are refused; the
# IPv6 literal is checked by ``ipaddress``.
ip_literal = r"\[[0-9A-Fa-f:.]+\]"
reg_name = r"[-A-Za-z0-9._~%!$&'()*+,;=]+"
uri_host = rf"(?:{ip_literal}|{reg_name})"
# RFC 3986 3.2.3: port = *DIGIT
port = r"[0-9]*"

# RFC 9112 3.2.3
#   authority-form = uri-host ":" port
# CONNECT only, and the port is required.
authority_form = rf"({uri_host}):({port})"

# RFC 9112 3.2.2 absolute-form = absolute-URI; RFC 3986 4.3, 3
#   absolute-URI = scheme ":" hier-part [ "?" query ]
#   hier-part    = "//" authority path-abempty
#   authority    = [ userinfo "@" ] host [ ":" port ]
# Only the http scheme (https is CONNECT's job), no userinfo, no fragment.  Path and query are any
# visible ASCII but "#": browsers send "|", "{" or "^" unescaped and origins cope.
absolute_form = rf"(?i:http)://({uri_host})(?::({port}))?([/?][^#]*)?"

# RFC 9112 7.1, 7.1.1
#   chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
#   chunk-size     = 1*HEXDIG
#   chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
#   chunk-ext-name = token
#   chunk-ext-val  = token / quoted-string
# RFC 9110 5.6.4
#   quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE
#   qdtext         = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
#   quoted-pair    = "\" ( HTAB / SP / VCHAR / obs-text )
# At most 16 hex digits (2**64), like h11's "avoid ridiculosity" cap.
quoted_string = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
chunk_ext = rf"(?:{OWS};{OWS}{token}(?:{OWS}={OWS}(?:{token}|{quoted_string}))?)*"
chunk_line = rf"([0-9A-Fa-f]{{1,16}}){chunk_ext}\r\n"
# RFC 9112 7.1.2: trailer-section = *( field-line CRLF )
trailer_line = rf"{field_name}:{OWS}{response_field_value}{OWS}\r\n"

# The same line with the absolute-form target split in the same pass (the everyday proxy request);
# any other target is the second alternative and is taken apart by the functions below.
_REQUEST_LINE_SPLIT = re.compile(
    rf"({method}) ((?i:http)://({uri_host})(?::({port}))?([/?][\x21\x22\x24-\x7e]*)?|{request_target}) {http_version}"
)
_STATUS_LINE = re.compile(status_line)
_FIELD_LINES = re.compile(field_line, re.MULTILINE)
_RESPONSE_FIELD_LINES = re.compile(response_field_line, re.MULTILINE)
_TOKEN = re.compile(token)
_HTTP_VERSION = re.compile(http_version)
_ABSOLUTE_FORM = re.compile(absolute_form)
_AUTHORITY_FORM = re.compile(authority_form)
_CHUNK_LINE = re.compile(chunk_line.encode("latin-1"))
_TRAILER_LINE = re.compile(trailer_line.encode("latin-1"))
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# ---------------------------------------------------------------------------------------------
# Header semantics
# ---------------------------------------------------------------------------------------------

# RFC 9110 7.6.1 hop-by-hop fields, the proxy's own (Proxy-*), and Host (rewritten from the target,
# RFC 9112 3.2.2).  Transfer-Encoding is absent on purpose: it is framing, passed on with the body.
_REQUEST_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
        "host",
    }
)
_RESPONSE_DROP = _REQUEST_DROP - {"host"}
# A header named in Connection is hop-by-hop too (RFC 9110 7.6.1), except these: dropping the
# framing or the Host because the client said "Connection: content-length" would desynchronise the
# upstream from the body we send (request smuggling).
_NEVER_CONNECTION_OPTION = frozenset({"content-length", "transfer-encoding", "host"})
_POOL_PREFIX = "x-proxy-pool-"
_POOL_PREFIX_LEN = len(_POOL_PREFIX)
_REQUEST_SPECIAL = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "proxy-connection",
        "expect",
        "proxy-authorization",
        "upgrade",
    }
)
_RESPONSE_SPECIAL = frozenset({"content-length", "transfer-encoding", "connection"})
_MAX_CONTENT_LENGTH_DIGITS = 18

REASONS: dict[int, str] = {s.value: s.phrase for s in HTTPStatus}
CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
# RFC 9110 9.2.2: a request with one of these methods may be sent again after a failure mid-way
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class FramingKind(enum.Enum):
    """How the end of a body is found (RFC 9112 6.3)."""

    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until_close"


@dataclass(frozen=True, slots=True)
class Framing:
    """A body's framing: ``Framing.NONE``, ``Framing.LENGTH(n)``, ``Framing.CHUNKED``, ``Framing.UNTIL_CLOSE``.

    A zero Content-Length is ``NONE``: there is nothing to copy.  ``UNTIL_CLOSE`` (a response
    without length or chunking) means the connection to the client must be closed afterwards.
    """

    kind: FramingKind
    length: int = 0

    NONE: ClassVar[Framing]
    CHUNKED: ClassVar[Framing]
    UNTIL_CLOSE: ClassVar[Framing]

    @staticmethod
    def LENGTH(n: int) -> Framing:
        """Framing by Content-Length (named like the constants it sits beside)."""
        return Framing(FramingKind.LENGTH, n) if n else Framing.NONE


Framing.NONE = Framing(FramingKind.NONE)
Framing.CHUNKED = Framing(FramingKind.CHUNKED)
Framing.UNTIL_CLOSE = Framing(FramingKind.UNTIL_CLOSE)


# ---------------------------------------------------------------------------------------------
# Request heads
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class RequestHead:
    """A parsed request head.  ``headers`` keep the client's order and case; values are stripped.

    ``host`` has no brackets for IPv6 and is lower-case; ``path`` is the origin-form ("/p?q") of an
    absolute-form target and "" for CONNECT.  ``pool_params`` are the ``X-Proxy-Pool-*`` headers
    keyed by their lower-case suffix ("country").  ``connection_tokens`` are the lower-case options
    of the Connection header (headers named there are not forwarded).
    """

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    host: str
    port: int
    path: str
    is_connect: bool
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    proxy_authorization: str | None
    pool_params: dict[str, str]
    upgrade: str | None
    connection_tokens: tuple[str, ...] = ()
    # the origin-form head with "Connection: keep-alive" appended, exactly as forward_request_head
    # builds it, when gateway.proxy.fasthead sliced it from the client's bytes (then nothing is rebuilt)
    origin_form: bytes | None = field(default=None, compare=False, repr=False)


def parse_request_head(data: bytes) -> RequestHead:
    """Parse a request head (request line to the empty line, CRLF CRLF included).

    Raises ``BadRequest`` (400, or 505 for an HTTP version other than 1.0 / 1.1) naming the
    problem, ``OriginFormRequest`` for ``GET / HTTP/1.1`` sent to the proxy.
    """
    if data[:2] == b"\r\n":
        data = _strip_leading_crlf(data)
        if not data:
            raise BadRequest(400, "empty request head")
    if data[-4:] != b"\r\n\r\n":
        raise BadRequest(400, "request head does not end with an empty line (CRLF CRLF)")
    text = data.decode("latin-1")
    end = text.index("\r\n")
    m = _REQUEST_LINE_SPLIT.fullmatch(text, 0, end)
    if m is None:
        raise _request_line_error(text[:end])
    method, target, abs_host, abs_port, abs_path, major, minor = m.groups()
    if major != "1" or (minor != "1" and minor != "0"):
        raise BadRequest(505, f"HTTP version {major}.{minor} is not supported (use HTTP/1.1)")
    version = "HTTP/1.1" if minor == "1" else "HTTP/1.0"

    start = end + 2
    stop = len(text) - 2
    headers: list[tuple[str, str]] = _FIELD_LINES.findall(text, start, stop)
    if len(headers) != text.count("\n", start, stop):
        raise _field_lines_error(text[start:stop], BadRequest)

    host_seen = False
    content_length: int | None = None
    codings: list[str] | None = None
    connection: tuple[str, ...] = ()
    proxy_connection: tuple[str, ...] = ()
    expect_continue = False
    proxy_authorization: str | None = None
    upgrade: str | None = None
    pool_params: dict[str, str] = {}
    maybe_pool = _POOL_PREFIX in text.lower()
    for name, value in headers:
        lname = name.lower()
        if lname not in _REQUEST_SPECIAL:
            if maybe_pool and lname.startswith(_POOL_PREFIX):
                key = lname[_POOL_PREFIX_LEN:]
                if not key or key in pool_params:
                    raise BadRequest(400, f"repeated or empty {name} header")
                pool_params[key] = value
            continue
        if lname == "host":
            if host_seen:
                raise BadRequest(400, "more than one Host header")
            host_seen = True
        elif lname == "content-length":
            if content_length is not None:
                raise BadRequest(400, "repeated Content-Length header")
            content_length = _content_length(value, BadRequest)
        elif lname == "transfer-encoding":
            codings = _codings(value, codings, BadRequest)
        elif lname == "connection":
            connection += _tokens(value)
        elif lname == "proxy-connection":
            proxy_connection += _tokens(value)
        elif lname == "expect":
            expect_continue = value.lower() == "100-continue"
        elif lname == "proxy-authorization":
            if proxy_authorization is not None:
                raise BadRequest(400, "repeated Proxy-Authorization header")
            proxy_authorization = value
        else:  # upgrade
            upgrade = value if upgrade is None else f"{upgrade}, {value}"

    chunked = False
    if codings is not None:
        # RFC 9112 6.1: TE in HTTP/1.0 is faulty framing; with Content-Length it is smuggling bait;
        # a request whose final coding is not chunked has no way to end.
        if version == "HTTP/1.0":
            raise BadRequest(400, "Transfer-Encoding in an HTTP/1.0 request")
        if content_length is not None:
            raise BadRequest(400, "both Content-Length and Transfer-Encoding")
        if not codings or codings[-1] != "chunked":
            raise BadRequest(400, "Transfer-Encoding must end with chunked")
        if "chunked" in codings[:-1]:
            raise BadRequest(400, "Transfer-Encoding applies chunked more than once")
        chunked = True

    is_connect = method == "CONNECT"
    if is_connect:
        host, port_number = _connect_target(target)
        path = ""
        if chunked or content_length:
            raise BadRequest(400, "CONNECT request with a body")
    elif abs_host is not None:  # absolute-form, split by the request-line pattern
        host = _check_host(abs_host)
        port_number = 80 if not abs_port else _check_port(abs_port)
        path = _origin_path(abs_path)
    elif target[0] == "/" or target == "*":
        raise OriginFormRequest()
    else:
        host, port_number, path = _absolute_target(target)  # names what is wrong with it

    if version == "HTTP/1.1":
        keep_alive = "close" not in connection and "close" not in proxy_connection
    else:
        keep_alive = ("keep-alive" in connection or "keep-alive" in proxy_connection) and not (
            "close" in connection or "close" in proxy_connection
        )
        # RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be ignored.
        expect_continue = False

    return RequestHead(
        method,
        target,
        version,
        headers,
        host,
        port_number,
        path,
        is_connect,
        content_length,
        chunked,
        keep_alive,
        expect_continue,
        proxy_authorization,
        pool_params,
        upgrade,
        connection,
    )


def request_body_framing(head: RequestHead) -> Framing:
    """A request body is chunked, has a length, or is absent (RFC 9112 6.3: never until close)."""
    if head.chunked:
        return Framing.CHUNKED
    if head.content_length:
        return Framing.LENGTH(head.content_length)
    return Framing.NONE


def forward_request_head(
    head: RequestHead, *, absolute: bool, extra: Iterable[tuple[str, str]] = ()
) -> bytes:
    """The head to send upstream: absolute-form for an HTTP upstream proxy, else origin-form.

    Always HTTP/1.1, Host first and taken from the target, the client's headers in order minus
    hop-by-hop ones, the proxy's own and ``X-Proxy-Pool-*``; then ``extra`` (e.g. the upstream's
    Proxy-Authorization, ``Connection: keep-alive``).  Nothing that reveals the client is added.
    """
    if head.is_connect:
        authority = format_authority(head.host, head.port)
        parts = ["CONNECT ", authority, " HTTP/1.1\r\nHost: ", authority, "\r\n"]
    else:
        authority = format_authority(head.host, head.port, default_port=80)
        if absolute:
            parts = [head.method, " http://", authority, head.path, " HTTP/1.1\r\nHost: ", authority, "\r\n"]
        else:
            parts = [head.method, " ", head.path, " HTTP/1.1\r\nHost: ", authority, "\r\n"]
    drop = _REQUEST_DROP
    if head.connection_tokens:
        drop = drop.union(t for t in head.connection_tokens if t not in _NEVER_CONNECTION_OPTION)
    pool = bool(head.pool_params)
    for name, value in head.headers:
        lname = name.lower()
        if lname in drop or (pool and lname.startswith(_POOL_PREFIX)):
            continue
        parts += (name, ": ", value, "\r\n")
    for name, value in extra:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def connect_request_head(host: str, port: int, *, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """``CONNECT host:port`` for an HTTP upstream proxy, with ``extra`` headers (its Proxy-Authorization)."""
    authority = format_authority(host, port)
    parts = ["CONNECT ", authority, " HTTP/1.1\r\nHost: ", authority, "\r\n"]
    for name, value in extra:
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def format_authority(host: str, port: int, *, default_port: int | None = None) -> str:
    """``host:port`` with IPv6 in brackets; the port is left out when it is ``default_port``."""
    if ":" in host:
        host = f"[{host}]"
    return host if port == default_port else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# Response heads
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ResponseHead:
    """A parsed response head.  ``keep_alive`` is what the upstream's headers allow; a response
    framed ``UNTIL_CLOSE`` ends the connection whatever they say."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    connection_tokens: tuple[str, ...] = ()
    transfer_codings: tuple[str, ...] = ()


def parse_response_head(data: bytes) -> ResponseHead:
    """Parse a response head; ``BadResponse`` on anything a strict client would refuse."""
    if data[:2] == b"\r\n":
        data = _strip_leading_crlf(data)
    if data[-4:] != b"\r\n\r\n":
        raise BadResponse("response head does not end with an empty line (CRLF CRLF)")
    text = data.decode("latin-1")
    end = text.index("\r\n")
    m = _STATUS_LINE.fullmatch(text, 0, end)
    if m is None:
        raise BadResponse(f"invalid status line {text[: min(end, 60)]!r}")
    major, minor, code, reason = m.groups()
    if major != "1" or (minor != "1" and minor != "0"):
        raise BadResponse(f"unsupported HTTP version {major}.{minor} in the response")
    status = int(code)
    if status < 100 or status > 599:
        raise BadResponse(f"invalid status code {status}")
    version = "HTTP/1.1" if minor == "1" else "HTTP/1.0"

    start = end + 2
    stop = len(text) - 2
    headers: list[tuple[str, str]] = _RESPONSE_FIELD_LINES.findall(text, start, stop)
    if len(headers) != text.count("\n", start, stop):
        raise _field_lines_error(text[start:stop], _bad_response)

    content_length: int | None = None
    codings: list[str] | None = None
    connection: tuple[str, ...] = ()
    for name, value in headers:
        lname = name.lower()
        if lname not in _RESPONSE_SPECIAL:
            continue
        if lname == "content-length":
            # RFC 9112 6.3 (5): identical repeats ("42, 42" or two lines) are one length.
            for item in value.split(","):
                n = _content_length(item.strip(), _bad_response)
                if content_length is not None and n != content_length:
                    raise BadResponse("differing Content-Length values in the response")
                content_length = n
        elif lname == "transfer-encoding":
            codings = _codings(value, codings, _bad_response)
        else:
            connection += _tokens(value)

    chunked = False
    if codings is not None:
        if content_length is not None:
            raise BadResponse("both Content-Length and Transfer-Encoding in the response")
        if "chunked" in codings[:-1]:
            raise BadResponse("Transfer-Encoding applies chunked more than once")
        chunked = bool(codings) and codings[-1] == "chunked"
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    return ResponseHead(
        version,
        status,
        reason or "",
        headers,
        content_length,
        chunked,
        keep_alive,
        connection,
        tuple(codings) if codings else (),
    )


def response_body_framing(resp: ResponseHead, request_method: str) -> Framing:
    """RFC 9112 6.3: how the response body to ``request_method`` ends."""
    status = resp.status
    if request_method == "HEAD" or status < 200 or status == 204 or status == 304:
        return Framing.NONE
    if request_method == "CONNECT" and status < 300:
        return Framing.NONE  # a tunnel follows the head
    if resp.chunked:
        return Framing.CHUNKED
    if resp.transfer_codings:
        return Framing.UNTIL_CLOSE  # a final coding other than chunked: ends at close
    if resp.content_length is not None:
        return Framing.LENGTH(resp.content_length)
    return Framing.UNTIL_CLOSE


def forward_response_head(
    resp: ResponseHead,
    *,
    keep_alive: bool,
    extra: Iterable[tuple[str, str]] = (),
    dechunk: bool = False,
) -> bytes:
    """The head to send the client: HTTP/1.1, hop-by-hop and ``X-Proxy-Pool-*`` headers removed,
    then ``extra``, then ``Connection: keep-alive`` or ``close`` (none on a 1xx).

    ``dechunk=True`` is for HTTP/1.0 clients, which cannot read chunked bodies: chunked is removed
    from Transfer-Encoding, the body must then be copied with ``copy_body(..., dechunk=True)`` and
    the connection closed (``keep_alive`` is forced off).
    """
    status = resp.status
    parts = ["HTTP/1.1 ", str(status), " ", resp.reason or REASONS.get(status, ""), "\r\n"]
    drop = _RESPONSE_DROP
    if resp.connection_tokens:
        drop = drop.union(t for t in resp.connection_tokens if t not in _NEVER_CONNECTION_OPTION)
    if status == 101:
        drop = drop - {"upgrade"}
    for name, value in resp.headers:
        lname = name.lower()
        if lname in drop or lname.startswith(_POOL_PREFIX):
            continue
        if dechunk and lname == "transfer-encoding":
            rest = [c for c in resp.transfer_codings if c != "chunked"]
            if rest:
                parts += (name, ": ", ", ".join(rest), "\r\n")
            continue
        parts += (name, ": ", value, "\r\n")
    for name, value in extra:
        parts += (name, ": ", value, "\r\n")
    if status == 101:
        parts.append("Connection: upgrade\r\n")
    elif status >= 200:
        parts.append("Connection: keep-alive\r\n" if keep_alive and not dechunk else "Connection: close\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


# ---------------------------------------------------------------------------------------------
# Answers of our own
# ---------------------------------------------------------------------------------------------


def simple_response(
    status: int, message: str, *, headers: Iterable[tuple[str, str]] = (), close: bool = True
) -> bytes:
    """A complete response with a one-line text/plain body (``message`` + "\\n")."""
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8")
    parts = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n",
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n",
    ]
    for name, value in headers:
        if "\r" in value or "\n" in value or not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header for our own response: {name!r}")
        parts += (name, ": ", value, "\r\n")
    parts.append("Connection: close\r\n\r\n" if close else "Connection: keep-alive\r\n\r\n")
    return "".join(parts).encode("latin-1") + body


# ---------------------------------------------------------------------------------------------
# Reading heads
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Bodies
# ---------------------------------------------------------------------------------------------

_READ_SIZE = 1 << 16
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
    await flush()


# ---------------------------------------------------------------------------------------------
# Helpers: the slow paths (errors) and small field parsers
# ---------------------------------------------------------------------------------------------


def _strip_leading_crlf(data: bytes) -> bytes:
    while data[:2] == b"\r\n":
        data = data[2:]
    return data


def _bad_response(status: int, message: str) -> BadResponse:
    return BadResponse(message)


def _content_length(value: str, error: Callable[[int, str], GatewayError]) -> int:
    # RFC 9110 8.6: Content-Length = 1*DIGIT (isdigit alone would take "²" from latin-1)
    if not value or len(value) > _MAX_CONTENT_LENGTH_DIGITS or not (value.isascii() and value.isdigit()):
        raise error(400, f"invalid Content-Length {value[:24]!r}")
    return int(value)


def _codings(value: str, codings: list[str] | None, error: Callable[[int, str], GatewayError]) -> list[str]:
    # RFC 9112 6.1: Transfer-Encoding = #transfer-coding; transfer-coding = token *( OWS ";" OWS
    # transfer-parameter ); coding names are case-insensitive.  Several lines make one list.
    result = [] if codings is None else codings
    for item in value.split(","):
        name = item.partition(";")[0].strip()
        if not name:
            continue
        if not _TOKEN.fullmatch(name):
            raise error(400, f"invalid Transfer-Encoding {value[:40]!r}")
        result.append(name.lower())
    return result


def _tokens(value: str) -> tuple[str, ...]:
    # RFC 9110 7.6.1: Connection = #connection-option; options are case-insensitive
    if "," not in value:
        return (value.lower(),) if value else ()
    return tuple([t for t in [item.strip().lower() for item in value.split(",")] if t])


def _short(text: str) -> str:
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _request_line_error(line: str) -> BadRequest:
    """Name what is wrong with a request line that did not match (the slow path)."""
    if not line:
        return BadRequest(400, "empty request line")
    if _CONTROL.search(line):
        return BadRequest(400, "control character in the request line")
    parts = line.split(" ")
    if len(parts) < 3:
        if len(parts) == 2 and _HTTP_VERSION.fullmatch(parts[1]):
            return BadRequest(400, "request line has no request target")
        return BadRequest(400, "request line has no HTTP version (expected 'METHOD target HTTP/1.1')")
    if len(parts) > 3 or "" in parts:
        return BadRequest(400, "request line must be 'METHOD target HTTP/1.1' separated by single spaces")
    method_, target, version = parts
    if not _TOKEN.fullmatch(method_):
        return BadRequest(400, f"invalid method {_short(method_)}")
    if not _HTTP_VERSION.fullmatch(version):
        return BadRequest(400, f"invalid HTTP version {_short(version)}")
    return BadRequest(400, f"invalid character in the request target {_short(target)}")


def _field_lines_error(block: str, error: Callable[[int, str], GatewayError]) -> GatewayError:
    """Name what is wrong with a header section that did not match (the slow path)."""
    for raw in block.split("\n")[:-1]:
        if raw[-1:] != "\r":
            return error(400, "bare LF in the header section (lines must end with CRLF)")
        line = raw[:-1]
        if "\r" in line:
            return error(400, "bare CR in the header section")
        if not line:
            return error(400, "empty line inside the header section")
        if line[0] in " \t":
            return error(400, "obs-fold (a header line starting with whitespace) is not allowed")
        name, colon, value = line.partition(":")
        if not colon:
            return error(400, f"header line without a colon {_short(line)}")
        if name != name.rstrip(" \t"):
            return error(400, f"whitespace between header name and colon {_short(name)}")
        if not _TOKEN.fullmatch(name):
            return error(400, f"invalid header name {_short(name)}")
        if _CONTROL.search(value) or "\x00" in value:
            return error(400, f"control character in the value of header {_short(name)}")
    return error(400, "malformed header section")


def _check_host(host: str) -> str:
    if host[0] == "[":
        literal = host[1:-1]
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise BadRequest(400, f"invalid IPv6 address {_short(host)}") from None
        return literal.lower()
    return host.lower()


def _check_port(text: str) -> int:
    if text and len(text) <= 5:
        n = int(text)
        if 0 < n < 65536:
            return n
    raise BadRequest(400, f"invalid port {_short(text)} (1-65535)")


def _connect_target(target: str) -> tuple[str, int]:
    m = _AUTHORITY_FORM.fullmatch(target)
    if m is None:
        if target.startswith("[") and "]:" not in target or ":" not in target:
            raise BadRequest(400, "CONNECT target must be host:port (the port is required)")
        if "@" in target:
            raise BadRequest(400, "userinfo (user@) in the CONNECT target is not allowed")
        raise BadRequest(400, f"malformed CONNECT target {_short(target)}")
    return _check_host(m.group(1)), _check_port(m.group(2))


def _absolute_target(target: str) -> tuple[str, int, str]:
    m = _ABSOLUTE_FORM.fullmatch(target)
    if m is None:
        raise _absolute_target_error(target)
    host, port_text, path = m.groups()
    return _check_host(host), 80 if not port_text else _check_port(port_text), _origin_path(path)


def _origin_path(path: str | None) -> str:
    """The origin-form of an absolute-form target's path and query: "" is "/", "?q" is "/?q"."""
    if not path:
        return "/"
    return "/" + path if path[0] == "?" else path


def _absolute_target_error(target: str) -> BadRequest:
    scheme, sep, rest = target.partition("://")
    if not sep:
        return BadRequest(400, f"malformed request target {_short(target)} (expected http://host/...)")
    scheme = scheme.lower()
    if scheme == "https":
        return BadRequest(400, "https:// request target: use CONNECT for https")
    if scheme != "http":
        return BadRequest(400, f"unsupported scheme {_short(scheme)} in the request target (only http://)")
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    if "@" in authority:
        return BadRequest(400, "userinfo (user@) in the request target is not allowed")
    if "#" in target:
        return BadRequest(400, "fragment (#) in the request target is not allowed")
    if not authority or authority.startswith(":"):
        return BadRequest(400, "request target has no host")
    return BadRequest(400, f"malformed host or port in the request target {_short(target)}")
