"""The json_api parser: real API answers, key spellings, hostile bodies, URL claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import Settings
from plugins import DiscoveredProxy, PluginRegistry, ProxyProtocol, ProxySource
from plugins.builtin.parsers.json_api import JsonApiParser, create_plugin, extract, parse_body

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sources"
DP = DiscoveredProxy


def _source(url: str = "https://example.test/api/proxies") -> ProxySource:
    return ProxySource(id=5, url=url, default_protocol=ProxyProtocol.SOCKS5)


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _body(doc: object) -> bytes:
    return json.dumps(doc).encode()


# -- fixtures shaped like real APIs ------------------------------------------------------------------


async def test_geonode_api_answer():
    """geonode: {"data": [...]} with string ports and a protocols list giving one entry per protocol."""
    outcome = parse_body(_fixture("geonode_api.json"))
    assert outcome.proxies == [
        DP("203.0.113.40", 8080, "http"),
        DP("198.51.100.41", 4145, "socks4"),
        DP("192.0.2.42", 1080, "socks4"),
        DP("192.0.2.42", 1080, "socks5"),
        DP("203.0.113.44", 8443, "http"),  # ["http", "https"]: one HTTP proxy that can CONNECT
    ]
    assert outcome.skipped == 1  # 192.0.2.300
    assert await JsonApiParser().parse(_fixture("geonode_api.json"), _source()) == outcome.proxies


def test_proxyscrape_v3_answer():
    """proxyscrape v3: {"proxies": [...]}, int ports, a protocol string and a proxy URL; port 0 skipped."""
    outcome = parse_body(_fixture("proxyscrape_v3.json"))
    assert outcome.proxies == [
        DP("203.0.113.60", 8080, "http"),
        DP("198.51.100.61", 1080, "socks5"),
        DP("192.0.2.62", 3128, "http"),
    ]
    assert outcome.skipped == 1


def test_pubproxy_answer():
    """pubproxy: ipPort, ip and port all present, protocol under `type`."""
    assert parse_body(_fixture("pubproxy_api.json")) == (
        [DP("203.0.113.70", 8080, "http"), DP("198.51.100.71", 1080, "socks5")],
        0,
    )


def test_json_lines_dump():
    """A fate0/proxylist-style JSON-lines dump (one object a line, blank lines between) is read."""
    assert parse_body(_fixture("fate0_proxylist.jsonl")) == (
        [DP("203.0.113.80", 8080, "http"), DP("198.51.100.81", 3128, "http"), DP("192.0.2.82", 80, "http")],
        0,
    )


def test_nested_list_of_strings_with_urls_credentials_and_ipv6():
    """{"data": {"proxies": [...]}} of "ip:port" and URL strings; bad strings are counted."""
    outcome = parse_body(_fixture("nested_strings.json"))
    assert outcome.proxies == [
        DP("203.0.113.90", 3128),
        DP("198.51.100.91", 1080, "socks5", "scraper", "t0p/secret"),
        DP("2001:db8::92", 8080),
        DP("192.0.2.93", 4145, "socks4"),
    ]
    assert outcome.skipped == 2


# -- shapes and key spellings ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["data", "proxies", "results", "list", "items", "Data", "PROXIES"])
def test_list_under_each_common_key(key):
    """The list is found under each common key, whatever its case."""
    assert extract({"total": 1, key: [{"ip": "1.2.3.4", "port": 80}]}).proxies == [DP("1.2.3.4", 80)]


@pytest.mark.parametrize(
    "doc",
    [
        {"data": {"proxies": [{"ip": "1.2.3.4", "port": 80}]}},
        {"result": {"items": [{"ip": "1.2.3.4", "port": 80}]}},
        {"data": {"ip": "1.2.3.4", "port": 80}},
        {"ip": "1.2.3.4", "port": 80, "country": "US"},
        [["1.2.3.4", 80]],
        ["1.2.3.4:80"],
    ],
)
def test_nested_single_and_pair_shapes(doc):
    """One level of nesting, a single-proxy answer, [ip, port] pairs and "ip:port" strings all work."""
    assert extract(doc) == ([DP("1.2.3.4", 80)], 0)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"host": "1.2.3.4", "port": "8080"}, [DP("1.2.3.4", 8080)]),
        ({"address": "1.2.3.4", "port": 8080.0}, [DP("1.2.3.4", 8080)]),
        ({"addr": "1.2.3.4:8080"}, [DP("1.2.3.4", 8080)]),
        ({"proxy": "socks5://u:p@1.2.3.4:1080"}, [DP("1.2.3.4", 1080, "socks5", "u", "p")]),
        ({"IP": "1.2.3.4", "Port": 1080, "Type": "SOCKS4"}, [DP("1.2.3.4", 1080, "socks4")]),
        (
            {"ip": "1.2.3.4", "port": 80, "protocol": "HTTP, HTTPS"},
            [DP("1.2.3.4", 80, "http")],
        ),
        ({"ip": "1.2.3.4", "port": 80, "type": "elite", "protocol": "socks5"}, [DP("1.2.3.4", 80, "socks5")]),
        ({"ip": "1.2.3.4", "port": 80, "type": "transparent"}, [DP("1.2.3.4", 80)]),
        ({"ip": "1.2.3.4", "port": 80, "protocols": []}, [DP("1.2.3.4", 80)]),
        ({"ip": "1.2.3.4", "port": 443, "https": True}, [DP("1.2.3.4", 443, "http")]),
        ({"ip": "1.2.3.4", "port": 80, "https": "no"}, [DP("1.2.3.4", 80)]),
        (
            {"ip": "1.2.3.4", "port": 80, "username": "bob", "password": "pw"},
            [DP("1.2.3.4", 80, None, "bob", "pw")],
        ),
        ({"ip": "1.2.3.4", "port": 80, "user": "bob", "pass": "pw"}, [DP("1.2.3.4", 80, None, "bob", "pw")]),
        ({"ip": "2001:DB8::1", "port": 3128}, [DP("2001:db8::1", 3128)]),
        (
            {"ip": "1.2.3.4", "port": 80, "protocols": ["socks4", "socks4a", "SOCKS4"]},
            [DP("1.2.3.4", 80, "socks4")],
        ),
    ],
)
def test_entry_key_spellings(entry, expected):
    """Address, port, protocol and credential keys in their common spellings; protocol only when stated."""
    assert extract([entry]).proxies == expected


@pytest.mark.parametrize(
    "entry",
    [
        {"ip": "1.2.3.4"},
        {"ip": "1.2.3.4", "port": True},
        {"ip": "1.2.3.4", "port": 0},
        {"ip": "1.2.3.4", "port": "80a"},
        {"ip": "1.2.3.999", "port": 80},
        {"ip": 16909060, "port": 80},
        {"ip": "2001:db8::1:80"},
        {"country": "US", "port": 80},
        "1.2.3.4",
        42,
        None,
        [1, 2],
    ],
)
def test_entries_that_are_not_proxies_are_skipped_and_counted(entry):
    """Missing or broken ports, bad hosts, ambiguous IPv6 and foreign values are skipped, the rest kept."""
    assert extract([entry, {"ip": "5.6.7.8", "port": 3128}]) == ([DP("5.6.7.8", 3128)], 1)


@pytest.mark.parametrize("doc", [[], {"data": []}, {"data": {"proxies": []}}, {"proxies": [], "error": None}])
def test_an_empty_valid_list_is_an_empty_result(doc):
    """An API answering an empty list today is a valid empty result, not an error."""
    assert parse_body(_body(doc)) == ([], 0)


# -- hostile and wrong bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"<!DOCTYPE html><html><head><title>Just a moment...</title></head></html>", "not JSON .*<!DOCTYPE"),
        (b"1.2.3.4:8080\n5.6.7.8:3128\n", "not JSON"),
        (bytes(range(256)) * 8, "binary"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "binary"),
        (b"", "empty"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"data": [1, 2' + b"9" * 5000 + b"]}", "not valid JSON"),
        (b'{"error": "rate limited", "retry_after": 60}', "no proxy list .*'error'"),
        (b'"just a string"', "str"),
        (b"[1, 2, 3]", "none of 3 list entries"),
        (b'{"a": 1}\n<html>\n', "neither JSON nor JSON lines"),
    ],
)
async def test_wrong_or_hostile_bodies_raise_one_clear_line(body, words):
    """HTML, text, binary, empty, deeply nested, oversized numbers, error objects: one-line ValueError."""
    with pytest.raises(ValueError, match=words) as info:
        await JsonApiParser().parse(body, _source())
    assert str(info.value).startswith("json_api: ") and "\n" not in str(info.value)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=200)
@given(_json)
def test_any_json_document_gives_proxies_or_a_json_api_value_error(doc):
    """Arbitrary JSON documents either parse or raise a ValueError naming the parser, nothing else."""
    try:
        parse_body(_body(doc))
    except ValueError as exc:
        assert str(exc).startswith("json_api: ")


@settings(max_examples=200)
@given(st.binary(max_size=2048))
def test_any_bytes_give_proxies_or_a_json_api_value_error(raw):
    """Arbitrary bytes either parse or raise a ValueError naming the parser, nothing else."""
    try:
        parse_body(raw)
    except ValueError as exc:
        assert str(exc).startswith("json_api: ")


async def test_large_body_is_parsed_off_the_loop_with_the_same_result():
    """A body above the thread threshold gives the same proxies as the pure function."""
    body = _body(
        {"data": [{"ip": f"10.2.{i // 250}.{i % 250 + 1}", "port": 1024 + i} for i in range(10_000)]}
    )
    assert len(body) > 256 * 1024
    proxies = await JsonApiParser().parse(body, _source())
    assert proxies == parse_body(body).proxies and len(proxies) == 10_000


# -- the plugin surface ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://proxylist.geonode.com/api/proxy-list?limit=500&page=1", True),
        ("https://example.test/proxies.JSON", True),
        ("https://example.test/v2/get?format=json", True),
        ("https://example.test/API/v1/list", True),
        ("https://example.test/list.txt", False),
        ("https://free-proxy-list.net/", False),
    ],
)
def test_supports_json_files_and_api_paths(url, expected):
    """`.json` paths, paths with `api`, and `format=json` queries are claimed; others are not."""
    assert JsonApiParser().supports(url) is expected


def test_create_plugin_gives_a_valid_registered_parser():
    """The factory's product passes the registry's protocol check under the name `json_api`."""
    registry = PluginRegistry()
    registry.register(create_plugin(Settings()), "plugins.builtin.parsers.json_api")
    assert registry.get_parser("json_api").default_schedule() == "*/30 * * * *"
