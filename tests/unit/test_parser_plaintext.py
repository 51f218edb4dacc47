"""The plaintext parser: real-world list shapes, hostile bodies, and round-trip properties."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from config import Settings
from plugins import DiscoveredProxy, PluginRegistry, ProxyProtocol, ProxySource, UpstreamURL
from plugins.builtin.parsers import plaintext
from plugins.builtin.parsers.plaintext import PlaintextParser, create_plugin, parse_body, parse_text

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sources"


def _source(url: str = "https://example.test/list.txt") -> ProxySource:
    return ProxySource(id=7, url=url, default_protocol=ProxyProtocol.HTTP)


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


DP = DiscoveredProxy


# -- fixtures shaped like real sources -------------------------------------------------------------


async def test_spys_me_list_with_header_and_footer_lines():
    """A spys.me-style list: status lines around `ip:port CC-A-S +` rows; the prose lines are counted."""
    outcome = parse_body(_fixture("spys_me_proxy.txt"))
    assert outcome.proxies == [
        DP("203.0.113.10", 3128),
        DP("198.51.100.7", 8080),
        DP("192.0.2.44", 80),
        DP("203.0.113.201", 53281),
        DP("198.51.100.99", 3129),
        DP("192.0.2.250", 8888),
    ]
    assert outcome.skipped == 7
    assert await PlaintextParser().parse(_fixture("spys_me_proxy.txt"), _source()) == outcome.proxies


def test_proxy_list_download_crlf_list():
    """A proxy-list.download-style API answer: bare ip:port lines ending in CRLF."""
    outcome = parse_body(_fixture("proxy_list_download.txt"))
    assert outcome.proxies == [
        DP("198.51.100.1", 8080),
        DP("198.51.100.2", 3128),
        DP("203.0.113.3", 80),
        DP("203.0.113.4", 8118),
        DP("192.0.2.5", 9090),
    ]
    assert outcome.skipped == 0


def test_proxyscrape_protocol_ip_port_list_keeps_each_scheme():
    """A proxyscrape `protocolipport` list: the scheme on each line becomes that entry's protocol."""
    outcome = parse_body(_fixture("proxyscrape_protocolipport.txt"))
    assert outcome.proxies == [
        DP("203.0.113.50", 8080, "http"),
        DP("198.51.100.51", 4145, "socks4"),
        DP("192.0.2.52", 1080, "socks5"),
        DP("203.0.113.53", 443, "https"),
        DP("198.51.100.54", 9050, "socks5"),
    ]


def test_mixed_list_every_spelling_and_every_bad_line():
    """BOM, CRLF, comments, columns, credentials, IPv6, hostnames; bad addresses and bytes are counted."""
    outcome = parse_body(_fixture("mixed_list.txt"))
    assert outcome.proxies == [
        DP("192.0.2.1", 8080),
        DP("192.0.2.2", 3128),
        DP("192.0.2.3", 80),
        DP("192.0.2.4", 8000),
        DP("192.0.2.5", 8081),
        DP("192.0.2.6", 8082),
        DP("192.0.2.7", 8083),
        DP("192.0.2.8", 3128),
        DP("198.51.100.9", 1080, "socks5", "user", "s3cret"),
        DP("198.51.100.10", 4145, "socks4"),
        DP("203.0.113.11", 8080, "http"),
        DP("203.0.113.12", 9050, "socks5"),
        DP("203.0.113.13", 3128, None, "alice", "p@ss"),
        DP("203.0.113.14", 8888, None, "bob", "hunter2"),
        DP("2001:db8::1", 8080),
        DP("2001:db8::2", 1080, "socks5"),
        DP("proxy.example.com", 3128),
        DP("192.0.2.19", 8090),
    ]
    # 999.1.1.1, port 70000, no port, port 0, ftp://, prose, undecodable junk
    assert outcome.skipped == 7


# -- edge cases --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "1.2.3.4:8080",
        "  1.2.3.4:8080  ",
        "1.2.3.4:8080\tUS\telite",
        "1.2.3.4:8080,US,elite",
        "1.2.3.4:8080;US",
        "1.2.3.4:8080|US",
        "1.2.3.4:8080#fast",
        "1.2.3.4:08080",
        "1.2.3.4 8080",
        "1.2.3.4:8080/",
    ],
)
def test_one_address_in_many_spellings(line):
    """Every common column/spacing variant of one bare address yields exactly that address."""
    assert parse_text(line + "\n") == plaintext.ParseOutcome([DP("1.2.3.4", 8080)], 0)


@pytest.mark.parametrize(
    "line",
    [
        "01.2.3.4:80",
        "1.2.3.256:80",
        "1.2.3.4:0",
        "1.2.3.4:65536",
        "1.2.3.4",
        "1.2.3.4:http",
        "2001:db8::1:80",
        "Updated 20 Jan",
        "gopher://1.2.3.4:70",
        "[1.2.3.4]:80",
        "[::1]80",
        "a..b:80",
        "-bad.example:80",
    ],
)
def test_invalid_lines_are_skipped_and_counted(line):
    """Broken octets, ports, schemes and hosts are skipped one by one and counted, never fatal."""
    assert parse_text(f"{line}\n5.6.7.8:3128\n") == plaintext.ParseOutcome([DP("5.6.7.8", 3128)], 1)


