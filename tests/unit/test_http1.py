"""gateway/http1.py: heads fed as raw bytes, heads and bodies read through real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from collections.abc import AsyncIterator

import pytest

from gateway.proxy.errors import BadRequest, BadResponse, GatewayError, IncompleteBody, OriginFormRequest
from gateway.proxy.http1 import (
    CONNECT_ESTABLISHED,
    CONTINUE_100,
    REASONS,
    Framing,
    FramingKind,
    connect_request_head,
    copy_body,
    format_authority,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
    read_head,
    read_response_head,
    request_body_framing,
    response_body_framing,
    simple_response,
)


def raw(*lines: str) -> bytes:
    """A head from its lines: CRLF after each, then the empty line."""
    return "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n"


def get(*headers: str, target: str = "http://example.org/a?b=1", version: str = "HTTP/1.1") -> bytes:
    return raw(f"GET {target} {version}", "Host: example.org", *headers)


# --------------------------------------------------------------------------------------------
# parse_request_head: what comes out of a valid head
# --------------------------------------------------------------------------------------------


def test_absolute_form_fields() -> None:
    """A browser-style absolute-form GET yields host, port, origin-form path and its headers in order."""
    head = parse_request_head(
        raw(
            "GET http://Example.ORG:8080/p/q?x=1&y=%20 HTTP/1.1",
            "Host: example.org",
            "User-Agent:  curl/8.5  ",
            "accept: */*",
        )
    )
    assert (head.method, head.target, head.version) == (
        "GET",
        "http://Example.ORG:8080/p/q?x=1&y=%20",
        "HTTP/1.1",
    )
    assert (head.host, head.port, head.path, head.is_connect) == (
        "example.org",
        8080,
        "/p/q?x=1&y=%20",
        False,
    )
    assert head.headers == [("Host", "example.org"), ("User-Agent", "curl/8.5"), ("accept", "*/*")]
    assert (head.content_length, head.chunked, head.keep_alive, head.expect_continue) == (
        None,
        False,
        True,
        False,
    )
    assert (head.proxy_authorization, head.pool_params, head.upgrade) == (None, {}, None)


@pytest.mark.parametrize(
    ("target", "host", "port", "path"),
    [
        ("http://example.org", "example.org", 80, "/"),
        ("http://example.org?q", "example.org", 80, "/?q"),
        ("HTTP://example.org:/", "example.org", 80, "/"),
        ("http://[2001:DB8::1]:8080/x", "2001:db8::1", 8080, "/x"),
        ("http://[::1]/", "::1", 80, "/"),
        ("http://127.0.0.1:65535/a|b{c}^", "127.0.0.1", 65535, "/a|b{c}^"),
    ],
)
def test_absolute_form_variants(target: str, host: str, port: int, path: str) -> None:
    """Absolute-form targets without path, with empty port, IPv6 literals and unescaped browser characters."""
    head = parse_request_head(raw(f"GET {target} HTTP/1.1", "Host: x"))
    assert (head.host, head.port, head.path) == (host, port, path)


@pytest.mark.parametrize(
    ("target", "host", "port"),
    [
        ("example.org:443", "example.org", 443),
        ("[2001:db8::2]:8443", "2001:db8::2", 8443),
        ("10.0.0.1:1", "10.0.0.1", 1),
    ],
)
def test_connect_target(target: str, host: str, port: int) -> None:
    """CONNECT takes authority-form host:port, IPv6 in brackets, and has an empty path."""
    head = parse_request_head(raw(f"CONNECT {target} HTTP/1.1", f"Host: {target}"))
    assert (head.is_connect, head.host, head.port, head.path) == (True, host, port, "")
    assert request_body_framing(head) is Framing.NONE


@pytest.mark.parametrize(
    ("version", "headers", "keep_alive"),
    [
        ("HTTP/1.1", [], True),
        ("HTTP/1.1", ["Connection: close"], False),
        ("HTTP/1.1", ["Connection: Keep-Alive, CLOSE"], False),
        ("HTTP/1.1", ["Proxy-Connection: close"], False),
        ("HTTP/1.0", [], False),
        ("HTTP/1.0", ["Connection: keep-alive"], True),
        ("HTTP/1.0", ["Proxy-Connection: Keep-Alive"], True),
        ("HTTP/1.0", ["Proxy-Connection: keep-alive", "Connection: close"], False),
    ],
)
def test_keep_alive(version: str, headers: list[str], keep_alive: bool) -> None:
    """Persistence: HTTP/1.1 unless close, HTTP/1.0 only with keep-alive; Proxy-Connection counts too."""
    assert parse_request_head(get(*headers, version=version)).keep_alive is keep_alive


def test_routing_and_auth_headers() -> None:
    """X-Proxy-Pool-* become pool_params by lower-case suffix; Proxy-Authorization and Upgrade are kept."""
    head = parse_request_head(
        get(
            "X-Proxy-Pool-Country: DE",
            "x-proxy-pool-SESSION: s1",
            "Proxy-Authorization: Basic YTpi",
            "Upgrade: websocket",
        )
    )
    assert head.pool_params == {"country": "DE", "session": "s1"}
    assert head.proxy_authorization == "Basic YTpi"
    assert head.upgrade == "websocket"


def test_expect_continue_only_for_http11() -> None:
    """Expect: 100-continue is honoured on HTTP/1.1 and ignored on HTTP/1.0 (RFC 9110 10.1.1)."""
    assert parse_request_head(get("Expect: 100-Continue", "Content-Length: 5")).expect_continue is True
    assert parse_request_head(get("Expect: 100-continue", version="HTTP/1.0")).expect_continue is False


def test_body_framing_of_requests() -> None:
    """Content-Length gives LENGTH(n), zero gives NONE, chunked last gives CHUNKED (other codings may precede)."""
    assert request_body_framing(parse_request_head(get("Content-Length: 42"))) == Framing.LENGTH(42)
    assert request_body_framing(parse_request_head(get("Content-Length: 0"))) is Framing.NONE
    assert request_body_framing(parse_request_head(get())) is Framing.NONE
    head = parse_request_head(get("Transfer-Encoding: gzip", "transfer-encoding: Chunked"))
    assert head.chunked and request_body_framing(head) is Framing.CHUNKED
    assert Framing.LENGTH(7).kind is FramingKind.LENGTH and Framing.LENGTH(7).length == 7


def test_leading_empty_lines_are_ignored() -> None:
    """RFC 9112 2.2: CRLFs before the request line (left over after a body) are skipped."""
    head = parse_request_head(b"\r\n\r\n" + get())
    assert head.method == "GET" and head.host == "example.org"


def test_empty_and_obs_text_values() -> None:
    """An empty value is allowed; obs-text (latin-1 bytes) passes through unchanged."""
    head = parse_request_head(get("X-Empty:", "X-Latin: caf\xe9"))
    assert ("X-Empty", "") in head.headers and ("X-Latin", "caf\xe9") in head.headers
    assert b"X-Latin: caf\xe9\r\n" in forward_request_head(head, absolute=False)


# --------------------------------------------------------------------------------------------
# parse_request_head: each malformed class gets its error class and status
# --------------------------------------------------------------------------------------------

MALFORMED = [
    # request line
    (b"GET http://example.org/\r\nHost: x\r\n\r\n", 400, "no HTTP version"),
    (b"GET http://example.org/ HTTP/1.1\r\nHost: x\r\n", 400, "empty line"),
    (raw("GET  http://example.org/ HTTP/1.1"), 400, "single spaces"),
    (raw("GET http://example.org/ HTTP/1.1 "), 400, "single spaces"),
    (raw("G(T http://example.org/ HTTP/1.1"), 400, "invalid method"),
    (raw("GET http://example.org/ http/1.1"), 400, "invalid HTTP version"),
    (raw("GET http://example.org/ HTTP/1"), 400, "invalid HTTP version"),
    (raw("GET http://exa\x01mple.org/ HTTP/1.1"), 400, "control character"),
    (raw("GET http://example.org/\xe9 HTTP/1.1"), 400, "invalid character in the request target"),
    (raw("HTTP/1.1"), 400, "no HTTP version"),
    (raw(""), 400, "empty request head"),
    (b"\r\n" + raw(" http://example.org/ HTTP/1.1"), 400, "single spaces"),
    (raw("GET HTTP/1.1"), 400, "no request target"),
    (raw("GET http://example.org/ HTTP/2.0"), 505, "not supported"),
    (raw("GET http://example.org/ HTTP/1.2"), 505, "not supported"),
    # header section
    (get("X-A: 1", " folded"), 400, "obs-fold"),
    (get("X-A: 1", "\tfolded"), 400, "obs-fold"),
    (get("X-A : 1"), 400, "whitespace between header name and colon"),
    (get("X A: 1"), 400, "invalid header name"),
    (get("X-A 1"), 400, "without a colon"),
    (get("X-A: a\x00b"), 400, "control character"),
    (get("X-A: a\x1bb"), 400, "control character"),
    (get("X-A: a\x7fb"), 400, "control character"),
    (get("X-A: a\rb"), 400, "bare CR"),
    (get("X-A: a\nX-B: b"), 400, "bare LF"),
    (b"GET http://example.org/ HTTP/1.1\r\nHost: x\nX-A: 1\r\n\r\n", 400, "bare LF"),
    (get("Host: again"), 400, "more than one Host"),
    # framing
    (
        get("Content-Length: 5", "Transfer-Encoding: chunked"),
        400,
        "both Content-Length and Transfer-Encoding",
    ),
    (get("Content-Length: 5", "Content-Length: 6"), 400, "repeated Content-Length"),
    (get("Content-Length: 5", "Content-Length: 5"), 400, "repeated Content-Length"),
    (get("Content-Length: 5, 5"), 400, "invalid Content-Length"),
    (get("Content-Length: -1"), 400, "invalid Content-Length"),
    (get("Content-Length: +5"), 400, "invalid Content-Length"),
    (get("Content-Length: 0x10"), 400, "invalid Content-Length"),
    (get("Content-Length: \xb2"), 400, "invalid Content-Length"),
    (get("Content-Length: 1234567890123456789"), 400, "invalid Content-Length"),
    (get("Content-Length:"), 400, "invalid Content-Length"),
    (get("Transfer-Encoding: gzip"), 400, "must end with chunked"),
    (get("Transfer-Encoding: chunked, gzip"), 400, "must end with chunked"),
    (get("Transfer-Encoding:"), 400, "must end with chunked"),
    (get("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"), 400, "more than once"),
    (get("Transfer-Encoding: chu/nked"), 400, "invalid Transfer-Encoding"),
    (get("Transfer-Encoding: chunked", version="HTTP/1.0"), 400, "HTTP/1.0"),
    # targets
    (get(target="https://example.org/"), 400, "use CONNECT for https"),
    (get(target="ftp://example.org/"), 400, "unsupported scheme"),
    (get(target="http://user:pw@example.org/"), 400, "userinfo"),
    (get(target="http://example.org/#frag"), 400, "fragment"),
    (get(target="http://:80/"), 400, "no host"),
    (get(target="http:///x"), 400, "no host"),
    (get(target="http://example.org:0/"), 400, "invalid port"),
    (get(target="http://example.org:65536/"), 400, "invalid port"),
    (get(target="http://example.org:123456/"), 400, "invalid port"),
    (get(target="http://[not-ipv6]/"), 400, "malformed host"),
    (get(target="http://[1::2::3]/"), 400, "invalid IPv6"),
    (get(target="example.org/x"), 400, "malformed request target"),
    (raw("CONNECT example.org HTTP/1.1"), 400, "port is required"),
    (raw("CONNECT example.org: HTTP/1.1"), 400, "invalid port"),
    (raw("CONNECT example.org:0 HTTP/1.1"), 400, "invalid port"),
    (raw("CONNECT example.org:70000 HTTP/1.1"), 400, "invalid port"),
    (raw("CONNECT [::1] HTTP/1.1"), 400, "port is required"),
    (raw("CONNECT u@example.org:443 HTTP/1.1"), 400, "userinfo"),
    (raw("CONNECT http://example.org:443/ HTTP/1.1"), 400, "malformed CONNECT target"),
    (raw("CONNECT example.org:443 HTTP/1.1", "Content-Length: 3"), 400, "CONNECT request with a body"),
    (
        raw("CONNECT example.org:443 HTTP/1.1", "Transfer-Encoding: chunked"),
        400,
        "CONNECT request with a body",
    ),
    # duplicates that would make routing or auth ambiguous
    (get("X-Proxy-Pool-Country: de", "X-Proxy-Pool-Country: fr"), 400, "X-Proxy-Pool-Country"),
    (get("X-Proxy-Pool-: x"), 400, "X-Proxy-Pool-"),
    (get("Proxy-Authorization: Basic a", "Proxy-Authorization: Basic b"), 400, "Proxy-Authorization"),
]


@pytest.mark.parametrize(("data", "status", "words"), MALFORMED, ids=[repr(m[0][:50]) for m in MALFORMED])
def test_malformed_requests(data: bytes, status: int, words: str) -> None:
    """Each malformed-request class is a BadRequest with its status and a one-line message naming it."""
    with pytest.raises(BadRequest) as info:
        parse_request_head(data)
    assert type(info.value) is BadRequest
    assert info.value.status == status
    assert words in info.value.message
    assert "\n" not in info.value.message and "\r" not in info.value.message


@pytest.mark.parametrize("line", ["GET / HTTP/1.1", "POST /submit?x=1 HTTP/1.0", "OPTIONS * HTTP/1.1"])
def test_origin_form_to_the_proxy(line: str) -> None:
    """An origin-form request (someone browsing to the proxy port) gets the distinct hint."""
    with pytest.raises(OriginFormRequest) as info:
        parse_request_head(raw(line, "Host: 127.0.0.1:8899"))
    assert info.value.status == 400
    assert "this is a proxy" in info.value.message and "CONNECT" in info.value.message


# --------------------------------------------------------------------------------------------
# forward_request_head
# --------------------------------------------------------------------------------------------


def test_forward_drops_hop_by_hop_and_routing_headers() -> None:
    """Hop-by-hop, Proxy-*, X-Proxy-Pool-* and Connection-named headers go; Host comes first from the target."""
    head = parse_request_head(
        raw(
            "POST http://example.org:8080/up?x HTTP/1.1",
            "Host: evil.example",
            "Connection: keep-alive, X-Secret",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "Proxy-Authorization: Basic YTpi",
            "TE: trailers",
            "Trailer: X-Sum",
            "Upgrade: h2c",
            "X-Secret: 1",
            "X-Proxy-Pool-Country: de",
            "Content-Type: text/plain",
            "Transfer-Encoding: chunked",
            "Cookie: a=b",
        )
    )
    out = forward_request_head(head, absolute=False, extra=[("Connection", "keep-alive")])
    assert out == (
        b"POST /up?x HTTP/1.1\r\nHost: example.org:8080\r\nContent-Type: text/plain\r\n"
        b"Transfer-Encoding: chunked\r\nCookie: a=b\r\nConnection: keep-alive\r\n\r\n"
    )
    out = forward_request_head(head, absolute=True, extra=[("Proxy-Authorization", "Basic dTpw")])
    assert out.startswith(b"POST http://example.org:8080/up?x HTTP/1.1\r\nHost: example.org:8080\r\n")
    assert out.endswith(b"Cookie: a=b\r\nProxy-Authorization: Basic dTpw\r\n\r\n")
    assert b"Basic YTpi" not in out and b"X-Proxy-Pool" not in out and b"Via" not in out


def test_connection_cannot_strip_framing() -> None:
    """``Connection: Content-Length`` must not remove the framing the upstream needs (smuggling)."""
    head = parse_request_head(get("Connection: content-length, host, transfer-encoding", "Content-Length: 3"))
    out = forward_request_head(head, absolute=False)
    assert b"\r\nContent-Length: 3\r\n" in out and b"\r\nHost: example.org\r\n" in out


def test_forward_version_and_host_forms() -> None:
    """HTTP/1.0 requests go out as HTTP/1.1; IPv6 hosts are bracketed; the default port is omitted."""
    head = parse_request_head(raw("GET http://[::1]:8000/ HTTP/1.0"))
    assert (
        forward_request_head(head, absolute=True)
        == b"GET http://[::1]:8000/ HTTP/1.1\r\nHost: [::1]:8000\r\n\r\n"
    )
    head = parse_request_head(raw("HEAD http://example.org:80 HTTP/1.1", "Host: example.org:80"))
    assert forward_request_head(head, absolute=False) == b"HEAD / HTTP/1.1\r\nHost: example.org\r\n\r\n"


def test_connect_helpers() -> None:
    """A CONNECT head for an HTTP upstream names host:port twice; IPv6 is bracketed."""
    assert connect_request_head("::1", 443, extra=[("Proxy-Authorization", "Basic x")]) == (
        b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\nProxy-Authorization: Basic x\r\n\r\n"
    )
    head = parse_request_head(
        raw("CONNECT example.org:443 HTTP/1.1", "Host: example.org:443", "User-Agent: c")
    )
    assert forward_request_head(head, absolute=True) == (
        b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\nUser-Agent: c\r\n\r\n"
    )
    assert format_authority("example.org", 80, default_port=80) == "example.org"


# --------------------------------------------------------------------------------------------
# responses
# --------------------------------------------------------------------------------------------


def test_parse_response_head() -> None:
    """A status line, headers in order, length and persistence come out; a missing reason is tolerated."""
    resp = parse_response_head(raw("HTTP/1.1 200 OK", "Content-Length: 12", "Set-Cookie: a=\x01b", "X: y"))
    assert (resp.version, resp.status, resp.reason, resp.content_length, resp.chunked, resp.keep_alive) == (
        "HTTP/1.1",
        200,
        "OK",
        12,
        False,
        True,
    )
    assert resp.headers[1] == ("Set-Cookie", "a=\x01b")
    resp = parse_response_head(raw("HTTP/1.0 404", "Content-Length: 3, 3", "Content-Length: 3"))
    assert (resp.status, resp.reason, resp.content_length, resp.keep_alive) == (404, "", 3, False)
    resp = parse_response_head(raw("HTTP/1.0 200 OK", "Connection: Keep-Alive"))
    assert resp.keep_alive is True


@pytest.mark.parametrize(
    "data",
    [
        raw("HTTP/1.1 2000 OK"),
        raw("HTTP/1.1 099 Low"),
        raw("HTTP/2 200 OK"),
        raw("HTTP/2.0 200 OK"),
        raw("ICY 200 OK"),
        raw("HTTP/1.1 200 OK", "Content-Length: 1", "Content-Length: 2"),
        raw("HTTP/1.1 200 OK", "Content-Length: x"),
        raw("HTTP/1.1 200 OK", "Content-Length: 1", "Transfer-Encoding: chunked"),
        raw("HTTP/1.1 200 OK", "Transfer-Encoding: chunked, chunked"),
        raw("HTTP/1.1 200 OK", "X: a", " folded"),
        raw("HTTP/1.1 200 OK", "X: a\x00"),
        raw("HTTP/1.1 200 OK", "X : a"),
        b"HTTP/1.1 200 OK\r\nX: a\n\r\n",
        b"HTTP/1.1 200 OK\r\n",
    ],
)
def test_malformed_responses(data: bytes) -> None:
    """Garbage, smuggling-shaped framing and obs-fold from an upstream are BadResponse (never anything else)."""
    with pytest.raises(BadResponse):
        parse_response_head(data)


@pytest.mark.parametrize(
    ("head", "method", "framing"),
    [
        (raw("HTTP/1.1 200 OK", "Content-Length: 10"), "GET", Framing.LENGTH(10)),
        (raw("HTTP/1.1 200 OK", "Content-Length: 10"), "HEAD", Framing.NONE),
        (raw("HTTP/1.1 200 OK", "Content-Length: 0"), "GET", Framing.NONE),
        (raw("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"), "POST", Framing.CHUNKED),
        (raw("HTTP/1.1 200 OK", "Transfer-Encoding: gzip"), "GET", Framing.UNTIL_CLOSE),
        (raw("HTTP/1.1 200 OK"), "GET", Framing.UNTIL_CLOSE),
        (raw("HTTP/1.1 100 Continue"), "POST", Framing.NONE),
        (raw("HTTP/1.1 204 No Content", "Content-Length: 5"), "GET", Framing.NONE),
        (raw("HTTP/1.1 304 Not Modified", "Transfer-Encoding: chunked"), "GET", Framing.NONE),
        (raw("HTTP/1.1 200 Connection established"), "CONNECT", Framing.NONE),
        (
            raw("HTTP/1.1 407 Proxy Authentication Required", "Content-Length: 4"),
            "CONNECT",
            Framing.LENGTH(4),
        ),
    ],
)
def test_response_body_framing(head: bytes, method: str, framing: Framing) -> None:
    """RFC 9112 6.3: HEAD/1xx/204/304 have no body, then chunked, then length, else until close."""
    assert response_body_framing(parse_response_head(head), method) == framing


def test_forward_response_head() -> None:
    """Hop-by-hop, Proxy-* and spoofed X-Proxy-Pool-* headers go; our Connection and extras are added."""
    resp = parse_response_head(
        raw(
            "HTTP/1.1 200 Fine",
            "Connection: X-Hop, keep-alive",
            "X-Hop: 1",
            "Keep-Alive: timeout=4",
            "Proxy-Authenticate: Basic",
            "X-Proxy-Pool-Upstream: spoof",
            "Content-Length: 2",
            'ETag: "x"',
        )
    )
    assert forward_response_head(resp, keep_alive=True, extra=[("X-Proxy-Pool-Upstream", "7")]) == (
        b'HTTP/1.1 200 Fine\r\nContent-Length: 2\r\nETag: "x"\r\nX-Proxy-Pool-Upstream: 7\r\n'
        b"Connection: keep-alive\r\n\r\n"
    )
    resp = parse_response_head(raw("HTTP/1.0 404", "Content-Length: 0"))
    assert forward_response_head(resp, keep_alive=False) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert forward_response_head(parse_response_head(CONTINUE_100), keep_alive=True) == CONTINUE_100


def test_forward_response_head_dechunked_for_http10() -> None:
    """For an HTTP/1.0 client chunked is removed from Transfer-Encoding and the connection closes."""
    resp = parse_response_head(raw("HTTP/1.1 200 OK", "Transfer-Encoding: gzip, chunked", "X: 1"))
    assert forward_response_head(resp, keep_alive=True, dechunk=True) == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nX: 1\r\nConnection: close\r\n\r\n"
    )
    resp = parse_response_head(raw("HTTP/1.1 200 OK", "Transfer-Encoding: chunked"))
    assert forward_response_head(resp, keep_alive=True, dechunk=True) == (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    )


def test_forward_switching_protocols() -> None:
    """A 101 keeps Upgrade and says Connection: upgrade."""
    resp = parse_response_head(
        raw("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade")
    )
    assert forward_response_head(resp, keep_alive=True) == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )


# --------------------------------------------------------------------------------------------
# answers of our own
# --------------------------------------------------------------------------------------------


def test_simple_response_round_trips() -> None:
    """Our 407 parses as a valid response with its one-line body, length and extra header."""
    data = simple_response(
        407, "proxy authentication required", headers=[("Proxy-Authenticate", 'Basic realm="proxy-pool"')]
    )
    head, _, body = data.partition(b"\r\n\r\n")
    resp = parse_response_head(head + b"\r\n\r\n")
    assert (resp.status, resp.reason, resp.keep_alive) == (407, "Proxy Authentication Required", False)
    assert ("Proxy-Authenticate", 'Basic realm="proxy-pool"') in resp.headers
    assert body == b"proxy authentication required\n" and resp.content_length == len(body)
    assert b"Connection: keep-alive\r\n" in simple_response(400, "x", close=False)


def test_simple_response_cannot_be_split() -> None:
    """A message with CR/LF stays one body line; a header with CR/LF is refused."""
    data = simple_response(400, "bad\r\nX-Injected: 1")
    assert data.endswith(b"\r\n\r\nbad  X-Injected: 1\n") and data.count(b"X-Injected") == 1
    with pytest.raises(ValueError):
        simple_response(400, "x", headers=[("X", "a\r\nY: b")])


def test_constants() -> None:
    """The fixed answers are well-formed heads; REASONS covers the statuses we send."""
    assert parse_response_head(CONNECT_ESTABLISHED).status == 200
    assert parse_response_head(CONTINUE_100).status == 100
    assert all(REASONS[s] for s in (400, 402, 403, 407, 408, 431, 502, 503, 504, 505))


def test_error_family() -> None:
    """Every error is a GatewayError; OriginFormRequest is a BadRequest; IncompleteBody is a ConnectionError."""
    assert issubclass(OriginFormRequest, BadRequest) and issubclass(BadRequest, GatewayError)
    assert issubclass(BadResponse, GatewayError) and issubclass(IncompleteBody, ConnectionError)
    assert str(BadRequest(431, "too big")) == "431 too big"


# --------------------------------------------------------------------------------------------
# real sockets: read_head and copy_body
# --------------------------------------------------------------------------------------------

Pair = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def connected(limit: int = 1 << 16) -> AsyncIterator[tuple[asyncio.StreamWriter, asyncio.StreamReader]]:
    """Two ends of a kernel socketpair: what is written to the first is read from the second."""
    a, b = socket.socketpair()
    _, writer = await asyncio.open_connection(sock=a, limit=limit)
    reader, other = await asyncio.open_connection(sock=b, limit=limit)
    try:
        yield writer, reader
    finally:
        for w in (writer, other):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()


async def feed(writer: asyncio.StreamWriter, data: bytes, *, step: int = 0, eof: bool = True) -> None:
    """Send ``data`` (in ``step``-sized writes when given), then half-close."""
    if step:
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
    else:
        writer.write(data)
        await writer.drain()
    if eof:
        writer.write_eof()


async def test_read_head_then_body_stays_in_stream() -> None:
    """read_head returns exactly the head; the body and the next request stay readable."""
    head = get("Content-Length: 5")
    async with connected() as (w, r):
        await feed(w, head + b"hello" + head)
        assert await read_head(r, 8192) == head
        assert await r.readexactly(5) == b"hello"
        assert await read_head(r, 8192) == head
        assert await read_head(r, 8192) is None


async def test_read_head_byte_by_byte() -> None:
    """A head trickling in one byte per write is assembled."""
    head = get("User-Agent: slow")
    async with connected() as (w, r):
        feeder = asyncio.ensure_future(feed(w, head, step=1))
        assert await read_head(r, 8192) == head
        await feeder


@pytest.mark.parametrize(("sent", "expected"), [(b"", None), (b"\r\n", None), (b"\r\n\r\n", None)])
async def test_read_head_clean_eof(sent: bytes, expected: None) -> None:
    """EOF before any request byte (a keep-alive client leaving, stray CRLFs) is None, not an error."""
    async with connected() as (w, r):
        await feed(w, sent)
        assert await read_head(r, 8192) is expected


async def test_read_head_skips_leading_empty_lines() -> None:
    """Empty lines before the request line are dropped (RFC 9112 2.2)."""
    async with connected() as (w, r):
        await feed(w, b"\r\n\r\n\r\n" + get())
        assert await read_head(r, 8192) == get()


async def test_read_head_eof_mid_head() -> None:
    """EOF in the middle of a head is 400 saying so."""
    async with connected() as (w, r):
        await feed(w, b"GET http://example.org/ HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(BadRequest) as info:
            await read_head(r, 8192)
    assert info.value.status == 400 and "middle of the request head" in info.value.message


@pytest.mark.parametrize("limit", [1 << 16, 1024])
async def test_read_head_too_large(limit: int) -> None:
    """A head past max_bytes is 431, whether the stream's own limit is above or below it."""
    big = get("X-Big: " + "a" * 5000)
    async with connected(limit=limit) as (w, r):
        await feed(w, big, eof=False)
        with pytest.raises(BadRequest) as info:
            await read_head(r, 4096)
    assert info.value.status == 431


