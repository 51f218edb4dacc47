"""Build small MaxMind-format databases with mmdb-writer, shaped like GeoLite2 Country / City.

``build_country_db(path, {"127.0.0.3": "DE"})`` writes a file that ``geoip2.database.Reader``
opens and answers ``.country("127.0.0.3").country.iso_code == "DE"`` for.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# A few real GeoNames ids and names so records look like GeoLite2's.
_COUNTRIES: dict[str, tuple[int, str, str, int, str]] = {
    # iso: (geoname_id, english name, continent code, continent geoname_id, continent name)
    "DE": (2921044, "Germany", "EU", 6255148, "Europe"),
    "US": (6252001, "United States", "NA", 6255149, "North America"),
    "JP": (1861060, "Japan", "AS", 6255147, "Asia"),
    "FR": (3017382, "France", "EU", 6255148, "Europe"),
    "BR": (3469034, "Brazil", "SA", 6255150, "South America"),
}


def _record(iso: str, with_city: bool) -> dict[str, object]:
    geoname_id, name, cont_code, cont_id, cont_name = _COUNTRIES.get(iso, (1, iso, "EU", 6255148, "Europe"))
    country = {"geoname_id": geoname_id, "iso_code": iso, "names": {"en": name}}
    record: dict[str, object] = {
        "continent": {"code": cont_code, "geoname_id": cont_id, "names": {"en": cont_name}},
        "country": country,
        "registered_country": dict(country),
    }
    if with_city:
        record["city"] = {"geoname_id": geoname_id + 1, "names": {"en": f"Somewhere in {name}"}}
        record["location"] = {"latitude": 50.0, "longitude": 8.0, "time_zone": "Europe/Berlin"}
    return record


def _build(path: Path, networks: Mapping[str, str], database_type: str, with_city: bool) -> Path:
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": f"test {database_type}"},
    )
    for network, iso in networks.items():
        writer.insert_network(IPSet([network]), _record(iso, with_city))
    writer.to_db_file(str(path))
    return path


def build_country_db(path: Path, networks: Mapping[str, str]) -> Path:
    """A GeoLite2-Country-shaped database mapping each address or CIDR to an ISO code."""
    return _build(path, networks, "GeoLite2-Country", with_city=False)


def build_city_db(path: Path, networks: Mapping[str, str]) -> Path:
    """A GeoLite2-City-shaped database (``Reader.country()`` refuses it; ``.city()`` works)."""
    return _build(path, networks, "GeoLite2-City", with_city=True)


LOOPBACK_COUNTRIES = {"127.0.0.2": "US", "127.0.0.3": "DE", "127.0.0.4": "JP", "127.0.0.5": "FR"}