def test_comments_blank_lines_and_bom_only_give_an_empty_list():
    """A list with nothing but a BOM, comments and blank lines is a valid empty list."""
    assert parse_body(b"\xef\xbb\xbf# nothing today\r\n\r\n// see you later\n   \n") == ([], 0)
    assert parse_body(b"") == ([], 0)


def test_utf16_list_with_bom():
    """A list saved as UTF-16 by a Windows editor still parses."""
    assert parse_body("1.2.3.4:8080\r\n5.6.7.8:3128\r\n".encode("utf-16")).proxies == [
        DP("1.2.3.4", 8080),
        DP("5.6.7.8", 3128),
    ]


def test_bad_bytes_spoil_only_their_own_line():
    """An undecodable byte inside one line leaves the neighbouring lines intact."""
    outcome = parse_body(b"1.2.3.4:8080\n\xff\xfe9.9.9.9:80\n5.6.7.8:3128 \xe9lite\n")
    assert outcome == ([DP("1.2.3.4", 8080), DP("5.6.7.8", 3128)], 1)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<!DOCTYPE html><html><body>Just a moment...</body></html>", "HTML"),
        (b'{"data": [{"ip": "1.2.3.4", "port": 80}]}', "json_api"),
        (bytes(range(256)) * 8, "binary"),
        (b"Access denied\nToo many requests\n", "text without proxy addresses"),
    ],
)
async def test_a_body_without_any_proxy_is_an_error_saying_what_it_is(body, words):
    """HTML, JSON, binary junk or prose where a list was expected: one clear ValueError line."""
    with pytest.raises(ValueError, match=words) as info:
        await PlaintextParser().parse(body, _source())
    message = str(info.value)
    assert message.startswith("plaintext: ") and "\n" not in message.strip("'")


async def test_large_body_is_parsed_off_the_loop_with_the_same_result():
    """A body above the thread threshold gives the same proxies as the pure function."""
    body = "".join(f"10.0.{i // 250}.{i % 250 + 1}:{1024 + i}\n" for i in range(20_000)).encode()
    assert len(body) > 256 * 1024
    proxies = await PlaintextParser().parse(body, _source())
    assert proxies == parse_body(body).proxies
    assert len(proxies) == 20_000 and proxies[-1] == DP("10.0.79.250", 1024 + 19_999)


@pytest.mark.parametrize(
    ("scheme", "protocol"),
    [
        ("http", "http"),
        ("HTTPS", "https"),
        ("socks4", "socks4"),
        ("socks4a", "socks4"),
        ("SOCKS5", "socks5"),
        ("socks5h", "socks5"),
    ],
)
def test_scheme_aliases(scheme, protocol):
    """socks4a and socks5h are read as socks4 and socks5, in any case, with or without columns."""
    text = f"{scheme}://1.2.3.4:1080\n{scheme}://5.6.7.8:1080 US\n{scheme}://h.example:1080\n"
    assert parse_text(text).proxies == [DP("1.2.3.4", 1080, protocol), DP("5.6.7.8", 1080, protocol),
                                        DP("h.example", 1080, protocol)]  # fmt: skip


# -- the plugin surface ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://raw.githubusercontent.com/o/r/main/http.txt", True),
        ("https://example.test/PROXIES.TXT?token=abc", True),
        ("https://example.test/socks5.list", True),
        ("file:///srv/lists/mine.txt", True),
        ("/home/me/proxies.txt", True),
        ("https://example.test/list.txt.html", False),
        ("https://example.test/api/proxies?format=txt", False),
        ("https://free-proxy-list.net/", False),
    ],
)
def test_supports_txt_and_list_paths_ignoring_query_and_case(url, expected):
    """`.txt` / `.list` paths are claimed whatever the case or query; other URLs are not."""
    assert PlaintextParser().supports(url) is expected


def test_create_plugin_gives_a_valid_registered_parser():
    """The factory's product passes the registry's protocol check under the name `plaintext`."""
    registry = PluginRegistry()
    registry.register(create_plugin(Settings()), "plugins.builtin.parsers.plaintext")
    parser = registry.get_parser("plaintext")
    assert parser.default_schedule() == "*/30 * * * *"


# -- properties --------------------------------------------------------------------------------------