async def test_read_head_stream_limit_below_max_bytes() -> None:
    """A stream limit smaller than the head falls back to line reads and still returns exactly the head."""
    head = get(*[f"X-H{i}: {'v' * 100}" for i in range(30)])
    assert len(head) > 3000
    async with connected(limit=1024) as (w, r):
        await feed(w, head + b"NEXT")
        assert await read_head(r, 8192) == head
        assert await r.read() == b"NEXT"


async def test_read_head_single_line_beyond_stream_limit() -> None:
    """One header line longer than the stream's limit is 431 too (nothing is buffered unbounded)."""
    async with connected(limit=1024) as (w, r):
        await feed(w, get("X-Big: " + "a" * 3000), eof=False)
        with pytest.raises(BadRequest) as info:
            await read_head(r, 8192)
    assert info.value.status == 431


async def test_read_response_head() -> None:
    """Response heads: exact bytes, None on EOF before any byte, BadResponse when cut or too large."""
    head = raw("HTTP/1.1 200 OK", "Content-Length: 0")
    async with connected() as (w, r):
        await feed(w, head)
        assert await read_response_head(r, 8192) == head
        assert await read_response_head(r, 8192) is None
    async with connected() as (w, r):
        await feed(w, b"HTTP/1.1 200 OK\r\n")
        with pytest.raises(BadResponse):
            await read_response_head(r, 8192)
    async with connected() as (w, r):
        await feed(w, raw("HTTP/1.1 200 OK", "X: " + "a" * 9000))
        with pytest.raises(BadResponse):
            await read_response_head(r, 8192)


