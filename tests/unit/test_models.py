"""pool.models: proxy URLs parsed and written in one place, credentials never shown, API shapes."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pool.models import (
    AnonymityLevel,
    DiscoveredProxy,
    Event,
    Proxy,
    ProxyCheck,
    ProxyProtocol,
    ProxySource,
    ProxyStatus,
    UpstreamURL,
    masked_url,
)

# -- strategies ------------------------------------------------------------------------------------

protocols = st.sampled_from(list(ProxyProtocol))
ports = st.integers(min_value=1, max_value=65535)
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
label = st.from_regex(r"\A[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\Z")
hostnames = (
    st.lists(label, min_size=1, max_size=4).map(".".join).filter(lambda h: not h.split(".")[-1].isdigit())
)
hosts = st.one_of(ipv4, ipv6, hostnames)
secrets_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)


def netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- parse -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://1.2.3.4:8080", UpstreamURL(ProxyProtocol.HTTP, "1.2.3.4", 8080)),
        ("https://proxy.example.com:443", UpstreamURL(ProxyProtocol.HTTPS, "proxy.example.com", 443)),
        ("socks4://10.0.0.1:1080", UpstreamURL(ProxyProtocol.SOCKS4, "10.0.0.1", 1080)),
        ("socks5://u:p@10.0.0.1:1080", UpstreamURL(ProxyProtocol.SOCKS5, "10.0.0.1", 1080, "u", "p")),
        ("socks5h://h.example:1080", UpstreamURL(ProxyProtocol.SOCKS5, "h.example", 1080)),
        ("socks4a://h.example:1080", UpstreamURL(ProxyProtocol.SOCKS4, "h.example", 1080)),
        ("HTTP://Proxy.Example:3128/", UpstreamURL(ProxyProtocol.HTTP, "proxy.example", 3128)),
        ("  http://1.2.3.4:80  ", UpstreamURL(ProxyProtocol.HTTP, "1.2.3.4", 80)),
        ("http://[2001:db8::1]:3128", UpstreamURL(ProxyProtocol.HTTP, "2001:db8::1", 3128)),
        ("http://u:p%40ss@h.example:1", UpstreamURL(ProxyProtocol.HTTP, "h.example", 1, "u", "p@ss")),
        ("http://u:p@ss@h.example:1", UpstreamURL(ProxyProtocol.HTTP, "h.example", 1, "u", "p@ss")),
        ("http://user@h.example:1", UpstreamURL(ProxyProtocol.HTTP, "h.example", 1, "user", None)),
    ],
)
def test_parse_examples(text, expected):
    """Scheme, credentials, IPv6 brackets, aliases and case are read as a user means them."""
    assert UpstreamURL.parse(text) == expected


def test_bare_host_port_takes_the_default_protocol():
    """A bare host:port gets the source's default protocol; without one it is refused."""
    assert UpstreamURL.parse("1.2.3.4:3128", default_protocol="socks5").protocol is ProxyProtocol.SOCKS5
    assert UpstreamURL.parse("[::1]:1", default_protocol=ProxyProtocol.HTTPS).url == "https://[::1]:1"
    with pytest.raises(ValueError, match="no scheme"):
        UpstreamURL.parse("1.2.3.4:3128")


def test_explicit_scheme_wins_over_default_protocol():
    """A scheme in the line beats the source default."""
    assert UpstreamURL.parse("socks4://1.2.3.4:1", default_protocol="http").protocol is ProxyProtocol.SOCKS4


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ftp://1.2.3.4:21",
        "http://1.2.3.4",
        "http://1.2.3.4:",
        "http://1.2.3.4:0",
        "http://1.2.3.4:65536",
        "http://1.2.3.4:80x",
        "http://1.2.3.4:-1",
        "http://1.2.3.999:80",
        "http://a..b:80",
        "http://-a.example:80",
        "http://[1.2.3.4]:80",
        "http://[::1]80",
        "http://[::1:80",
        "http://1.2.3.4:80/path",
        "http://exa mple.com:80",
    ],
)
def test_parse_rejects_with_value_error(text):
    """Invalid scheme, host or port is a ValueError saying what is wrong."""
    with pytest.raises(ValueError):
        UpstreamURL.parse(text, default_protocol="http")


@given(st.text(max_size=80))
@example("http://[")
@example("socks5://@:1")
@example("http://%zz:%zz@h:1")
def test_parse_never_raises_anything_but_value_error(text):
    """Fuzz: arbitrary text parses or raises ValueError, nothing else."""
    try:
        up = UpstreamURL.parse(text, default_protocol="http")
    except ValueError:
        return
    assert 1 <= up.port <= 65535
    assert up.host == up.host.lower()


@given(protocols, hosts, ports)
def test_roundtrip_without_credentials(protocol, host, port):
    """Property: building then parsing a URL gives the same upstream; display equals url."""
    up = UpstreamURL(protocol, host, port)
    assert UpstreamURL.parse(up.url) == up
    assert up.display == up.url
    assert up.netloc == netloc(host, port)
    assert up.key == (protocol.value, host, port)


