"""Request heads: parse what a client sends, build what goes upstream (RFC 9112 3, 5, 6.3)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
import re
from dataclasses import dataclass, field, fields

from gateway.proxy.errors import BadRequest, OriginFormRequest
from gateway.proxy.http1.grammar import (
    _ABSOLUTE_FORM,
    _AUTHORITY_FORM,
    _codings,
    _content_length,
    _CONTROL,
    _FIELD_LINES,
    _field_lines_error,
    Framing,
    _HTTP_VERSION,
    _NEVER_CONNECTION_OPTION,
    _POOL_PREFIX,
    _POOL_PREFIX_LEN,
    _REQUEST_DROP,
    _REQUEST_LINE_SPLIT,
    _REQUEST_SPECIAL,
    _short,
    _strip_leading_crlf,
    _TOKEN,
    _tokens,
    binds_connection,
)


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
    headers: list[tuple[str, str]] = field(repr=False)  # credentials, cookies: never in a repr
    host: str
    port: int
    path: str
    is_connect: bool
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool
    proxy_authorization: str | None = field(repr=False)  # a secret: never in a repr, a log line
    pool_params: dict[str, str]
    upgrade: str | None
    connection_tokens: tuple[str, ...] = ()
    # the origin-form head with "Connection: keep-alive" appended, exactly as forward_request_head
    # builds it, when gateway.proxy.fasthead sliced it from the client's bytes (then nothing is rebuilt)
    origin_form: bytes | None = field(default=None, compare=False, repr=False)
    # an Authorization of a connection-bound scheme (NTLM, Negotiate): the upstream connection carrying
    # it serves this client only (gateway.proxy.bound); fasthead never answers for such a head
    binds_connection: bool = False


_NAME_VALUE = re.compile(r"([^:]+): ([^\r]*)\r\n")
_NO_POOL_PARAMS: dict[str, str] = {}  # never written: a head's pool_params are only read


class PlainRequestHead(RequestHead):
    """A ``RequestHead`` as ``gateway.proxy.fasthead`` finds it: an everyday HTTP/1.1 request without a
    body, routing fields or Upgrade.  What every such head shares is a class constant,
    so building one sets 8 fields instead of 17, and ``headers`` is split from the client's field
    lines only when something asks (an upstream that takes absolute form): together about a third
    of the everyday request's parse.  Equal to the ``RequestHead`` the strict parser builds
    (``same_head``), which the differential tests hold it to."""

    version = "HTTP/1.1"  # type: ignore[misc]
    is_connect = False  # type: ignore[misc]
    content_length = None  # type: ignore[misc]
    chunked = False  # type: ignore[misc]
    expect_continue = False  # type: ignore[misc]
    proxy_authorization = None  # type: ignore[misc]  # the client's credentials set it on the instance
    pool_params = _NO_POOL_PARAMS  # type: ignore[misc]
    upgrade = None  # type: ignore[misc]
    binds_connection = False  # type: ignore[misc]  # fasthead leaves NTLM / Negotiate to the strict parser

    def __init__(  # noqa: PLR0913 - a head is this many facts
        self,
        method: str,
        target: str,
        host: str,
        port: int,
        path: str,
        keep_alive: bool,
        connection_tokens: tuple[str, ...],
        origin_form: bytes | None,
        field_lines: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.host = host
        self.port = port
        self.path = path
        self.keep_alive = keep_alive
        self.connection_tokens = connection_tokens
        self.origin_form = origin_form
        self._fields = field_lines  # "Name: value\r\n" per line, as the client sent them

    @property  # type: ignore[override]
    def headers(self) -> list[tuple[str, str]]:
        return _NAME_VALUE.findall(self._fields.decode("latin-1"))


def same_head(a: RequestHead, b: RequestHead) -> bool:
    """Field by field (a ``PlainRequestHead`` and a ``RequestHead`` are different classes)."""
    return all(getattr(a, f.name) == getattr(b, f.name) for f in fields(RequestHead) if f.compare)


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
    binds = False
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
        elif lname == "authorization":
            binds = binds or binds_connection(value)
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
        if "identity" in codings:  # RFC 9112 removed it; proxies disagree on what it means (smuggling)
            raise BadRequest(400, "Transfer-Encoding identity is not a transfer coding (RFC 9112)")
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
        binds_connection=binds,
    )


def request_body_framing(head: RequestHead) -> Framing:
    """A request body is chunked, has a length, or is absent (RFC 9112 6.3: never until close)."""
    if head.chunked:
        return Framing.CHUNKED
    if head.content_length:
        return Framing.LENGTH(head.content_length)
    return Framing.NONE


def forward_request_head(
    head: RequestHead, *, absolute: bool, extra: Iterable[tuple[str, str]] = (), authority: str | None = None
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
        if authority is None:  # given: an intercepted https request's (the name the client asked for)
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
