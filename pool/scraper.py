"""Fetch a source, parse it with its parser plugin, upsert what it found, tell the others.

A hostile source (binary junk, the wrong format, an endless body, a server that stalls) ends in
``source.failed`` with a clear error: the fetch is bounded in time and size, and nothing is
upserted unless the whole parse succeeded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

import aiohttp

from config.printable import printable
from config.settings import SourcesFetchSettings
from plugins.protocols import SourceParser
from plugins.registry import PluginRegistry
from pool.models import DiscoveredProxy, Event, Proxy, ProxySource, UpstreamURL
from pool.store import Store

__all__ = ["FetchError", "ScrapeResult", "Scraper", "fetch_source", "local_path"]

log = logging.getLogger("proxy_pool.scraper")

USER_AGENT = "proxy-pool/0.1 (+self-hosted proxy gateway)"


class FetchError(Exception):
    """The source could not be read; the message is the one line users see."""


@dataclass(frozen=True)
class ScrapeResult:
    source: ProxySource
    found: int
    new: list[Proxy]
    skipped: int
    error: str | None


def local_path(url: str) -> Path | None:
    """The file a source URL names, or None for http(s)."""
    if url.startswith(("http://", "https://")):
        return None
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    return Path(url).expanduser()


async def fetch_source(url: str, settings: SourcesFetchSettings, session: aiohttp.ClientSession | None = None) -> bytes:
    """The body of a source, bounded by ``fetch.timeout`` and ``fetch.max_bytes``."""
    path = local_path(url)
    if path is not None:
        return await asyncio.to_thread(_read_file, path, settings.max_bytes)
    own = session is None
    session = session or aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
    try:
        return await asyncio.wait_for(_fetch_http(session, url, settings), settings.timeout)
    except TimeoutError:
        raise FetchError(f"timed out after {settings.timeout:g} s") from None
    finally:
        if own:
            await session.close()


def _read_file(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        raise FetchError(f"file {path} does not exist") from None
    except IsADirectoryError:
        raise FetchError(f"{path} is a directory") from None
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise FetchError(f"file {path} is larger than {limit} bytes")
    return data


async def _fetch_http(session: aiohttp.ClientSession, url: str, settings: SourcesFetchSettings) -> bytes:
    try:
        async with session.get(
            url,
            max_redirects=settings.max_redirects,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.timeout, sock_read=settings.timeout),
        ) as resp:
            if resp.status >= 400:
                raise FetchError(f"HTTP {resp.status} {printable(resp.reason or '')}".strip())
            declared = resp.content_length
            if declared is not None and declared > settings.max_bytes:
                raise FetchError(f"body of {declared} bytes is larger than the {settings.max_bytes} byte cap")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > settings.max_bytes:
                    raise FetchError(f"body is larger than the {settings.max_bytes} byte cap")
                chunks.append(chunk)
            return b"".join(chunks)
    except aiohttp.TooManyRedirects:
        raise FetchError(f"more than {settings.max_redirects} redirects") from None
    except aiohttp.ClientResponseError as exc:
        raise FetchError(f"HTTP error: {exc.message}") from None
    except aiohttp.ClientConnectorError as exc:
        raise FetchError(f"cannot connect to {exc.host}:{exc.port}: {exc.strerror or exc.os_error}") from None
    except aiohttp.ClientPayloadError as exc:
        raise FetchError(f"broken body: {exc}") from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}") from None


class Scraper:
    """Scrapes sources; new proxies go to ``on_new`` (the pipeline) at once."""

    def __init__(
        self,
        store: Store,
        registry: PluginRegistry,
        fetch_settings: SourcesFetchSettings,
        *,
        on_new: Callable[[list[Proxy]], None] | None = None,
        on_scraped: Callable[[ScrapeResult], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.fetch_settings = fetch_settings
        self.on_new = on_new
        self.on_scraped = on_scraped
        self._session: aiohttp.ClientSession | None = None
        self._running: dict[int, asyncio.Task[ScrapeResult]] = {}

    async def close(self) -> None:
        running = list(self._running.values())  # scrapes nobody waits for any more (their callers stopped)
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def parser_for(self, source: ProxySource) -> SourceParser:
        if source.parser:
            return self.registry.get_parser(source.parser)
        parser = self.registry.get_parser_for_url(source.url)
        if parser is None:
            return self.registry.get_parser("plaintext")
        return parser

    async def scrape(self, source: ProxySource) -> ScrapeResult:
        """One source, now.  A second call while one runs waits for the first."""
        running = self._running.get(source.id)
        if running is not None:
            return await asyncio.shield(running)
        task = asyncio.ensure_future(self._scrape(source))
        self._running[source.id] = task
        # forget it when it ends, even if every caller was cancelled meanwhile
        task.add_done_callback(
            lambda t: self._running.pop(source.id, None) if self._running.get(source.id) is t else None
        )
        return await asyncio.shield(task)

    async def _parse(self, parser: SourceParser, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        """``parser.parse`` under ``fetch.parse_timeout``.  ValueError is the parser's way to say
        "this body is not mine to read" (the source fails with its message); any other exception,
        an overrun or an answer that is no list is the parser's bug: counted as its error too."""
        health = self.registry.health
        timeout = self.fetch_settings.parse_timeout
        try:
            # asyncio.timeout, not wait_for: parse() runs in this task, which the loop watchdog can name
            with health.calling(parser.name, "parse"):
                async with asyncio.timeout(timeout):
                    discovered = await parser.parse(raw, source)
            if not isinstance(discovered, (list, tuple)):
                raise TypeError(f"parse() returned {type(discovered).__name__}, not a list")
        except ValueError as exc:
            text = str(exc)
            message = text if text.startswith(f"{parser.name}:") else f"{parser.name}: {text}"
            raise FetchError(message[:400]) from None
        except TimeoutError:
            health.failed(parser.name, "parse", TimeoutError(f"parse() took more than {timeout:g} s"))
            raise FetchError(f"{parser.name}: parse timed out after {timeout:g} s") from None
        except Exception as exc:
            health.failed(parser.name, "parse", exc)
            raise FetchError(f"{parser.name}: parser failed: {type(exc).__name__}: {exc}"[:400]) from None
        return list(discovered)

    async def _scrape(self, source: ProxySource) -> ScrapeResult:
        at = datetime.now(UTC)
        try:
            parser = self.parser_for(source)
            if self._session is None and local_path(source.url) is None:
                self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
            raw = await fetch_source(source.url, self.fetch_settings, self._session)
            discovered = await self._parse(parser, raw, source)
            upstreams: list[UpstreamURL] = []
            skipped = 0
            for item in discovered:
                try:
                    upstreams.append(item.to_upstream(source.default_protocol))
                except (ValueError, TypeError, AttributeError):  # AttributeError: not a DiscoveredProxy
                    skipped += 1
            result = await self.store.upsert_proxies(source.id, upstreams)
        except Exception as exc:  # every failure of a source is reported the same way
            error = source.scrub(str(exc) if isinstance(exc, FetchError) else f"{type(exc).__name__}: {exc}")
            updated = await self.store.record_scrape(source.id, at=at, found=None, new=None, error=error)
            log.warning("source #%d %s failed: %s", source.id, source.display_url, error)
            self.registry.emit_nowait(
                Event(
                    "source.failed",
                    {
                        "source_id": source.id,
                        "source": source.display_url,
                        "error": error,
                        "consecutive_failures": updated.consecutive_failures,
                    },
                )
            )
            out = ScrapeResult(updated, 0, [], 0, error)
        else:
            updated = await self.store.record_scrape(
                source.id, at=at, found=result.found, new=len(result.new), error=None
            )
            log.info("source #%d %s: %d found, %d new", source.id, source.display_url, result.found, len(result.new))
            if result.new:
                self.registry.emit_nowait(
                    Event("proxy.new_batch", {"source_id": source.id, "source": source.display_url, "count": len(result.new)})
                )
                if self.on_new is not None:
                    self.on_new(result.new)
            out = ScrapeResult(updated, result.found, result.new, skipped, None)
        if self.on_scraped is not None:
            self.on_scraped(out)
        return out
