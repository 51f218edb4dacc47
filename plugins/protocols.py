"""What a plugin must look like.  Structural: implement the shape, inherit nothing.

Hooks are named for when they run.  ``CheckContext`` travels through one pipeline run so later
stages read what earlier ones learned (exit address, latency).
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import aiohttp

from pool.models import AnonymityLevel, DiscoveredProxy, Event, Proxy, ProxySource, utcnow

__all__ = ["CheckContext", "CheckResult", "Notifier", "ProxyChecker", "SourceParser", "TlsEndpoint"]


@runtime_checkable
class SourceParser(Protocol):
    name: str

    def supports(self, url: str) -> bool:
        """True if this parser can read ``url``; used when a source names no parser."""
        ...

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        """Extract proxies from a fetched body.  Duplicates are fine: the store dedupes.  Raise
        ValueError for a body this parser cannot read; runs under ``fetch.parse_timeout``."""
        ...

    def default_schedule(self) -> str | None:
        """Cron expression used when the source sets none, or None."""
        ...


@dataclass(frozen=True)
class TlsEndpoint:
    """A TLS server a CONNECT check may reach, and the client context that verifies its certificate."""

    host: str
    port: int
    ssl: ssl.SSLContext
    server_hostname: str
    label: str  # how details name it


@dataclass
class CheckContext:
    """Shared, mutable state of one pipeline run over one proxy."""

    http_client: aiohttp.ClientSession
    started_at: datetime = field(default_factory=utcnow)
    judges: list[str] = field(default_factory=list)
    real_ip: str | None = None
    exit_ip: str | None = None
    tcp_latency_ms: float | None = None
    http_latency_ms: float | None = None
    anonymity_level: AnonymityLevel | None = None
    country: str | None = None
    headers_forwarded: list[str] = field(default_factory=list)
    tls_endpoints: list[TlsEndpoint] = field(default_factory=list)  # tried before the judges' HTTPS forms
    tunnels: bool | None = None  # set by tls_tunnel: True carries CONNECT, False plain HTTP only
    extra: dict[str, Any] = field(default_factory=dict)
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000


@dataclass
class CheckResult:
    passed: bool
    detail: str
    latency_ms: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False  # the check could not judge the proxy (e.g. every judge down): no verdict


@runtime_checkable
class ProxyChecker(Protocol):
    name: str
    stage: int
    priority: int
    timeout: float

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        """Judge one proxy.  A timeout counts as a failed check; a raised exception is a bug of
        the checker, not a verdict (no verdict; a checker raising on its first 20 proxies is disabled)."""
        ...

    def should_skip(self, proxy: Proxy) -> bool:
        """True when this check does not apply to ``proxy`` (e.g. SOCKS-only checks)."""
        ...


@runtime_checkable
class Notifier(Protocol):
    name: str
    subscribes_to: list[str]

    async def notify(self, event: Event) -> None:
        """Deliver one event.  Runs in its own task; exceptions are logged, never propagated."""
        ...

    async def health_check(self) -> bool:
        """True when the backend is reachable; polled and shown in /api/stats and notifier_up."""
        ...
