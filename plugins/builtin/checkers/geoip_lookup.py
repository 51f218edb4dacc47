"""Country of the proxy's exit address from a MaxMind-format database (GeoLite2 Country or City).

Runs in stage 3 by default so ``context.exit_ip`` from ``http_anonymity`` (stage 2) is known; with
no exit address it looks up the proxy's own host.  A lookup never fails a proxy: an address the
database does not know passes with "country unknown".  Without ``checker.geoip_db`` the plugin opts
out with one log line (free GeoLite2 databases: https://dev.maxmind.com/geoip/geolite2-free-geolocation-data).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

import geoip2.database
import geoip2.errors
from maxminddb.errors import InvalidDatabaseError

from config import Settings
from plugins import CheckContext, CheckResult, Proxy

__all__ = ["GeoipLookupChecker", "create_plugin", "lookup_country", "open_reader"]

log = logging.getLogger("proxy_pool.checkers.geoip_lookup")


def lookup_country(reader: geoip2.database.Reader, ip: str) -> str | None:
    """ISO country code of ``ip``, or None when the database has no answer (never raises for bad input)."""
    db_type = reader.metadata().database_type
    try:
        if "Enterprise" in db_type:
            record = reader.enterprise(ip).country
        elif "City" in db_type:
            record = reader.city(ip).country
        else:
            record = reader.country(ip).country
    except (geoip2.errors.AddressNotFoundError, ValueError, TypeError):
        return None
    return record.iso_code


def open_reader(path: str) -> geoip2.database.Reader:
    """Open and sanity-check a database; raises ValueError saying what is wrong."""
    try:
        reader = geoip2.database.Reader(path)
    except (OSError, InvalidDatabaseError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    db_type = reader.metadata().database_type
    if not any(kind in db_type for kind in ("Country", "City", "Enterprise")):
        reader.close()
        raise ValueError(f"{path} is a {db_type!r} database, not a Country or City one")
    return reader


class GeoipLookupChecker:
    name = "geoip_lookup"
    stage = 3  # after http_anonymity has found the exit address
    priority = 0
    resolve_timeout = 2.0

    def __init__(self, reader: geoip2.database.Reader, timeout: float) -> None:
        self.timeout = timeout
        self._reader = reader

    def should_skip(self, proxy: Proxy) -> bool:
        return False

    async def _address(self, host: str) -> str | None:
        try:
            ipaddress.ip_address(host)
            return host
        except ValueError:
            pass
        try:
            infos = await asyncio.wait_for(
                asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM),
                min(self.resolve_timeout, self.timeout),
            )
        except (OSError, TimeoutError):
            return None
        return str(infos[0][4][0]) if infos else None

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        source = "exit" if context.exit_ip else "proxy"
        ip = context.exit_ip or await self._address(proxy.host)
        if ip is None:
            return CheckResult(True, f"country unknown ({proxy.host} does not resolve)")
        country = lookup_country(self._reader, ip)
        if country is None:
            return CheckResult(True, f"country unknown for {source} address {ip}", metadata={"ip": ip})
        context.country = country
        return CheckResult(
            True, f"{country} ({source} address {ip})", metadata={"country": country, "ip": ip}
        )

    def close(self) -> None:
        self._reader.close()


def create_plugin(settings: Settings) -> GeoipLookupChecker | None:
    path = settings.checker.geoip_db
    if not path:
        log.info("geoip_lookup off: checker.geoip_db is not set (GeoLite2 Country: see docs/operate/checking.md#geoip)")
        return None
    try:
        reader = open_reader(path)
    except ValueError as exc:
        log.warning("geoip_lookup off: checker.geoip_db: %s", exc)
        return None
    return GeoipLookupChecker(reader, settings.checker.timeout)