def chunked(pieces: list[bytes], *, ext: bool = False, trailers: bytes = b"") -> bytes:
    """Encode ``pieces`` as chunks (with extensions when asked), the last chunk and a trailer section."""
    out = []
    for i, piece in enumerate(pieces):
        extension = f';n={i};q="a \\" b";flag' if ext else ""
        out.append(f"{len(piece):x}{extension}\r\n".encode() + piece + b"\r\n")
    out.append(b"0\r\n" + trailers + b"\r\n")
    return b"".join(out)


async def pump(
    data: bytes, framing: Framing, *, slow_sink: bool = False, **kwargs: object
) -> tuple[bytes, list[int], int, BaseException | None, bytes]:
    """Feed ``data`` into one socket, copy_body to another, collect what arrives.

    Returns (received, on_bytes counts, max write buffer seen, error, bytes left in the source).
    """
    counts: list[int] = []
    max_buffer = 0
    async with connected() as (src_w, src_r), connected() as (dst_w, dst_r):

        def on_bytes(n: int) -> None:
            nonlocal max_buffer
            counts.append(n)
            max_buffer = max(max_buffer, dst_w.transport.get_write_buffer_size())

        async def sink() -> bytes:
            if not slow_sink:
                return await dst_r.read()
            got = []
            while piece := await dst_r.read(4096):
                got.append(piece)
                await asyncio.sleep(0)
            return b"".join(got)

        feeder = asyncio.ensure_future(feed(src_w, data))
        collector = asyncio.ensure_future(sink())
        error: BaseException | None = None
        try:
            await copy_body(src_r, dst_w, framing, on_bytes=on_bytes, **kwargs)  # type: ignore[arg-type]
        except GatewayError as exc:
            error = exc
        dst_w.write_eof()
        received = await collector
        await feeder
        rest = await src_r.read()
    return received, counts, max_buffer, error, rest


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


