"""What a SOCKS session serves as HTTP and what it relays raw (gateway.proxy.fixed), under hypothesis.

The two properties that matter: a valid everyday request is never judged raw however it is split
(every prefix ``could_be_head``), and nothing the strict parser would refuse is ever served as HTTP.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy import http1
from gateway.proxy.errors import BadRequest
from gateway.proxy.fixed import could_be_head, fixed_head

_TCHAR = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_NAMES = st.text(_TCHAR, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in {"host", "content-length", "transfer-encoding", "upgrade", "authorization", "te",
                                "connection", "proxy-connection", "keep-alive", "trailer", "expect",
                                "proxy-authorization", "proxy-authenticate"}
    and not n.lower().startswith("x-proxy-pool-")
)
_VALUES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
_HOSTS = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, str]:
    method = draw(st.sampled_from(["GET", "HEAD", "OPTIONS", "DELETE", "GET"]))
    path = "/" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#"), max_size=20))
    host = draw(_HOSTS)
    port = draw(st.one_of(st.none(), st.integers(1, 65535)))
    authority = host if port is None else f"{host}:{port}"
    fields = draw(st.lists(st.tuples(_NAMES, _VALUES), max_size=5))
    lines = [f"{method} {path} HTTP/1.1", *(f"{n}: {v}" for n, v in fields)]
    lines.insert(draw(st.integers(1, len(lines))), f"Host: {authority}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), host.strip("[]").lower()


@settings(max_examples=120, deadline=None)
@given(requests(), st.data())
def test_an_everyday_request_is_served_however_it_is_split(request: tuple[bytes, str], data: st.DataObject) -> None:
    raw, host = request
    head = fixed_head(raw)
    assert head is not None, raw
    assert head.host == host and not head.is_connect and head.version == "HTTP/1.1"
    for cut in sorted(data.draw(st.sets(st.integers(1, len(raw) - 1), max_size=8))):
        assert could_be_head(raw[:cut]), raw[:cut]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_and_only_strict_heads_are_served(raw: bytes) -> None:
    could_be_head(raw)
    head = fixed_head(raw)
    if head is None:
        return
    line_end = raw.index(b"\r\n")
    method, target, _ = raw[:line_end].split(b" ")
    assert target.startswith(b"/") and method != b"CONNECT"
    absolute = method + b" http://" + head.host.encode() + raw[len(method) + 1 :]
    try:  # the strict parser agrees: it would have accepted this (its authority spelled as parsed)
        http1.parse_request_head(absolute.replace(b" http://" + head.host.encode() + b"/", b" http://h/", 1))
    except BadRequest as exc:  # pragma: no cover - a disagreement is the bug this test looks for
        raise AssertionError(f"served {raw!r}, which the strict parser refuses: {exc}") from None


def test_what_goes_raw() -> None:
    for raw in (
        b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",  # absolute form
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Negotiate YII=\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic eDp5\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Proxy-Pool-Session: s\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ):
        assert fixed_head(raw) is None, raw
    for start in (b"\x16\x03\x01", b"SSH-2.0", b"get / HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b"\r\nGET", b"EHLO x\r\n"):
        assert not could_be_head(start), start
    assert fixed_head(b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n") is not None  # a body is fine
