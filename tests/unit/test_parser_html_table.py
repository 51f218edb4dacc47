"""The html_table parser: real site layouts, header spellings, hostile pages, URL claims."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import Settings
from plugins import DiscoveredProxy, PluginRegistry, ProxyProtocol, ProxySource
from plugins.builtin.parsers import html_table, json_api, plaintext
from plugins.builtin.parsers.html_table import HtmlTableParser, nesting_depth, parse_body, parse_html

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sources"
DP = DiscoveredProxy


def _source(url: str = "https://example.test/") -> ProxySource:
    return ProxySource(id=3, url=url, default_protocol=ProxyProtocol.HTTP)


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _table(header: str, *rows: str) -> str:
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f"<html><body><table>{header}{body}</table></body></html>"


# -- fixtures shaped like real sites -----------------------------------------------------------------


async def test_free_proxy_list_net_page():
    """free-proxy-list.net: thead + tfoot, an Https yes/no column, a textarea and a footer table ignored."""
    outcome = parse_body(_fixture("free_proxy_list_net.html"))
    assert outcome.proxies == [
        DP("192.0.2.10", 80),
        DP("198.51.100.11", 3128, "http"),
        DP("203.0.113.12", 8080),
        DP("192.0.2.14", 8118, "http"),
        DP("198.51.100.16", 53281),
    ]
    assert outcome.skipped == 2  # port 999999 and the 256.0.2.15 address
    assert await HtmlTableParser().parse(_fixture("free_proxy_list_net.html"), _source()) == outcome.proxies


def test_hidemy_style_page_with_decoys_scripts_and_several_tables():
    """hidemy-style: menu/stats tables ignored, hidden decoys and scripts dropped, multi-type cells split."""
    outcome = parse_body(_fixture("hidemy_like.html"))
    assert outcome.proxies == [
        DP("203.0.113.20", 3128, "http"),
        DP("198.51.100.21", 8080, "http"),  # "HTTP, HTTPS": one HTTP proxy that can CONNECT
        DP("192.0.2.22", 1080, "socks4"),
        DP("192.0.2.22", 1080, "socks5"),
        DP("192.0.2.23", 4145, "socks4"),
        DP("2001:db8::24", 8000, "http"),
        DP("198.51.100.25", 1080, "socks5"),
    ]
    assert outcome.skipped == 1  # the colspan advert row


def test_spys_one_style_page_with_ip_port_in_one_cell_and_nested_tables():
    """A spys.one-style layout: header below a caption row, ip:port in one cell, nested layout tables."""
    outcome = parse_body(_fixture("spys_one_like.html"))
    assert outcome.proxies == [
        DP("203.0.113.30", 8080, "http"),
        DP("198.51.100.31", 1080, "socks5"),
        DP("192.0.2.32", 3128, "http"),
        DP("198.51.100.34", 4145, "socks4"),
    ]
    assert outcome.skipped == 2  # port 65536 and the footnote row


# -- header and cell variants ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "<thead><tr><th>IP</th><th>Port</th></tr></thead>",
        "<tr><th>IP Address</th><th>PORT</th></tr>",
        "<tr><td>Host</td><td>Port</td></tr>",
        "<tr><td><b>Proxy IP</b></td><td>Proxy Port</td></tr>",
        "<tr><th>Address:</th><th>Port:</th></tr>",
        "<tr><th> ip&nbsp;address </th><th>Port</th></tr>",
    ],
)
def test_header_spellings_in_thead_or_first_row(header):
    """Common address/port header spellings, in <thead> or a first row of <th> or <td>, are recognised."""
    page = _table(header, "<td>1.2.3.4</td><td>8080</td>", "<td>5.6.7.8</td><td>3128</td>")
    assert parse_html(page) == ([DP("1.2.3.4", 8080), DP("5.6.7.8", 3128)], 0)


@pytest.mark.parametrize(
    ("header", "row", "expected"),
    [
        ("<th>Proxy</th><th>Country</th>", "<td>1.2.3.4:8080</td><td>US</td>", [DP("1.2.3.4", 8080)]),
        (
            "<th>IP:Port</th><th>Type</th>",
            "<td>1.2.3.4:1080</td><td>Socks5</td>",
            [DP("1.2.3.4", 1080, "socks5")],
        ),
        ("<th>Proxy</th>", "<td>socks4://1.2.3.4:4145</td>", [DP("1.2.3.4", 4145, "socks4")]),
        (
            "<th>IP</th><th>Port</th><th>Type</th>",
            "<td>1.2.3.4</td><td>1080</td><td>SOCKS4/5</td>",
            [DP("1.2.3.4", 1080, "socks4"), DP("1.2.3.4", 1080, "socks5")],
        ),
        (
            "<th>IP</th><th>Port</th><th>Type</th>",
            "<td>1.2.3.4</td><td>80</td><td>elite proxy</td>",
            [DP("1.2.3.4", 80)],
        ),
        (
            "<th>IP</th><th>Port</th><th>Protocol</th><th>Https</th>",
            "<td>1.2.3.4</td><td>80</td><td>HTTP</td><td>yes</td>",
            [DP("1.2.3.4", 80, "http")],
        ),
        (
            "<th>IP</th><th>Port</th><th>SSL</th>",
            "<td>1.2.3.4</td><td>443</td><td>+</td>",
            [DP("1.2.3.4", 443, "http")],
        ),
        ("<th>IP</th><th>Port</th>", "<td>2001:DB8::5</td><td>3128</td>", [DP("2001:db8::5", 3128)]),
        ("<th>IP</th><th>Port</th>", "<td>[2001:db8::6]:3128</td><td></td>", [DP("2001:db8::6", 3128)]),
        (
            "<th>IP</th><th>Port</th>",
            "<td>1.2.3.4</td><td>8080 <small>(fast)</small></td>",
            [DP("1.2.3.4", 8080)],
        ),
        (
            "<th>IP</th><th>Port</th>",
            "<td>proxy.Example.com</td><td>3128</td>",
            [DP("proxy.example.com", 3128)],
        ),
    ],
)
def test_cell_variants(header, row, expected):
    """ip:port in one cell, URLs, protocol lists, Https/SSL flags, IPv6, colspan and port-cell noise."""
    assert parse_html(_table(f"<tr>{header}</tr>", row)).proxies == expected


def test_colspan_in_header_keeps_columns_aligned():
    """An address header spanning a row-number and an IP column: the IP is found, the port stays aligned."""
    page = _table(
        "<tr><th colspan=2>Proxy IP</th><th>Port</th><th>Type</th></tr>",
        "<td>1</td><td>1.2.3.4</td><td>80</td><td>socks5</td>",
        "<td colspan=2>5.6.7.8</td><td>3128</td><td>http</td>",
    )
    assert parse_html(page).proxies == [DP("1.2.3.4", 80, "socks5"), DP("5.6.7.8", 3128, "http")]


def test_nested_table_rows_belong_to_their_own_table():
    """Rows of a table nested in a cell are not read as rows of the outer proxy table."""
    inner = "<table><tr><td>9.9.9.9</td><td>99</td></tr></table>"
    page = _table(
        "<tr><th>IP</th><th>Port</th><th>Speed</th></tr>", f"<td>1.2.3.4</td><td>80</td><td>{inner}</td>"
    )
    assert parse_html(page).proxies == [DP("1.2.3.4", 80)]


def test_several_proxy_tables_on_one_page_are_all_read():
    """Two proxy tables (say HTTP and SOCKS sections) both contribute, in page order."""
    first = _table("<tr><th>IP</th><th>Port</th></tr>", "<td>1.2.3.4</td><td>80</td>")
    second = _table(
        "<tr><th>Host</th><th>Port</th><th>Type</th></tr>", "<td>5.6.7.8</td><td>1080</td><td>socks5</td>"
    )
    assert parse_html(first + second).proxies == [DP("1.2.3.4", 80), DP("5.6.7.8", 1080, "socks5")]


def test_header_only_table_is_a_valid_empty_list():
    """A proxy table with a header and no rows today is an empty result, not an error."""
    assert parse_body(_table("<tr><th>IP</th><th>Port</th></tr>").encode()) == ([], 0)


# -- hostile and wrong bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"data": [{"ip": "1.2.3.4", "port": 80}]}', "JSON, not HTML"),
        (b"1.2.3.4:8080\n5.6.7.8:3128\n", "not HTML"),
        (bytes(range(256)) * 16, "binary"),
        (b"", "empty"),
        (b"<html><body><p>Access denied</p></body></html>", "no <table>"),
        (
            _table("<tr><th>Country</th><th>Proxies</th></tr>", "<td>US</td><td>12</td>").encode(),
            "address column",
        ),
        (
            _table("<tr><th>IP</th><th>Port</th></tr>", "<td>999.1.1.1</td><td>80</td>").encode(),
            "valid proxy",
        ),
    ],
)
async def test_wrong_or_hostile_bodies_raise_one_clear_line(body, words):
    """JSON, a text list, binary junk, an empty body, a table-less or proxy-less page: one-line ValueError."""
    with pytest.raises(ValueError, match=words) as info:
        await HtmlTableParser().parse(body, _source())
    assert str(info.value).startswith("html_table: ") and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        "<div>" * 200_000,
        "<span>" * 20_000 + "<div>x</div>" * 20_000,
        "<div></span>" * 100_000,
        "<table><tr><td>" + "<ul>" * 50_000,
    ],
    ids=["unclosed-divs", "deep-inline-then-blocks", "stray-end-tags", "deep-in-a-cell"],
)
async def test_pages_nested_to_be_slow_are_refused_before_parsing(body):
    """Deep nesting that makes any HTML5 tree builder quadratic (minutes of CPU) is refused up front."""
    with pytest.raises(ValueError, match="nested more than 512 deep"):
        await HtmlTableParser().parse(body.encode(), _source())


@pytest.mark.parametrize(
    ("page", "depth"),
    [
        ("<html><body><div><p>a<p>b<ul><li>x<li>y</ul></div></body></html>", 4),
        ("<table>" + "<tr><td><span>1.2.3.4<td>80" * 5000 + "</table>", 3),
        ("<table><tr><td><table><tr><td>inner</table></td></tr></table>", 4),
        ("<div>" + "</span></b></div>" * 1000 + "<div><div>", 2),
        ("<br><img src=x><hr><input>" * 1000, 0),
        ("<DIV><Div>x</div></DIV>", 2),
        ("<span>" * 600, 513),
    ],
    ids=[
        "paragraphs-and-lists",
        "unclosed-cells",
        "nested-tables",
        "stray-ends",
        "void",
        "case",
        "stops-past-limit",
    ],
)
def test_nesting_depth_models_implied_and_stray_end_tags(page, depth):
    """Unclosed cells, paragraphs and list items, stray end tags and void elements keep real pages shallow."""
    assert nesting_depth(page) == depth


@settings(max_examples=200)
@given(st.binary(max_size=4096))
def test_any_bytes_give_proxies_or_an_html_table_value_error(raw):
    """Arbitrary bytes either parse or raise a ValueError naming the parser, nothing else."""
    try:
        parse_body(raw)
    except ValueError as exc:
        assert str(exc).startswith("html_table: ")


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from(list("<>/=\"' tablerhdIPo:.0123456789")), max_size=400))
def test_tag_soup_never_raises_from_the_pure_function(text):
    """Broken markup made of table-ish fragments (too short to nest deep) never makes parse_html raise."""
    parse_html(text)


async def test_large_page_parsed_in_a_thread_gives_the_same_result():
    """A 7,000-row page parsed through the plugin (off the loop) gives what the pure function gives."""
    rows = [f"<td>10.1.{i // 250}.{i % 250 + 1}</td><td>{2000 + i}</td>" for i in range(7000)]
    body = _table("<thead><tr><th>IP</th><th>Port</th></tr></thead>", *rows).encode()
    proxies = await HtmlTableParser().parse(body, _source())
    assert proxies == parse_body(body).proxies and len(proxies) == 7000


# -- the plugin surface ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://free-proxy-list.net/", True),
        ("https://www.sslproxies.org", True),
        ("https://example.test/en/proxy-list/?type=hs", True),
        ("https://example.test/list.HTML", True),
        ("https://example.test/proxy.htm?page=2", True),
        ("https://example.test/proxylist.php", True),
        ("https://example.test/list.txt", False),
        ("https://example.test/proxies.json", False),
        ("https://example.test/rapid-proxies/", True),
        ("https://proxylist.geonode.com/api/proxy-list?limit=500", False),
        ("https://api.example.test/v2/?request=getproxies", False),
        ("https://example.test/en/proxy-list/?format=json", False),
    ],
)
def test_supports_pages_and_extensionless_urls_but_not_apis(url, expected):
    """`.html`-like pages and extension-less URLs are claimed; lists, JSON files and API paths are not."""
    assert HtmlTableParser().supports(url) is expected


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://free-proxy-list.net/", "html_table"),
        ("https://proxylist.geonode.com/api/proxy-list?limit=500&page=1", "json_api"),
        ("https://example.test/feeds/proxies.json", "json_api"),
        ("https://api.example.test/v2/?request=getproxies", "json_api"),
        ("https://example.test/api/v1/proxies.txt", "plaintext"),
        ("https://raw.githubusercontent.com/o/r/main/socks5.txt", "plaintext"),
        ("https://example.test/download.zip", None),
    ],
)
def test_registry_picks_the_right_builtin_parser_for_a_url(url, name):
    """With the three built-ins registered in discovery order, each URL goes to the parser meant for it."""
    registry = PluginRegistry()
    for module in (html_table, json_api, plaintext):  # discovery's order: file names, sorted
        registry.register(module.create_plugin(Settings()), module.__name__)
    found = registry.get_parser_for_url(url)
    assert (found.name if found else None) == name
    assert registry.get_parser("html_table").default_schedule() == "*/30 * * * *"