async def test_copy_length_multi_megabyte() -> None:
    """LENGTH copies exactly n bytes of an 8 MB body and leaves what follows in the stream."""
    body = payload(8 << 20)
    received, counts, _, error, rest = await pump(body + b"GET next", Framing.LENGTH(len(body)))
    assert error is None and received == body and sum(counts) == len(body) and rest == b"GET next"


async def test_copy_applies_backpressure() -> None:
    """With a slow reader on the far side the write buffer stays bounded: the body is never held whole."""
    body = payload(8 << 20, seed=2)
    received, _, max_buffer, error, _ = await pump(body, Framing.LENGTH(len(body)), slow_sink=True)
    assert error is None and received == body
    assert max_buffer <= 2 * (1 << 16)


async def test_copy_chunked_verbatim_with_extensions_and_trailers() -> None:
    """CHUNKED passes sizes, extensions, data and trailers through byte for byte and stops at the end."""
    rng = random.Random(3)
    pieces = [payload(rng.choice([1, 7, 100, 4096, 70000, 300000]), seed=i) for i in range(40)]
    body = chunked(pieces, ext=True, trailers=b"X-Checksum: abc\r\nX-Empty:\r\n")
    assert len(body) > 2 << 20
    received, counts, _, error, rest = await pump(body + b"NEXT", Framing.CHUNKED)
    assert error is None and received == body and sum(counts) == len(body) and rest == b"NEXT"


