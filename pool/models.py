"""The pool's domain objects.

>>> UpstreamURL.parse("socks5://u:p@10.0.0.1:1080").display
'socks5://u:***@10.0.0.1:1080'
>>> UpstreamURL.parse("[2001:db8::1]:3128", default_protocol="http").url
'http://[2001:db8::1]:3128'
>>> UpstreamURL.parse("http://TOKEN@10.0.0.1:3128").display
'http://***@10.0.0.1:3128'
>>> masked_url("https://u:pw@example.com/list.txt?apikey=K&fmt=txt")
'https://u:***@example.com/list.txt?apikey=***&fmt=***'
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "AnonymityLevel",
    "DiscoveredProxy",
    "Event",
    "Occasion",
    "Proxy",
    "ProxyCheck",
    "ProxyProtocol",
    "ProxySource",
    "ProxyStatus",
    "UpstreamURL",
    "masked_url",
    "scrub_url_secrets",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


MASK = "***"


def masked_url(url: str) -> str:
    """A URL safe to show (logs, API answers, events, errors): the password, a username given alone (a
    token: ``http://TOKEN@host``) and every query value become ``***``; the URL itself is stored whole."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if sep and user else f"{MASK}@{hostport}"
    query = "&".join(
        (f"{item.partition('=')[0]}={MASK}" if "=" in item else item) for item in parts.query.split("&")
    ) if parts.query else ""
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def _url_secrets(url: str) -> list[str]:
    """The parts of ``url`` that ``masked_url`` hides, raw and percent-decoded, longest first (the whole URL
    is replaced before them, so a short one never shows there either)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found: set[str] = set()
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, sep, password = userinfo.partition(":")
        found.add(password if sep and user else userinfo)
    found.update(item.partition("=")[2] for item in parts.query.split("&") if "=" in item)
    found.add(parts.fragment)
    found |= {unquote(f) for f in found}
    return sorted((f for f in found if len(f) >= 4), key=len, reverse=True)  # "1" would mangle any text


def scrub_url_secrets(text: str, url: str) -> str:
    """``text`` (an error message, say) with ``url`` shown masked and its secrets replaced by ``***``."""
    if url in text:
        text = text.replace(url, masked_url(url))
    for secret in _url_secrets(url):
        text = text.replace(secret, MASK)
    return text


class ProxyProtocol(enum.StrEnum):
    """How the gateway talks to an upstream (named so it never shadows ``typing.Protocol``)."""

    HTTP = "http"
    HTTPS = "https"
    SOCKS4 = "socks4"
    SOCKS5 = "socks5"

    @property
    def is_socks(self) -> bool:
        return self in _SOCKS


_SOCKS = frozenset({ProxyProtocol.SOCKS4, ProxyProtocol.SOCKS5})


class ProxyStatus(enum.StrEnum):
    NEW = "new"
    ACTIVE = "active"
    DEAD = "dead"


class AnonymityLevel(enum.StrEnum):
    TRANSPARENT = "transparent"
    ANONYMOUS = "anonymous"
    ELITE = "elite"


def _valid_host(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if labels[-1].isdigit():  # looks like a broken IPv4 address such as 1.2.3.999
        return False
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c in "-_" for c in label)
        and label.isascii()
        for label in labels
    )


@dataclass(frozen=True, slots=True)
class UpstreamURL:
    """A parsed ``scheme://[user:pass@]host:port``; the one place that reads and writes proxy URLs."""

    protocol: ProxyProtocol
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, text: str, default_protocol: ProxyProtocol | str | None = None) -> UpstreamURL:
        """Parse a proxy URL or bare ``host:port``; raises ValueError saying what is wrong."""
        raw = text.strip()
        scheme: str | None
        if "://" in raw:
            scheme, _, rest = raw.partition("://")
            scheme = scheme.lower()
        else:
            scheme, rest = None, raw
        if scheme is None:
            if default_protocol is None:
                raise ValueError(f"{text!r} has no scheme")
            protocol = ProxyProtocol(default_protocol)
        else:
            if scheme == "socks5h":
                scheme = "socks5"
            elif scheme == "socks4a":
                scheme = "socks4"
            try:
                protocol = ProxyProtocol(scheme)
            except ValueError:
                raise ValueError(f"unsupported proxy scheme {scheme!r}") from None
        rest = rest.rstrip("/")
        username = password = None
        if "@" in rest:
            userinfo, _, rest = rest.rpartition("@")
            user, sep, pw = userinfo.partition(":")
            username = unquote(user)
            password = unquote(pw) if sep else None
            if not username and not password:
                username = password = None
        if rest.startswith("["):
            host, sep, tail = rest[1:].partition("]")
            if not sep or not tail.startswith(":"):
                raise ValueError("IPv6 proxy address needs [addr]:port")
            port_text = tail[1:]
            try:
                if ipaddress.ip_address(host).version != 6:
                    raise ValueError
            except ValueError:
                raise ValueError(f"invalid IPv6 address {host!r}") from None
        else:
            host, sep, port_text = rest.rpartition(":")
            if not sep:
                raise ValueError(f"{text!r} has no port")
            if ":" in host:
                raise ValueError(f"IPv6 address {host!r} must be in brackets: [addr]:port")
            if not _valid_host(host):
                raise ValueError(f"invalid host {host!r}")
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"invalid port {port_text!r}")
        return cls(protocol, host.lower(), int(port_text), username, password)

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _with_userinfo(self, password: str | None, *, masked: bool = False) -> str:
        if self.username is None and self.password is None:
            return f"{self.protocol}://{self.netloc}"
        user = quote(self.username or "", safe="")
        if masked and password is None:
            return f"{self.protocol}://{MASK}@{self.netloc}"  # a username alone is a token: hide it
        secret = "" if password is None else f":{password}"
        return f"{self.protocol}://{user}{secret}@{self.netloc}"

    @property
    def has_credentials(self) -> bool:
        return self.username is not None or self.password is not None

    @property
    def url(self) -> str:
        """With credentials: for dialing and for ``txt`` exports the user asked for."""
        return self._with_userinfo(None if self.password is None else quote(self.password, safe=""))

    @property
    def display(self) -> str:
        """Safe to log or show: a password is always ``***``, and so is a username given alone."""
        return self._with_userinfo(None if self.password is None else MASK, masked=True)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.protocol.value, self.host, self.port)


