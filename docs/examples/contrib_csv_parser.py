"""A contrib parser for CSV exports: ``ip,port,protocol,country``.

Copy this file into the contrib directory (``[plugins] contrib_dir``, default ``plugins/contrib/``;
``/app/plugins-contrib`` in the Docker image) and restart: ``proxy-pool plugins`` lists a parser
named ``csv``.  It reads exports like::

    ip,port,protocol,country
    203.0.113.7,8080,http,DE
    198.51.100.23,1080,socks5,US
    "2001:db8::7",3128,,NL

- The header row is optional and may put the columns in any order (``ip``/``host``/``address``,
  ``port``, ``protocol``/``type``); without one, columns are read as ip,port,protocol,country.
- An empty or unknown protocol leaves the source's ``default_protocol`` (``DiscoveredProxy`` with
  ``protocol=None``).
- A row that is not a proxy is skipped and counted, never fatal.  A body with rows but not a single
  proxy (an HTML error page, binary junk) raises ``ValueError``: the scraper turns that into a
  ``source.failed`` event and stores nothing.
- The country column is not used: the pool learns each proxy's country from its exit address
  (the ``geoip_lookup`` checker), which is what the gateway routes by.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from urllib.parse import urlsplit

from config import Settings
from plugins import DiscoveredProxy, ProxyProtocol, ProxySource, UpstreamURL

__all__ = ["CsvExportParser", "create_plugin", "parse_csv"]

log = logging.getLogger("proxy_pool.plugins.csv_export")

NAME = "csv"
DEFAULT_COLUMNS = ("ip", "port", "protocol", "country")
_HEADER_NAMES = {
    "ip": "ip", "host": "ip", "address": "ip", "ip address": "ip",
    "port": "port",
    "protocol": "protocol", "type": "protocol", "scheme": "protocol",
}  # fmt: skip
_PROTOCOLS = {p.value: p for p in ProxyProtocol} | {
    "socks5h": ProxyProtocol.SOCKS5,
    "socks4a": ProxyProtocol.SOCKS4,
}
_THREAD_THRESHOLD = 256 * 1024  # parse big exports off the event loop


def _columns(header: list[str]) -> dict[str, int] | None:
    """Where ip, port and protocol are, if ``header`` is a header row naming at least ip and port."""
    found: dict[str, int] = {}
    for index, cell in enumerate(header):
        key = _HEADER_NAMES.get(cell.strip().lower())
        if key is not None and key not in found:
            found[key] = index
    return found if {"ip", "port"} <= found.keys() else None


def _proxy(row: list[str], columns: dict[str, int]) -> DiscoveredProxy | None:
    """The proxy one row names, or None."""
    try:
        host = row[columns["ip"]].strip().strip("[]")
        port = row[columns["port"]].strip()
    except IndexError:
        return None
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        url = UpstreamURL.parse(netloc, default_protocol="http")  # validates address and port
    except ValueError:
        return None
    protocol = None
    if "protocol" in columns and columns["protocol"] < len(row):
        protocol = _PROTOCOLS.get(row[columns["protocol"]].strip().lower())
    return DiscoveredProxy(ip=url.host, port=url.port, protocol=protocol)


def parse_csv(raw: bytes) -> tuple[list[DiscoveredProxy], int]:
    """(proxies, skipped rows); ValueError with one line when no row at all is a proxy."""
    text = raw.decode("utf-8-sig", errors="replace")
    if "\x00" in text[:4096]:
        raise ValueError(f"{NAME}: the body is binary data, not CSV")
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise ValueError(f"{NAME}: the body is not CSV ({exc})") from None
    columns = _columns(rows[0]) if rows else None
    if columns is not None:
        rows = rows[1:]
    else:
        columns = {name: index for index, name in enumerate(DEFAULT_COLUMNS)}
    proxies: list[DiscoveredProxy] = []
    skipped = 0
    for row in rows:
        proxy = _proxy(row, columns)
        if proxy is None:
            skipped += 1
        else:
            proxies.append(proxy)
    if not proxies and skipped:
        start = text.lstrip()[:30]
        raise ValueError(f"{NAME}: none of {skipped} rows is a proxy (the body starts with {start!r})")
    return proxies, skipped


class CsvExportParser:
    """Matches the ``SourceParser`` protocol by shape; it inherits nothing."""

    name = NAME

    def supports(self, url: str) -> bool:
        """Used when a source names no parser: take ``.csv`` URLs and files."""
        return urlsplit(url).path.lower().endswith(".csv")

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        if len(raw) > _THREAD_THRESHOLD:
            proxies, skipped = await asyncio.to_thread(parse_csv, raw)
        else:
            proxies, skipped = parse_csv(raw)
        log.debug("source %s: %d proxies, %d rows skipped", source.id, len(proxies), skipped)
        return proxies

    def default_schedule(self) -> str | None:
        """Exports like this are refreshed hourly; a source's own schedule wins."""
        return "0 * * * *"


def create_plugin(settings: Settings) -> CsvExportParser:
    """Called once at start-up with the validated settings; return None to stay off."""
    return CsvExportParser()