@given(protocols, hosts, ports, secrets_text, secrets_text)
def test_roundtrip_with_any_credentials(protocol, host, port, user, password):
    """Property: any user/password (":", "@", "/", unicode) survives url -> parse, percent-encoded."""
    up = UpstreamURL(protocol, host, port, user, password)
    assert UpstreamURL.parse(up.url) == up


@given(
    protocols, hosts, ports, secrets_text, st.text(alphabet="abcdefghijk0123456789", min_size=6, max_size=12)
)
def test_display_never_shows_the_password(protocol, host, port, user, password):
    """Property: the display form masks the password as *** and keeps the rest."""
    up = UpstreamURL(protocol, host, port, user, password)
    assert password not in up.display.split("@")[0].split("://")[1].split(":", 1)[1]
    assert ":***@" in up.display
    assert up.display.endswith("@" + netloc(host, port))


def test_display_masks_password_example():
    """The docstring example: socks5://u:***@host:port."""
    assert UpstreamURL.parse("socks5://u:p@10.0.0.1:1080").display == "socks5://u:***@10.0.0.1:1080"
    assert "hunter2" not in repr(Proxy(1, UpstreamURL.parse("http://u:hunter2@h.example:1")))


@given(protocols, hosts, ports, st.text(alphabet="abcdefghijk0123456789", min_size=6, max_size=12))
def test_display_never_shows_a_lone_username(protocol, host, port, token):
    """Property: a username given alone (``http://TOKEN@host:port``, a token) is shown as ``***@``."""
    up = UpstreamURL(protocol, host, port, token, None)
    assert up.display == f"{protocol.value}://***@{netloc(host, port)}"
    assert UpstreamURL.parse(up.url) == up  # the stored / dialled form keeps it


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://srcuser:SRCPASS@host.example/list.txt?apikey=SRCKEY",
         "http://srcuser:***@host.example/list.txt?apikey=***"),
        ("http://TOKEN@host.example/list.txt", "http://***@host.example/list.txt"),
        ("https://host.example/l.txt?key=K1&fmt=txt&flag", "https://host.example/l.txt?key=***&fmt=***&flag"),
        ("https://host.example/l.txt#access_token=abc", "https://host.example/l.txt#***"),
        ("https://u:p%40ss@host.example:8443/x", "https://u:***@host.example:8443/x"),
        ("file:///srv/lists/mine.txt", "file:///srv/lists/mine.txt"),
        ("https://host.example/plain.txt", "https://host.example/plain.txt"),
    ],
)
def test_masked_source_urls(url, shown):
    """A source URL is shown with its password, a lone username and every query value as ***."""
    assert masked_url(url) == shown
    source = ProxySource(id=1, url=url)
    assert source.display_url == shown and source.public_dict()["url"] == shown
    assert source.url == url  # stored whole


@given(st.text(alphabet="abcdefghijkLMNOP0123456789-_.~", min_size=4, max_size=16),
       st.text(alphabet="abcdefghijkLMNOP0123456789", min_size=4, max_size=16))
def test_scrubbed_text_never_holds_a_source_secret(password, key):
    """Property: an error quoting the URL or its secrets keeps none of them."""
    url = f"https://user:{password}@lists.example/p.txt?apikey={key}"
    text = f"GET {url} failed: bad key {key}; auth {password}"
    scrubbed = ProxySource(id=1, url=url).scrub(text)
    assert password not in scrubbed and key not in scrubbed
    assert "https://user:***@lists.example/p.txt?apikey=***" in scrubbed


@pytest.mark.parametrize("text", ["http://2001:db8::1:80", "2001:db8::1:80", "socks5://u:p@::1:1080"])
def test_unbracketed_ipv6_is_refused(text):
    """'2001:db8::1:80' is ambiguous (port 80, or the last group?); the contract wants brackets."""
    with pytest.raises(ValueError):
        UpstreamURL.parse(text, default_protocol="http")


@pytest.mark.parametrize("text", ["1.2.3.4:８０８０", "1.2.3.4:٨٠"])
def test_port_must_be_ascii_digits(text):
    """A port written in full-width or Arabic-Indic digits is not a port."""
    with pytest.raises(ValueError):
        UpstreamURL.parse(text, default_protocol="http")


@pytest.mark.parametrize("text", ["http://user@h.example:1", "http://:secret@h.example:1"])
def test_partial_credentials_roundtrip(text):
    """What parse read, url writes back unchanged (no password invented, none silently dropped)."""
    up = UpstreamURL.parse(text)
    assert UpstreamURL.parse(up.url) == up


# -- DiscoveredProxy -------------------------------------------------------------------------------


def test_discovered_proxy_to_upstream():
    """A parser's find becomes an UpstreamURL: its protocol, else the source default; credentials kept."""
    assert DiscoveredProxy("1.2.3.4", 80).to_upstream("socks5") == UpstreamURL(
        ProxyProtocol.SOCKS5, "1.2.3.4", 80
    )
    assert DiscoveredProxy("1.2.3.4", 80, "http").to_upstream("socks5").protocol is ProxyProtocol.HTTP
    assert DiscoveredProxy("2001:DB8::1", 1, username="u", password="p").to_upstream("http") == UpstreamURL(
        ProxyProtocol.HTTP, "2001:db8::1", 1, "u", "p"
    )


