"""The built-in checkers as plugins: factories, protocol shape, stages, opt-outs, discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import Settings
from plugins import Proxy, ProxyChecker, UpstreamURL
from plugins.builtin.checkers import geoip_lookup, http_anonymity, site_reach, socks_handshake, tcp_connect
from plugins.builtin.checkers.socks_handshake import target_from_url
from plugins.discovery import BUILTIN_DIR, discover_plugins
from plugins.registry import PluginRegistry
from tests.support.geoip import build_country_db


def _all(settings: Settings) -> list[object]:
    made = [
        m.create_plugin(settings)
        for m in (tcp_connect, socks_handshake, http_anonymity, geoip_lookup, site_reach)
    ]
    return [p for p in made if p is not None]


def test_every_checker_is_a_valid_plugin(tmp_path):
    """Each factory's product satisfies ProxyChecker and registers; order is by (stage, priority)."""
    db = build_country_db(tmp_path / "c.mmdb", {"127.0.0.3": "DE"})
    settings = Settings(
        checker={"geoip_db": str(db), "site_reach_targets": ["http://127.0.0.1/"], "timeout": 3}
    )
    registry = PluginRegistry()
    for plugin in _all(settings):
        assert isinstance(plugin, ProxyChecker)
        assert plugin.timeout == 3
        registry.register(plugin)
    assert [(c.name, c.stage, c.priority) for c in registry.checkers] == [
        ("tcp_connect", 1, 0),
        ("socks_handshake", 1, 10),
        ("http_anonymity", 2, 0),
        ("geoip_lookup", 3, 0),
        ("site_reach", 3, 10),
    ]


def test_optional_checkers_opt_out_by_default():
    """With default settings geoip_lookup and site_reach return None."""
    assert geoip_lookup.create_plugin(Settings()) is None
    assert site_reach.create_plugin(Settings()) is None
    assert {type(p).__name__ for p in _all(Settings())} == {
        "TcpConnectChecker",
        "SocksHandshakeChecker",
        "HttpAnonymityChecker",
    }


def test_site_reach_minimum_is_capped_by_the_target_count():
    """Asking for more answers than there are targets means 'all of them'."""
    checker = site_reach.create_plugin(
        Settings(
            checker={"site_reach_targets": ["http://127.0.0.1/a", "http://127.0.0.1/b"], "site_reach_min": 5}
        )
    )
    assert checker is not None and checker.minimum == 2


@pytest.mark.parametrize(
    ("url", "skip"),
    [
        ("socks4://127.0.0.1:1080", False),
        ("socks5://u:p@127.0.0.1:1080", False),
        ("http://127.0.0.1:3128", True),
        ("https://127.0.0.1:3128", True),
    ],
)
def test_socks_handshake_applies_to_socks_only(url, skip):
    """should_skip is True exactly for HTTP(S) proxies."""
    checker = socks_handshake.create_plugin(Settings())
    assert checker.should_skip(Proxy(1, UpstreamURL.parse(url))) is skip


def test_handshake_target_from_judge_url():
    """The default SOCKS target is the first judge's host and port (80/443 by scheme)."""
    assert target_from_url("http://httpbin.org/get?show_env=1") == ("httpbin.org", 80)
    assert target_from_url("https://judge.example:8443/x") == ("judge.example", 8443)
    with pytest.raises(ValueError):
        target_from_url("http:///nohost")


async def test_discovery_registers_the_builtin_checkers_and_skips_helpers():
    """Discovering plugins/builtin registers our three always-on checkers; _through/_judge are no plugins."""
    registry = PluginRegistry()
    await discover_plugins(BUILTIN_DIR, registry, Settings())
    names = {c.name for c in registry.checkers}
    assert {"tcp_connect", "socks_handshake", "http_anonymity"} <= names
    assert not any("checkers" in e.module for e in registry.errors), registry.errors
    assert (BUILTIN_DIR / "checkers" / "_through.py").is_file() and (
        BUILTIN_DIR / "checkers" / "_judge.py"
    ).is_file()


def test_checker_modules_import_only_the_public_surface():
    """Built-in checkers import from plugins and config, never pool/gateway internals."""
    for path in (BUILTIN_DIR / "checkers").glob("*.py"):
        text = Path(path).read_text()
        for forbidden in (
            "from pool",
            "import pool",
            "from gateway",
            "import gateway",
            "plugins.registry",
            "plugins.protocols",
        ):
            assert forbidden not in text, f"{path.name} uses {forbidden}"
