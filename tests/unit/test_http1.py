"""gateway/proxy/http1: heads fed as raw bytes (bodies: tests/unit/test_body_tracker.py)."""

from __future__ import annotations

import pytest

from gateway.proxy.errors import BadRequest, BadResponse, GatewayError, IncompleteBody, OriginFormRequest
from gateway.proxy.http1 import (
    CONNECT_ESTABLISHED,
    CONTINUE_100,
    REASONS,
    Framing,
    FramingKind,
    connect_request_head,
    format_authority,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
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
