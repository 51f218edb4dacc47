"""Reading judge answers (both formats) and grading them: pure functions, fed bytes directly."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins import AnonymityLevel
from plugins.builtin.checkers._judge import (
    JudgeFormatError,
    JudgeReply,
    addresses_in,
    grade,
    normalise_ip,
    parse_judge_reply,
)

AZENV = b"""<html><head><title>AZ Environment variables 1.04</title></head><body><pre>
REMOTE_ADDR = 203.0.113.7
REMOTE_PORT = 51234
REQUEST_METHOD = GET
REQUEST_URI = /
HTTP_HOST = azenv.net
HTTP_USER_AGENT = Python/3.11 aiohttp/3.14
HTTP_X_FORWARDED_FOR = 198.51.100.1
HTTP_VIA = 1.1 squid
</pre></body></html>"""


def test_httpbin_json_is_read():
    """httpbin JSON gives origin and headers as the judge saw them."""
    body = json.dumps({"origin": "203.0.113.7", "headers": {"Host": "httpbin.org", "Via": "1.1 x"}}).encode()
    reply = parse_judge_reply(body)
    assert reply.origin == ["203.0.113.7"]
    assert reply.headers == {"Host": "httpbin.org", "Via": "1.1 x"}


def test_httpbin_origin_list_keeps_the_peer_last():
    """A judge behind a balancer lists 'forwarded, peer': the exit address is the last one."""
    reply = parse_judge_reply(b'{"origin": "198.51.100.1, 203.0.113.7", "headers": {}}')
    assert reply.origin == ["198.51.100.1", "203.0.113.7"]
    assert reply.exit_ip == "203.0.113.7"


def test_azenv_text_is_read():
    """azenv text gives REMOTE_ADDR and HTTP_* lines turned back into header names."""
    reply = parse_judge_reply(AZENV)
    assert reply.origin == ["203.0.113.7"]
    assert reply.headers["X-Forwarded-For"] == "198.51.100.1"
    assert reply.headers["Via"] == "1.1 squid"
    assert "Remote-Port" not in reply.headers


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<html>Welcome to nginx!</html>",
        b'{"headers": {}}',
        b'{"origin": 5}',
        b'{"origin": "not an ip", "headers": {}}',
        b'{"origin": "1.2.3.4", "headers": []}',
        b"{broken json",
        b"REMOTE_ADDR = nowhere\n",
    ],
)
def test_garbage_is_refused(body):
    """Anything that is neither judge format raises JudgeFormatError."""
    with pytest.raises(JudgeFormatError):
        parse_judge_reply(body)


@given(st.binary(max_size=2000))
def test_parser_never_raises_anything_else(body):
    """Arbitrary bytes either parse or raise JudgeFormatError, nothing else."""
    try:
        reply = parse_judge_reply(body)
    except JudgeFormatError:
        return
    assert reply.origin and all(normalise_ip(ip) == ip for ip in reply.origin)


_word = st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).map(str.capitalize)
header_names = st.lists(_word, min_size=1, max_size=3).map("-".join)
header_values = st.text("abcXYZ0123456789.,;:/ ", max_size=40).map(str.strip)


@given(st.ip_addresses(v=4).map(str), st.dictionaries(header_names, header_values, max_size=8))
def test_azenv_round_trip(ip, headers):
    """Headers written azenv-style come back under the same names and values."""
    lines = [f"REMOTE_ADDR = {ip}"] + [
        f"HTTP_{n.upper().replace('-', '_')} = {v}" for n, v in headers.items()
    ]
    reply = parse_judge_reply(("<pre>\n" + "\n".join(lines) + "\n</pre>").encode())
    assert reply.origin == [ip]
    assert reply.headers == headers


@given(st.ip_addresses(v=4).map(str), st.dictionaries(header_names, header_values, max_size=8))
def test_json_round_trip(ip, headers):
    """Headers sent httpbin-style come back untouched."""
    reply = parse_judge_reply(json.dumps({"origin": ip, "headers": headers}).encode())
    assert reply == JudgeReply([ip], headers)


def test_addresses_are_normalised():
    """Mapped IPv6, ports and brackets do not hide an address."""
    assert normalise_ip("::ffff:127.0.0.1") == "127.0.0.1"
    assert normalise_ip("127.0.0.1:8080") == "127.0.0.1"
    assert normalise_ip("[2001:db8::1]:443") == "2001:db8::1"
    assert normalise_ip("unknown") is None
    assert addresses_in("for=198.51.100.1, 2001:db8::2, 127.0.0.10") == [
        "198.51.100.1",
        "127.0.0.10",
        "2001:db8::2",
    ]


REAL = ["127.0.0.1"]


def reply(origin: str = "127.0.0.3", headers: dict[str, str] | None = None) -> JudgeReply:
    return JudgeReply([origin], {"Host": "127.0.0.1:8080", "User-Agent": "x", **(headers or {})})


def test_nothing_revealed_is_elite():
    """Only Host and ordinary headers: elite, even when Host names the real address."""
    verdict = grade(reply(), REAL)
    assert verdict.level is AnonymityLevel.ELITE
    assert verdict.signs == [] and verdict.exit_ip == "127.0.0.3"


def test_real_address_as_origin_is_transparent():
    """The judge saw the real address itself: transparent."""
    assert grade(reply("127.0.0.1"), REAL).level is AnonymityLevel.TRANSPARENT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Forwarded-For", "127.0.0.1"),
        ("X-Forwarded-For", "10.0.0.9, 127.0.0.1"),
        ("X-Real-Ip", "127.0.0.1"),
        ("Client-Ip", "127.0.0.1"),
        ("Forwarded", "for=127.0.0.1;proto=http"),
        ("Forwarded", 'for="[::ffff:127.0.0.1]:4711"'),
        ("X-Originating-Ip", "[127.0.0.1]"),
        ("X-Client-Address", "127.0.0.1"),
    ],
)
def test_real_address_in_a_forwarding_header_is_transparent(name, value):
    """The real address in any forwarding header: transparent."""
    verdict = grade(reply(headers={name: value}), REAL)
    assert verdict.level is AnonymityLevel.TRANSPARENT


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("Via", "1.1 squid"),
        ("X-Forwarded-For", "10.1.2.3"),
        ("X-Forwarded-For", "unknown"),
        ("Forwarded", "for=10.1.2.3"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Proxy-Id", "1234"),
        ("Client-Ip", "10.1.2.3"),
    ],
)
def test_proxy_headers_without_the_real_address_are_anonymous(name, value):
    """A proxy header that does not carry the real address: anonymous, and it is named."""
    verdict = grade(reply(headers={name: value}), REAL)
    assert verdict.level is AnonymityLevel.ANONYMOUS
    assert verdict.signs == [name]


def test_judge_front_end_headers_are_no_sign():
    """A balancer in front of the judge adds X-Forwarded-* about its peer: still elite."""
    verdict = grade(
        JudgeReply(
            ["203.0.113.7"],
            {
                "Host": "httpbin.org",
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "http",
                "X-Forwarded-Port": "80",
                "X-Amzn-Trace-Id": "Root=1-abc",
            },
        ),
        ["198.51.100.50"],
    )
    assert verdict.level is AnonymityLevel.ELITE


def test_via_naming_the_proxy_address_is_no_leak():
    """Via lists proxies, not clients: an address there equal to ours is only a sign."""
    verdict = grade(reply(headers={"Via": "1.1 127.0.0.1:3128"}), REAL)
    assert verdict.level is AnonymityLevel.ANONYMOUS


def test_a_similar_address_is_not_the_real_one():
    """127.0.0.10 is not 127.0.0.1: substring matches never count."""
    verdict = grade(reply(headers={"X-Forwarded-For": "127.0.0.10"}), REAL)
    assert verdict.level is AnonymityLevel.ANONYMOUS


@given(st.ip_addresses(v=4).map(str), st.dictionaries(header_names, header_values, max_size=6))
def test_real_address_forwarded_is_always_transparent(origin, headers):
    """Whatever else the judge saw, the real address in X-Forwarded-For makes the proxy transparent."""
    headers = {**headers, "X-Forwarded-For": "127.0.0.1"}
    assert grade(JudgeReply([origin], headers), REAL).level is AnonymityLevel.TRANSPARENT