@dataclass(frozen=True, slots=True)
class DiscoveredProxy:
    """What a parser found; ``protocol`` None means the source's default."""

    ip: str
    port: int
    protocol: ProxyProtocol | str | None = None
    username: str | None = None
    password: str | None = None

    def to_upstream(self, default_protocol: ProxyProtocol | str) -> UpstreamURL:
        protocol = ProxyProtocol(self.protocol or default_protocol)
        host = self.ip
        netloc = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        parsed = UpstreamURL.parse(netloc, default_protocol=protocol)
        return UpstreamURL(parsed.protocol, parsed.host, parsed.port, self.username, self.password)


@dataclass(slots=True, eq=False)
class Proxy:
    """One upstream as the pool knows it.  Mutable: the pipeline updates its figures in place."""

    id: int
    upstream: UpstreamURL
    status: ProxyStatus = ProxyStatus.NEW
    source_id: int | None = None
    latency_ms: float | None = None
    success_ratio: float | None = None
    last_checked: datetime | None = None
    consecutive_failures: int = 0
    exit_ip: str | None = None
    anonymity: AnonymityLevel | None = None
    country: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    dead_since: datetime | None = None
    check_history: str = ""  # recent outcomes, newest last: "1" passed, "0" failed
    tunnels: bool | None = None  # carries CONNECT (tls_tunnel check); False: plain HTTP only; None: not known

    @property
    def protocol(self) -> ProxyProtocol:
        return self.upstream.protocol

    @property
    def host(self) -> str:
        return self.upstream.host

    @property
    def port(self) -> int:
        return self.upstream.port

    @property
    def username(self) -> str | None:
        return self.upstream.username

    @property
    def password(self) -> str | None:
        return self.upstream.password

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def display_url(self) -> str:
        return self.upstream.display

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<Proxy #{self.id} {self.upstream.display} {self.status}>"

    def public_dict(self) -> dict[str, Any]:
        """The API shape: no credentials, ever."""
        return {
            "id": self.id,
            "url": self.display_url,
            "protocol": self.protocol.value,
            "host": self.host,
            "port": self.port,
            "status": self.status.value,
            "anonymity": self.anonymity.value if self.anonymity else None,
            "country": self.country,
            "exit_ip": self.exit_ip,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "success_ratio": None if self.success_ratio is None else round(self.success_ratio, 3),
            "last_checked": self.last_checked.isoformat() if self.last_checked else None,
            "source_id": self.source_id,
            "tunnels": self.tunnels,
        }