async def test_copy_chunked_dechunk() -> None:
    """dechunk=True writes only the data (for an HTTP/1.0 client)."""
    pieces = [payload(n, seed=n) for n in (5, 65536, 1, 200000)]
    received, _, _, error, _ = await pump(
        chunked(pieces, ext=True, trailers=b"A: b\r\n"), Framing.CHUNKED, dechunk=True
    )
    assert error is None and received == b"".join(pieces)


async def test_copy_until_close() -> None:
    """UNTIL_CLOSE copies everything up to EOF."""
    body = payload(3 << 20, seed=4)
    received, counts, _, error, _ = await pump(body, Framing.UNTIL_CLOSE)
    assert error is None and received == body and sum(counts) == len(body)


async def test_copy_none() -> None:
    """NONE copies nothing and leaves the stream untouched."""
    received, counts, _, error, rest = await pump(b"GET next", Framing.NONE)
    assert (received, counts, error, rest) == (b"", [], None, b"GET next")


@pytest.mark.parametrize(
    ("data", "framing"),
    [
        (b"x" * 1000, Framing.LENGTH(1001)),
        (b"5\r\nhello\r\n", Framing.CHUNKED),
        (b"5\r\nhel", Framing.CHUNKED),
        (b"5\r\nhello", Framing.CHUNKED),
        (b"5\r\nhello\r\n0\r\nX: y\r\n", Framing.CHUNKED),
    ],
)
async def test_copy_incomplete(data: bytes, framing: Framing) -> None:
    """EOF before the framing's end is IncompleteBody."""
    _, _, _, error, _ = await pump(data, framing)
    assert isinstance(error, IncompleteBody)