@pytest.mark.parametrize(
    ("ip", "port"), [("1.2.3.4", 0), ("1.2.3.4", 70000), ("not a host", 80), ("1.2.3", 80)]
)
def test_discovered_proxy_invalid_is_value_error(ip, port):
    """An invalid find raises ValueError so a parser can skip and count it."""
    with pytest.raises(ValueError):
        DiscoveredProxy(ip, port).to_upstream("http")


def test_discovered_proxy_keyword_construction():
    """The plugin contract: keywords ip, port, protocol (None = default), username, password."""
    d = DiscoveredProxy(ip="1.2.3.4", port=8080, protocol=None, username=None, password=None)
    assert d.protocol is None and d.to_upstream("https").protocol is ProxyProtocol.HTTPS


# -- Proxy, ProxySource, ProxyCheck, Event ---------------------------------------------------------


def test_proxy_public_dict_has_no_credentials():
    """The API shape of a proxy: every contract key, the url masked, no password anywhere."""
    at = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    p = Proxy(
        7,
        UpstreamURL.parse("socks5://bob:pa55word@10.1.2.3:1080"),
        status=ProxyStatus.ACTIVE,
        source_id=3,
        latency_ms=12.345,
        success_ratio=0.66666,
        last_checked=at,
        exit_ip="10.9.9.9",
        anonymity=AnonymityLevel.ELITE,
        country="DE",
    )
    d = p.public_dict()
    assert set(d) == {
        "id",
        "url",
        "protocol",
        "host",
        "port",
        "status",
        "anonymity",
        "country",
        "exit_ip",
        "latency_ms",
        "success_ratio",
        "last_checked",
        "source_id",
        "tunnels",
    }
    assert d["url"] == "socks5://bob:***@10.1.2.3:1080"
    assert "pa55word" not in repr(d)
    assert d["status"] == "active" and d["anonymity"] == "elite" and d["protocol"] == "socks5"
    assert d["latency_ms"] == 12.3 and d["success_ratio"] == 0.667
    assert d["last_checked"] == at.isoformat()


def test_new_proxy_public_dict_nulls():
    """A fresh proxy: status new, figures null."""
    d = Proxy(1, UpstreamURL.parse("http://1.2.3.4:80")).public_dict()
    assert d["status"] == "new"
    assert d["anonymity"] is d["country"] is d["latency_ms"] is d["last_checked"] is None


def test_proxy_identity_is_its_id():
    """Proxies hash by id (they are mutated in place) and compare by identity."""
    up = UpstreamURL.parse("http://1.2.3.4:80")
    a, b = Proxy(1, up), Proxy(1, up)
    assert hash(a) == hash(b) == 1
    assert a != b  # identity, not field equality
    assert a.protocol is ProxyProtocol.HTTP and a.host == "1.2.3.4" and a.port == 80


def test_source_public_dict():
    """A source's API shape carries its last result."""
    s = ProxySource(2, "https://example.test/list.txt", parser="plaintext", last_found=10, last_new=3)
    d = s.public_dict()
    assert d["id"] == 2 and d["parser"] == "plaintext" and d["default_protocol"] == "http"
    assert d["last_found"] == 10 and d["last_new"] == 3 and d["last_run_at"] is None


def test_check_public_dict():
    """A check-log row's API shape."""
    at = datetime(2024, 5, 1, tzinfo=UTC)
    d = ProxyCheck(1, "tcp_connect", 1, True, "ok", 3.14159, at).public_dict()
    assert d == {
        "checker": "tcp_connect",
        "stage": 1,
        "passed": True,
        "detail": "ok",
        "latency_ms": 3.1,
        "at": at.isoformat(),
    }


def test_event_wire_shape():
    """An event goes to notifiers as {"type", "payload", "at"} with an aware ISO timestamp."""
    e = Event("proxy.pool_low", {"active_count": 1, "threshold": 5})
    d = e.to_dict()
    assert set(d) == {"type", "payload", "at"}
    assert d["payload"] == {"active_count": 1, "threshold": 5}
    assert datetime.fromisoformat(d["at"]).tzinfo is not None


def test_enums_are_their_wire_strings():
    """Enum members compare equal to the strings used in URLs, the API and the database."""
    assert [p.value for p in ProxyProtocol] == ["http", "https", "socks4", "socks5"]
    assert ProxyProtocol.SOCKS4.is_socks and not ProxyProtocol.HTTPS.is_socks
    assert {s.value for s in ProxyStatus} == {"new", "active", "dead"}
    assert {a.value for a in AnonymityLevel} == {"transparent", "anonymous", "elite"}
    assert str(ProxyProtocol.HTTP) == "http"


@given(ipv6, ports)
def test_ipv6_hosts_are_bracketed_and_normalised(host, port):
    """Property: any IPv6 address is written in brackets and read back as the same address."""
    up = UpstreamURL.parse(f"http://[{host}]:{port}")
    assert ipaddress.ip_address(up.host) == ipaddress.ip_address(host)
    assert up.url == f"http://[{up.host}]:{port}"