@dataclass(slots=True)
class ProxySource:
    id: int
    url: str
    parser: str | None = None
    schedule: str | None = None
    default_protocol: ProxyProtocol = ProxyProtocol.HTTP
    origin: str = "user"  # "config", "default", "cli", "user"
    created_at: datetime = field(default_factory=utcnow)
    last_run_at: datetime | None = None
    last_success_at: datetime | None = None
    last_found: int | None = None
    last_new: int | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    last_yield_at: datetime | None = None  # when it last had an active proxy (pool.quality)
    quarantined_at: datetime | None = None  # set while quarantined (pool.quality)
    seen_1h: int = 0  # its proxies that reached 1 h since it first listed them ...
    survived_1h: int = 0  # ... and were active then
    seen_24h: int = 0
    survived_24h: int = 0

    @property
    def quarantined(self) -> bool:
        return self.quarantined_at is not None

    @property
    def display_url(self) -> str:
        """The URL safe to show: password, lone username and query values as ``***``."""
        return masked_url(self.url)

    def scrub(self, text: str) -> str:
        """``text`` without this source's secrets (for errors that quote the URL or a part of it)."""
        return scrub_url_secrets(text, self.url)

    def public_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.display_url,
            "parser": self.parser,
            "schedule": self.schedule,
            "default_protocol": self.default_protocol.value,
            "origin": self.origin,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "last_success_at": self.last_success_at.isoformat() if self.last_success_at else None,
            "last_found": self.last_found,
            "last_new": self.last_new,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "last_yield_at": self.last_yield_at.isoformat() if self.last_yield_at else None,
            "survival_1h": round(self.survived_1h / self.seen_1h, 3) if self.seen_1h else None,
            "survival_24h": round(self.survived_24h / self.seen_24h, 3) if self.seen_24h else None,
            "quarantined": self.quarantined,
            "quarantined_at": self.quarantined_at.isoformat() if self.quarantined_at else None,
        }


@dataclass(frozen=True, slots=True)
class ProxyCheck:
    """One line of the check log."""

    proxy_id: int
    checker: str
    stage: int
    passed: bool
    detail: str
    latency_ms: float | None
    at: datetime

    def public_dict(self) -> dict[str, Any]:
        return {
            "checker": self.checker,
            "stage": self.stage,
            "passed": self.passed,
            "detail": self.detail,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "at": self.at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Occasion:
    """What makes two sightings of an event the same one for the whole pool (``pool/events.py``):
    the ``pool_marks`` row ``name``; delivered again only once that mark is older than ``since``
    (None: never again under this name, so the name itself carries the occasion)."""

    name: str
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """The wire shape every notifier receives: ``{"type", "payload", "at"}`` (``once``, when the
    emitter knows it, is the event's occasion; never sent)."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=utcnow)
    once: Occasion | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "payload": self.payload, "at": self.at.isoformat()}