_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(lambda a: a.compressed)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hostname = st.builds(
    lambda labels, tld: ".".join([*labels, tld]),
    st.lists(_label, min_size=1, max_size=3),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
)
_secret = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def _entries(draw):
    """A proxy and the way one list line spells it; returns (line, expected DiscoveredProxy)."""
    kind = draw(st.sampled_from(["v4", "v6", "name"]))
    host = draw({"v4": _ipv4, "v6": _ipv6, "name": _hostname}[kind])
    mixed_case_host = (
        "".join(c.upper() if draw(st.booleans()) else c for c in host) if kind == "name" else host
    )
    port = draw(st.integers(1, 65535))
    netloc = f"[{mixed_case_host}]:{port}" if kind == "v6" else f"{mixed_case_host}:{port}"
    style = draw(st.sampled_from(["bare", "scheme", "creds", "bare_creds", "colon_creds"]))
    protocol = user = password = None
    if style == "colon_creds" and kind == "v6":
        style = "creds"
    if style == "bare":
        line = netloc
    elif style == "scheme":
        protocol = draw(st.sampled_from(list(ProxyProtocol)))
        scheme = draw(st.sampled_from([protocol.value, protocol.value.upper()]))
        line = f"{scheme}://{netloc}"
    elif style in ("creds", "bare_creds"):
        user, password = draw(_secret), draw(_secret)
        userinfo = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        if style == "creds":
            protocol = draw(st.sampled_from(list(ProxyProtocol)))
            line = f"{protocol.value}://{userinfo}{netloc}"
        else:
            line = f"{userinfo}{netloc}"
    else:
        user = draw(st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True))
        password = draw(st.from_regex(r"[A-Za-z0-9_.!*-]{1,10}", fullmatch=True))
        line = f"{netloc}:{user}:{password}"
    extra = draw(
        st.sampled_from(["", "   ", "\tUS\telite", " US elite", ",DE,anonymous", ";FR", " | GB", " # ok"])
    )
    return line + extra, DP(host.lower(), port, protocol, user, password)


_noise = st.sampled_from(["", "   ", "# comment 1.2.3.4:80", "// comment", "#", "\t"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(_entries(), st.lists(_noise, max_size=2)), max_size=20),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_generated_lists_round_trip_exactly(items, newline, bom):
    """Valid proxies in mixed spellings, with comments and blank lines between, all come back in order."""
    lines: list[str] = []
    for (line, _), noise in items:
        lines.extend(noise)
        lines.append(line)
    body = ("\ufeff" if bom else "") + newline.join(lines) + newline
    outcome = parse_body(body.encode("utf-8"))
    assert outcome.proxies == [expected for (_, expected), _ in items]
    assert outcome.skipped == 0


@settings(max_examples=300)
@given(st.text())
@example("\ufeff")
@example("[::1]:\n:\n@\n://\n[\n1.2.3.4:99999999999999999999999")
def test_any_text_never_raises_and_everything_returned_is_valid(text):
    """Arbitrary text never raises; each result re-validates and found + skipped never exceeds the lines."""
    outcome = parse_text(text)
    assert len(outcome.proxies) + outcome.skipped <= len(text.splitlines())
    for proxy in outcome.proxies:
        url = proxy.to_upstream("http")
        assert (url.host, url.port) == (proxy.ip, proxy.port)


@settings(max_examples=300)
@given(st.binary(max_size=2048))
def test_any_bytes_give_proxies_or_a_plaintext_value_error(raw):
    """Arbitrary bytes either parse or raise a ValueError naming the parser, nothing else."""
    try:
        parse_body(raw)
    except ValueError as exc:
        assert str(exc).startswith("plaintext: ")


_valid_octet = st.integers(0, 255).map(str)
# four valid octets in five, so about four addresses in ten are valid and both paths are exercised
_octet_text = st.one_of(
    _valid_octet,
    _valid_octet,
    _valid_octet,
    _valid_octet,
    st.sampled_from(["256", "300", "999", "00", "01", "012", "0255", "1e1", "", "-1"]),
)


_scheme_text = st.sampled_from(
    [
        "",
        "http://",
        "HTTPS://",
        "socks4://",
        "Socks4a://",
        "socks5://",
        "socks5H://",
        "ftp://",
        "socks://",
        "http:/",
    ]
)


@settings(max_examples=300)
@given(
    _scheme_text,
    st.lists(_octet_text, min_size=4, max_size=4),
    st.one_of(st.integers(0, 70000).map(str), st.just("080")),
    st.sampled_from(["", " US", "\tx", ",x", "/", "#c", ":u:p"]),
)
def test_fast_path_agrees_with_upstream_url_parse(scheme, octets, port, tail):
    """The [scheme://]IPv4:port fast path accepts exactly what the slow path accepts, with the same values."""
    token = f"{scheme}{'.'.join(octets)}:{port}"
    try:
        url = UpstreamURL.parse(token, default_protocol="http")
        expected = [DP(url.host, url.port, url.protocol if scheme else None)]
    except ValueError:
        expected = []
    if tail == ":u:p" and expected:
        expected = [] if scheme else [DP(expected[0].ip, expected[0].port, None, "u", "p")]
    assert parse_text(token + tail).proxies == expected
    if expected and all(octet.isdigit() for octet in octets):
        assert ipaddress.ip_address(expected[0].ip).version == 4
