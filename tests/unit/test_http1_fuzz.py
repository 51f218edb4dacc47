"""gateway/http1.py under hypothesis: garbage never escapes as anything but our errors; valid heads round-trip."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.proxy.errors import BadRequest, BadResponse
from gateway.proxy.http1 import (
    RequestHead,
    forward_request_head,
    forward_response_head,
    parse_request_head,
    parse_response_head,
    response_body_framing,
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = (
    b"POST http://example.org:8080/p?q=1 HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8\r\n"
    b"Connection: keep-alive, X-A\r\nX-A: 1\r\nX-Proxy-Pool-Country: de\r\nContent-Length: 3\r\n\r\n"
)
HEAD_BYTES = st.sampled_from(list(b'\r\n\t :;,/?#@[]"\x00\x01\x7f\x80\xff0aZ-') + list(range(256)))


def _only_bad_request(data: bytes) -> RequestHead | None:
    try:
        return parse_request_head(data)
    except BadRequest as exc:
        assert 400 <= exc.status < 600
        assert exc.message and "\n" not in exc.message and "\r" not in exc.message
        return None


@FUZZ
@given(st.binary(max_size=2000))
@example(b"")
@example(b"\r\n")
@example(b"GET http://[ HTTP/1.1\r\n\r\n")
@example(b"CONNECT [:443 HTTP/1.1\r\n\r\n")
def test_arbitrary_bytes_only_raise_bad_request(data: bytes) -> None:
    """Arbitrary bytes (and the same bytes ended like a head) parse or raise BadRequest, nothing else."""
    _only_bad_request(data)
    _only_bad_request(data + b"\r\n\r\n")


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 5), st.binary(min_size=0, max_size=4)), max_size=4),
    st.lists(st.integers(0, len(VALID) - 5), max_size=3),
)
def test_mutated_valid_head_only_raises_bad_request(
    inserts: list[tuple[int, bytes]], deletes: list[int]
) -> None:
    """A valid head with bytes inserted and deleted near the structure parses or raises BadRequest."""
    data = bytearray(VALID)
    for at in deletes:
        del data[at % (len(data) - 4)]
    for at, piece in inserts:
        data[at:at] = piece
    head = _only_bad_request(bytes(data))
    if head is not None:  # what parsed must forward and parse again
        _only_bad_request(forward_request_head(head, absolute=True))


@FUZZ
@given(st.lists(HEAD_BYTES, max_size=300).map(bytes))
def test_header_soup_only_raises_bad_request(soup: bytes) -> None:
    """A header section made of delimiters and control bytes parses or raises BadRequest."""
    _only_bad_request(b"GET http://example.org/ HTTP/1.1\r\n" + soup + b"\r\n\r\n")


@FUZZ
@given(st.binary(max_size=1000))
def test_arbitrary_response_bytes_only_raise_bad_response(data: bytes) -> None:
    """Arbitrary upstream bytes parse or raise BadResponse; what parses has a framing and forwards."""
    for candidate in (data, b"HTTP/1.1 200 OK\r\n" + data + b"\r\n\r\n"):
        try:
            resp = parse_response_head(candidate)
        except BadResponse:
            continue
        response_body_framing(resp, "GET")
        out = forward_response_head(resp, keep_alive=True)
        assert parse_response_head(out).status == resp.status


# --------------------------------------------------------------------------------------------
# round trip of valid requests
# --------------------------------------------------------------------------------------------

HOP_BY_HOP = {
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
RESERVED = HOP_BY_HOP | {"content-length", "transfer-encoding", "expect"}

TCHARS = "-!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VCHARS = "".join(chr(c) for c in [*range(0x21, 0x7F), *range(0x80, 0x100)])
PCHARS = "-._~!$&'()*+,;=:@%0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

tokens = st.text(TCHARS, min_size=1, max_size=20)
names = tokens.filter(lambda n: n.lower() not in RESERVED and not n.lower().startswith("x-proxy-pool-"))
values = st.text(VCHARS + " \t", max_size=30).map(lambda v: v.strip(" \t"))
ows = st.sampled_from(["", " ", "  ", "\t", " \t"])
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
paths = st.builds(
    lambda segments, query: "".join("/" + s for s in segments) + (f"?{query}" if query is not None else ""),
    st.lists(st.text(PCHARS, max_size=12), min_size=1, max_size=4),
    st.one_of(st.none(), st.text(PCHARS + "/?", max_size=20)),
)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PURGE", "M-SEARCH"])
hop_headers = st.sampled_from(
    [
        ("Connection", "keep-alive"),
        ("Proxy-Connection", "keep-alive"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Authorization", "Basic YTpi"),
        ("X-Proxy-Pool-Session", "s1"),
        ("Upgrade", "h2c"),
        ("Trailer", "X-Sum"),
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str, str, int, str, list[tuple[str, str]]]:
    method = draw(methods)
    host = draw(hosts)
    port = draw(st.integers(1, 65535))
    path = draw(paths)
    authority = f"[{host}]" if ":" in host else host
    ends_to_end = draw(st.lists(st.tuples(names, values), max_size=8))
    hops = draw(st.lists(hop_headers, max_size=3, unique_by=lambda h: h[0]))
    named = draw(st.lists(st.sampled_from([n for n, _ in ends_to_end]), max_size=2)) if ends_to_end else []
    if named:
        hops = [h for h in hops if h[0] != "Connection"] + [("Connection", ", ".join(named))]
    lines = [f"{method} http://{authority}:{port}{path} HTTP/1.1", f"Host: {authority}"]
    mixed = list(ends_to_end) + hops
    order = draw(st.permutations(range(len(mixed))))
    for i in order:
        name, value = mixed[i]
        lines.append(f"{name}:{draw(ows)}{value}{draw(ows)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    dropped = {n.lower() for n in named}
    expected = [
        mixed[i]
        for i in order
        if mixed[i][0].lower() not in HOP_BY_HOP | dropped
        and not mixed[i][0].lower().startswith("x-proxy-pool-")
    ]
    return data, method, host, port, path, expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_valid_requests_round_trip(case: tuple[bytes, str, str, int, str, list[tuple[str, str]]]) -> None:
    """parse -> forward (absolute) -> parse keeps method, host, port, path and the end-to-end headers."""
    data, method, host, port, path, expected = case
    head = parse_request_head(data)
    assert (head.method, head.host, head.port, head.path) == (method, host.lower(), port, path)
    again = parse_request_head(forward_request_head(head, absolute=True))
    assert (again.method, again.host, again.port, again.path) == (method, host.lower(), port, path)
    assert again.headers[0][0] == "Host"
    assert again.headers[1:] == expected
    assert again.pool_params == {} and again.proxy_authorization is None
    origin = forward_request_head(head, absolute=False)
    assert origin.startswith(f"{method} {path} HTTP/1.1\r\nHost: ".encode())


# --------------------------------------------------------------------------------------------
# chunked bodies through real sockets
# --------------------------------------------------------------------------------------------

extensions = st.lists(
    st.tuples(
        ows,
        tokens,
        st.one_of(
            st.none(),
            tokens,
            st.text(VCHARS.replace('"', "").replace("\\", "") + " ", max_size=10).map(lambda v: f'"{v}"'),
        ),
    ),
    max_size=2,
)


def _encode(
    pieces: list[tuple[bytes, list[tuple[str, str, str | None]]]], trailers: list[tuple[str, str]]
) -> bytes:
    out = []
    for data, exts in pieces:
        ext = "".join(f"{sp};{name}" + (f"={val}" if val is not None else "") for sp, name, val in exts)
        out.append(f"{len(data):X}{ext}\r\n".encode("latin-1") + data + b"\r\n")
    out.append(b"0\r\n" + "".join(f"{n}: {v}\r\n" for n, v in trailers).encode("latin-1") + b"\r\n")
    return b"".join(out)


TARGET_PIECES = st.sampled_from(["http://", "HTTP://", "https://", "a", "b.example", "[::1]", ":", "8080", "99999",
                                 "/", "?", "#", "@", "%41", "*", "", "x y", "\t"])


@FUZZ
@given(st.lists(TARGET_PIECES, max_size=6).map("".join), st.sampled_from(["GET", "CONNECT", "G=T"]),
       st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "http/1.1"]))
def test_request_line_split_agrees_with_the_abnf(target: str, method: str, version: str) -> None:
    """The request-line pattern that also splits absolute-form targets accepts exactly the ABNF's lines,
    and splits a target exactly as ``_ABSOLUTE_FORM`` would."""
    import re

    from gateway.proxy.http1 import grammar

    line = f"{method} {target} {version}"
    split = grammar._REQUEST_LINE_SPLIT.fullmatch(line)
    plain = re.fullmatch(grammar.request_line, line)
    assert (split is None) == (plain is None)
    if split is not None:
        absolute = grammar._ABSOLUTE_FORM.fullmatch(split.group(2))
        assert (split.group(3) is not None) == (absolute is not None)
        if absolute is not None:
            assert split.group(3, 4, 5) == absolute.groups()
