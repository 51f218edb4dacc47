"""gateway/fasthead.py against the strict parser: whenever the shortcut answers, it answers the same.

Differential tests: heads are drawn from a soup of everyday and odd field lines (whitespace the strict
parser strips, hop-by-hop fields, list-valued lengths, control characters, 1xx and HTTP/1.0 status
lines).  When ``plain_response`` recognises one, the strict parser must accept it and agree on the
status, the framing, the upstream's keep-alive and the exact bytes sent to the client.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.proxy import fasthead
from gateway.proxy.errors import BadRequest, BadResponse
from gateway.proxy.http1 import (
    FramingKind,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
    response_body_framing,
    same_head,
)

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 09:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 5\r\nConnection: keep-alive\r\nETag: \"x\"\r\n\r\nhello"
)

STATUS_LINES = st.sampled_from(
    [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 204 No Content",
        b"HTTP/1.1 304 Not Modified",
        b"HTTP/1.1 503 \t",
        b"HTTP/1.1 200  OK ",
        b"HTTP/1.1 200",
        b"HTTP/1.1 200 ",
        b"HTTP/1.1 101 Switching Protocols",
        b"HTTP/1.1 100 Continue",
        b"HTTP/1.0 200 OK",
        b"HTTP/1.1 600 Nope",
        b"HTTP/1.1 20 Short",
        b"http/1.1 200 OK",
        b"HTTP/1.1 200 \xe9t\xe9",
    ]
)
NAMES = st.sampled_from(
    [
        "Content-Length",
        "content-length",
        "Transfer-Encoding",
        "Connection",
        "connection",
        "Keep-Alive",
        "Proxy-Connection",
        "Proxy-Authenticate",
        "TE",
        "Trailer",
        "Upgrade",
        "X-Proxy-Pool-Upstream",
        "x-proxy-pool-",
        "Content-Length2",
        "Server",
        "Set-Cookie",
        "X-A",
        "ETag",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "5",
            "005",
            "5, 5",
            "5,6",
            "",
            "-1",
            "9" * 19,
            "\xb2",
            "chunked",
            "Chunked",
            "gzip, chunked",
            "gzip",
            "chunked, chunked",
            "close",
            "Keep-Alive",
            "keep-alive",
            "x-a",
            "close, x-a",
            "upgrade",
            "a b",
            "a\tb",
            "a\x01b",
            '"x"',
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n"), max_size=12),
)
SEPARATORS = st.sampled_from([": ", ": ", ": ", ":", ":  ", ":\t", " : "])
TRAILING = st.sampled_from(["", "", "", " ", "\t"])


EVERYDAY_STATUS = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 204 No Content",
                                   b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 503 Service Unavailable"])
EVERYDAY_LINES = st.one_of(
    st.sampled_from(["Server", "Content-Type", "ETag", "Set-Cookie", "X-A", "Date", "Vary"]).map(
        lambda name: name + ": " + "text/html; charset=utf-8"
    ),
    st.sampled_from(["Content-Length", "content-length"]).flatmap(
        lambda name: st.sampled_from(["0", "5", "005", "123456"]).map(lambda v: name + ": " + v)
    ),
    st.sampled_from(["Transfer-Encoding: chunked", "transfer-encoding: Chunked"]),
    st.sampled_from(["Connection: close", "Connection: keep-alive", "connection: Keep-Alive"]),
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """Mostly everyday lines (so the shortcut often answers) with odd ones mixed in."""
    odd_rate = draw(st.sampled_from([0, 0, 0.1, 0.3, 1]))
    odd = lambda: draw(st.floats(0, 1)) < odd_rate  # noqa: E731
    lines = [draw(STATUS_LINES) if odd() else draw(EVERYDAY_STATUS)]
    for _ in range(draw(st.integers(0, 8))):
        if odd():
            line = draw(NAMES) + draw(SEPARATORS) + draw(VALUES) + draw(TRAILING)
        else:
            line = draw(EVERYDAY_LINES)
        lines.append(line.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _agree(head: bytes, method: str, body: bytes = b"") -> fasthead.PlainResponse | None:
    plain = fasthead.plain_response(head + body, method)
    if plain is None:
        return None
    try:
        strict = parse_response_head(head)
    except BadResponse as exc:  # pragma: no cover - the assertion below names the case
        raise AssertionError(f"shortcut took a head the strict parser refuses: {exc.message}") from None
    framing = response_body_framing(strict, method)
    assert plain.end == len(head)
    assert plain.status == strict.status
    assert plain.framing is framing.kind
    assert (plain.length if plain.framing is FramingKind.LENGTH else 0) == framing.length
    assert plain.keep_alive == strict.keep_alive
    extra = [("X-Proxy-Pool-Upstream", "7")]
    extra_bytes = b"X-Proxy-Pool-Upstream: 7\r\n"
    for keep in (True, False):
        sliced = head[: plain.cut_start] + head[plain.cut_end : plain.fields_end]
        ending = fasthead.KEEP_ALIVE if keep else fasthead.CLOSE
        assert sliced + ending == forward_response_head(strict, keep_alive=keep)
        assert sliced + extra_bytes + ending == forward_response_head(strict, keep_alive=keep, extra=extra)
    return plain


@FUZZ
@given(heads(), st.sampled_from(["GET", "HEAD", "POST"]), st.binary(max_size=8))
@example(NGINX[: NGINX.index(b"\r\n\r\n") + 4], "GET", b"hello")
def test_shortcut_agrees_with_the_strict_parser(head: bytes, method: str, body: bytes) -> None:
    _agree(head, method, body)


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    fasthead.plain_response(data, "GET")


@FUZZ
@given(heads())
def test_agreement_also_holds_with_a_body_that_looks_like_a_head(head: bytes) -> None:
    _agree(head, "GET", NGINX)


def test_everyday_heads_take_the_shortcut() -> None:
    """So the differential tests above compare something: the shapes real servers send are recognised."""
    nginx = _agree(NGINX[:-5], "GET", b"hello")
    assert nginx is not None and nginx.framing is FramingKind.LENGTH and nginx.length == 5 and nginx.keep_alive
    assert NGINX[: nginx.cut_start] + NGINX[nginx.cut_end : nginx.fields_end] == (
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 09:00:00 GMT\r\n"
        b"Content-Type: text/html\r\nContent-Length: 5\r\nETag: \"x\"\r\n"
    )
    chunked = _agree(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "GET")
    assert chunked is not None and chunked.framing is FramingKind.CHUNKED
    closing = _agree(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "GET")
    assert closing is not None and closing.framing is FramingKind.NONE and not closing.keep_alive
    until_close = _agree(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", "GET")
    assert until_close is not None and until_close.framing is FramingKind.UNTIL_CLOSE
    head = _agree(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", "HEAD")
    assert head is not None and head.framing is FramingKind.NONE


def test_odd_heads_go_to_the_strict_parser() -> None:
    odd = [
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length:  1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close, X-A\r\nX-A: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Proxy-Pool-Upstream: 3\r\n\r\n",
        b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]
    for head in odd:
        assert fasthead.plain_response(head, "GET") is None, head


# ---------------------------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------------------------

REQUEST_LINES = st.one_of(
    st.sampled_from(["GET http://example.org/ HTTP/1.1", "GET http://127.0.0.1:8080/a?b HTTP/1.1",
                     "HEAD http://Example.ORG:80 HTTP/1.1", "GET http://example.org?q=1 HTTP/1.1"]),
    st.tuples(
        st.sampled_from(["GET", "POST", "CONNECT", "G=T", "get"]),
        st.sampled_from(["http://", "HTTP://", "https://", "", "ftp://"]),
        st.sampled_from(["example.org", "Ex.org", "[::1]", "a_b~c", "", "h%41"]),
        st.sampled_from(["", ":80", ":8080", ":08080", ":0", ":99999", ":", ":123456"]),
        st.sampled_from(["", "/", "/a?b", "?q", "/a#f", "/%7e|{}", "/ x"]),
        st.sampled_from([" HTTP/1.1", " HTTP/1.0", " HTTP/2.0", ""]),
    ).map("".join),
)
EVERYDAY_REQUEST_LINES = st.sampled_from(
    ["Host: example.org", "host: example.org:8080", "User-Agent: curl/8.5 (x y)", "Accept: */*",
     "Connection: keep-alive", "Connection: close", "connection: Keep-Alive", "Proxy-Connection: keep-alive",
     "Proxy-Connection: close", "Accept-Encoding: gzip, deflate", "Cookie: a=b; c=d"]
)
ODD_REQUEST_LINES = st.one_of(
    st.sampled_from(["Content-Length: 0", "Content-Length: 3", "Transfer-Encoding: chunked", "Expect: 100-continue",
                     "X-Proxy-Pool-Country: de", "Proxy-Authorization: Basic eDp5", "Close: 1", "Keep-Alive: 5",
                     "TE: trailers", "Upgrade: websocket", "Connection: keep-alive, Close", "Connection: X-A",
                     "X-A:  b", "X-A: b ", "X-A:b", "X-A: ", "X-A:", " folded", "X A: b", "X-A: b\x01", "X-A: \xe9t\xe9",
                     "Host: other.org", "Connection: close"]),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255, blacklist_characters="\r\n"), max_size=12),
)


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    odd_rate = draw(st.sampled_from([0, 0, 0.1, 0.3, 1]))
    odd = lambda: draw(st.floats(0, 1)) < odd_rate  # noqa: E731
    lines = [draw(REQUEST_LINES) if odd() else draw(REQUEST_LINES.filter(lambda line: line.startswith("GET http")))]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(ODD_REQUEST_LINES) if odd() else draw(EVERYDAY_REQUEST_LINES))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@FUZZ
@given(request_heads())
@example(b"GET http://a.org/ HTTP/1.1\r\nConnection: close\r\nClose: 1\r\n\r\n")  # Close is then hop-by-hop
@example(b"GET http://a.org/ HTTP/1.1\r\nHost: a.org\r\nhost: b.org\r\n\r\n")
def test_request_shortcut_agrees_with_the_strict_parser(data: bytes) -> None:
    fast = fasthead.plain_request(data)
    if fast is None:
        return
    try:
        strict = parse_request_head(data)
    except BadRequest as exc:  # pragma: no cover - the assertion names the case
        raise AssertionError(f"shortcut took a request the strict parser refuses: {exc.message}") from None
    assert same_head(fast, strict)  # every field but origin_form
    assert all(type(field) is tuple for field in fast.headers)
    assert fast.origin_form == forward_request_head(strict, absolute=False, extra=[("Connection", "keep-alive")])


@FUZZ
@given(st.binary(max_size=300))
def test_request_shortcut_never_raises(data: bytes) -> None:
    fasthead.plain_request(data)


def test_everyday_requests_take_the_shortcut() -> None:
    wrk = b"GET http://127.0.0.1:8080/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
    browser = (
        b"GET http://example.org/a?b=1 HTTP/1.1\r\nHost: example.org\r\nUser-Agent: Mozilla/5.0 (X11)\r\n"
        b"Accept: text/html,*/*;q=0.8\r\nProxy-Connection: keep-alive\r\nAccept-Encoding: gzip, deflate\r\n\r\n"
    )
    scraper = b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    user = b"GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\nProxy-Authorization: Basic YTpi\r\n\r\n"
    for data in (wrk, browser, scraper, user):
        head = fasthead.plain_request(data)
        assert head is not None and same_head(head, parse_request_head(data)), data
    authorized = fasthead.plain_request(user)
    assert authorized is not None and authorized.proxy_authorization == "Basic YTpi"
    assert authorized.origin_form == b"GET / HTTP/1.1\r\nHost: example.org\r\nConnection: keep-alive\r\n\r\n"
    assert "YTpi" not in repr(authorized)  # a secret never in a repr
    assert fasthead.plain_request(browser).origin_form == (  # type: ignore[union-attr]
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.org\r\nUser-Agent: Mozilla/5.0 (X11)\r\nAccept: text/html,*/*;q=0.8\r\n"
        b"Accept-Encoding: gzip, deflate\r\nConnection: keep-alive\r\n\r\n"
    )