MALFORMED_CHUNKS = [
    b"g\r\n",
    b"-5\r\nhello\r\n0\r\n\r\n",
    b" 5\r\nhello\r\n0\r\n\r\n",
    b"5 junk\r\nhello\r\n0\r\n\r\n",
    b"\r\n",
    b"5\r\nhelloXX0\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"1" * 17 + b"\r\n",
    b"5;" + b"a" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
    b"5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n",
]


@pytest.mark.parametrize("data", MALFORMED_CHUNKS, ids=[repr(d[:30]) for d in MALFORMED_CHUNKS])
async def test_copy_malformed_chunks(data: bytes) -> None:
    """Bad hex sizes, missing CRLFs, over-long size lines and bad trailers: 400 from a client, BadResponse upstream."""
    _, _, _, error, _ = await pump(data, Framing.CHUNKED)
    assert type(error) is BadRequest and error.status == 400
    _, _, _, error, _ = await pump(data, Framing.CHUNKED, response=True)
    assert type(error) is BadResponse


async def test_copy_chunked_size_line_beyond_stream_limit() -> None:
    """A chunk-size line longer than the stream's own limit is refused, not buffered."""
    _, _, _, error, _ = await pump(b"5;" + b"a" * 100000 + b"\r\nhello\r\n0\r\n\r\n", Framing.CHUNKED)
    assert type(error) is BadRequest
