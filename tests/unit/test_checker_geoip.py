"""geoip_lookup against small .mmdb files built with mmdb-writer (no network)."""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import geoip2.database
import pytest

from config import Settings
from plugins import CheckContext, Proxy, UpstreamURL
from plugins.builtin.checkers import geoip_lookup
from plugins.builtin.checkers.geoip_lookup import lookup_country
from tests.support.geoip import LOOPBACK_COUNTRIES, build_city_db, build_country_db


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    return build_country_db(tmp_path / "GeoLite2-Country.mmdb", {**LOOPBACK_COUNTRIES, "127.0.0.1": "BR"})


def test_lookup_country_reads_a_country_database(country_db):
    """127.0.0.3 maps to DE; an address outside the database and a non-address give None."""
    with geoip2.database.Reader(str(country_db)) as reader:
        assert lookup_country(reader, "127.0.0.3") == "DE"
        assert lookup_country(reader, "127.0.0.2") == "US"
        assert lookup_country(reader, "127.0.0.99") is None
        assert lookup_country(reader, "not-an-ip") is None


def test_lookup_country_falls_back_to_city_records(tmp_path):
    """A GeoLite2-City database (which refuses .country()) still yields the country code."""
    db = build_city_db(tmp_path / "GeoLite2-City.mmdb", {"127.0.0.0/29": "JP"})
    with geoip2.database.Reader(str(db)) as reader:
        with pytest.raises(TypeError):
            reader.country("127.0.0.3")
        assert lookup_country(reader, "127.0.0.3") == "JP"


def test_no_database_configured_opts_out_with_one_info_line(caplog):
    """Without checker.geoip_db the plugin is off and says so once, at info level."""
    with caplog.at_level(logging.INFO, logger="proxy_pool.checkers.geoip_lookup"):
        assert geoip_lookup.create_plugin(Settings()) is None
    records = [r for r in caplog.records if r.name == "proxy_pool.checkers.geoip_lookup"]
    assert [r.levelno for r in records] == [logging.INFO]


@pytest.mark.parametrize("content", [None, b"this is not a maxmind database"])
def test_unreadable_database_opts_out_with_one_warning(tmp_path, caplog, content):
    """A missing or corrupt database file: one warning naming the path, and no plugin."""
    path = tmp_path / "broken.mmdb"
    if content is not None:
        path.write_bytes(content)
    with caplog.at_level(logging.INFO, logger="proxy_pool.checkers.geoip_lookup"):
        assert geoip_lookup.create_plugin(Settings(checker={"geoip_db": str(path)})) is None
    records = [r for r in caplog.records if r.name == "proxy_pool.checkers.geoip_lookup"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert str(path) in records[0].getMessage()


def _proxy(host: str) -> Proxy:
    return Proxy(1, UpstreamURL.parse(f"http://{host}:3128"))


async def test_exit_address_wins_over_proxy_host(country_db):
    """With an exit address known, the country is the exit's, not the proxy host's."""
    checker = geoip_lookup.create_plugin(Settings(checker={"geoip_db": str(country_db)}))
    assert checker is not None and (checker.stage, checker.priority) == (3, 0)
    async with aiohttp.ClientSession() as session:
        context = CheckContext(http_client=session, exit_ip="127.0.0.3")
        result = await checker.check(_proxy("127.0.0.4"), context)
    assert result.passed and context.country == "DE"


async def test_proxy_host_is_used_without_exit_address(country_db):
    """No exit address yet: the proxy's own address is looked up (a hostname is resolved first)."""
    checker = geoip_lookup.create_plugin(Settings(checker={"geoip_db": str(country_db)}))
    assert checker is not None
    async with aiohttp.ClientSession() as session:
        by_ip = CheckContext(http_client=session)
        await checker.check(_proxy("127.0.0.4"), by_ip)
        by_name = CheckContext(http_client=session)
        await checker.check(_proxy("localhost"), by_name)
    assert by_ip.country == "JP"
    assert by_name.country in ("BR", None)  # localhost may resolve to ::1 first, unknown to this database


async def test_unknown_address_passes_as_country_unknown(country_db):
    """An address the database does not know never fails the proxy."""
    checker = geoip_lookup.create_plugin(Settings(checker={"geoip_db": str(country_db)}))
    assert checker is not None
    async with aiohttp.ClientSession() as session:
        context = CheckContext(http_client=session, exit_ip="127.0.0.200")
        result = await checker.check(_proxy("127.0.0.4"), context)
    assert result.passed and not result.skipped
    assert "country unknown" in result.detail
    assert context.country is None
