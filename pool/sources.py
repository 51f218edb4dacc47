"""Adding a source, checked the same way for the CLI, the admin API and the config file."""

from __future__ import annotations

from croniter import croniter

from plugins.registry import PluginRegistry
from pool.errors import InvalidInputError
from pool.models import ProxyProtocol, ProxySource, masked_url
from pool.scraper import local_path
from pool.store import Store

__all__ = ["DEFAULT_SOURCES", "add_source", "normalise_source_url"]

# Well-known public lists, plaintext, refreshed by their maintainers several times a day.
DEFAULT_SOURCES: list[tuple[str, ProxyProtocol]] = [
    ("https://raw.githubusercontent.com/TheSpeedX/PROXY-List/master/http.txt", ProxyProtocol.HTTP),
    ("https://raw.githubusercontent.com/TheSpeedX/PROXY-List/master/socks5.txt", ProxyProtocol.SOCKS5),
    ("https://raw.githubusercontent.com/monosans/proxy-list/main/proxies/http.txt", ProxyProtocol.HTTP),
    ("https://raw.githubusercontent.com/monosans/proxy-list/main/proxies/socks5.txt", ProxyProtocol.SOCKS5),
    ("https://raw.githubusercontent.com/proxifly/free-proxy-list/main/proxies/protocols/http/data.txt", ProxyProtocol.HTTP),
]


def normalise_source_url(url: str, *, must_exist: bool = True) -> str:
    """An http(s) URL as given; a file as an absolute ``file://`` URL.  Raises InvalidInputError."""
    text = url.strip()
    if not text:
        raise InvalidInputError("source URL is empty")
    if text.startswith(("http://", "https://")):
        return text
    if "://" in text and not text.startswith("file://"):
        raise InvalidInputError(f"unsupported source URL {masked_url(text)!r}: use http(s)://, file:// or a local path")
    path = local_path(text)
    assert path is not None
    path = path.resolve()
    if must_exist and not path.is_file():
        raise InvalidInputError(f"source file {path} does not exist")
    return path.as_uri()


def _fires(schedule: str) -> bool:
    """Valid cron that also has a next run ("0 0 31 2 *" is valid syntax but never fires)."""
    if not croniter.is_valid(schedule):
        return False
    try:
        croniter(schedule).get_next(float)
    except ValueError:
        return False
    return True


async def add_source(
    store: Store,
    registry: PluginRegistry,
    url: str,
    *,
    parser: str | None = None,
    schedule: str | None = None,
    protocol: str | None = None,
    origin: str = "user",
) -> ProxySource:
    """Validate everything first, then insert; nothing is written when any part is wrong."""
    normalised = normalise_source_url(url)
    if parser is not None and parser not in registry.parsers:
        known = ", ".join(sorted(registry.parsers)) or "none"
        raise InvalidInputError(f"unknown parser {parser!r} (known: {known})")
    if schedule is not None and not _fires(schedule):
        raise InvalidInputError(f"{schedule!r} is not a valid cron expression")
    try:
        default_protocol = ProxyProtocol((protocol or "http").lower())
    except ValueError:
        raise InvalidInputError(f"unknown protocol {protocol!r} (known: http, https, socks4, socks5)") from None
    return await store.add_source(
        normalised, parser=parser, schedule=schedule, default_protocol=default_protocol, origin=origin
    )

