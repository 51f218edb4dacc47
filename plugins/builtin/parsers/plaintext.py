"""Parser for plain proxy lists: one proxy a line, the format most free sources publish.

Each line is read on its own, so one bad line never costs the rest of the list.  Handled:

- ``host:port``, ``scheme://[user:pass@]host:port`` (http, https, socks4(a), socks5(h)),
  ``user:pass@host:port`` and the ``host:port:user:pass`` export format;
- IPv6 in brackets: ``[2001:db8::1]:8080``;
- ``#`` and ``//`` comments, blank lines, CRLF, a UTF-8 (or UTF-16) BOM, trailing spaces;
- extra columns after the address, separated by spaces, tabs, ``,``, ``;`` or ``|``
  (``1.2.3.4:8080 US elite``), and ``ip<TAB>port`` two-column lists;
- undecodable bytes, replaced line by line.

Lines that are not a valid proxy address are skipped and counted, never fatal.  A body in which
nothing at all is a proxy (an HTML error page, JSON, binary junk) is an error, not an empty list.

>>> parse_text("# list\\n1.2.3.4:8080 US elite\\r\\nsocks5://u:p@[::1]:1080\\nnonsense").skipped
1
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import logging
import re
from typing import NamedTuple
from urllib.parse import urlsplit

from config import Settings
from plugins import DiscoveredProxy, ProxyProtocol, ProxySource, UpstreamURL

__all__ = ["ParseOutcome", "PlaintextParser", "create_plugin", "parse_body", "parse_text"]

log = logging.getLogger("proxy_pool.plugins.plaintext")

NAME = "plaintext"
_THREAD_THRESHOLD = 64 * 1024  # bodies above this (a few ms of work) are parsed off the event loop

# A dotted-quad IPv4 octet without leading zeros, exactly as ``ipaddress`` accepts it, so the fast
# path and ``UpstreamURL.parse`` agree on every input (a test holds them to it).
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# The common cases in one regex: ``[scheme://]a.b.c.d:port`` at the start of a line, followed by the
# end of the line, a column separator or an inline comment.  Anything else takes the slow path.
_FAST = re.compile(
    rf"(?:((?i:https?|socks4a?|socks5h?))://)?({_OCTET}(?:\.{_OCTET}){{3}}):([1-9]\d{{0,4}})(?=[\s,;|#]|$)"
)
_SCHEMES: dict[str, ProxyProtocol] = {
    "http": ProxyProtocol.HTTP,
    "https": ProxyProtocol.HTTPS,
    "socks4": ProxyProtocol.SOCKS4,
    "socks4a": ProxyProtocol.SOCKS4,
    "socks5": ProxyProtocol.SOCKS5,
    "socks5h": ProxyProtocol.SOCKS5,
}
_SEPARATORS = re.compile(r"[,;|#]")  # column separators, and an inline comment


class ParseOutcome(NamedTuple):
    """What a body yielded: the proxies in order, and how many non-comment lines were not proxies."""

    proxies: list[DiscoveredProxy]
    skipped: int


def _from_url(url: UpstreamURL, explicit: bool) -> DiscoveredProxy:
    return DiscoveredProxy(
        ip=url.host,
        port=url.port,
        protocol=url.protocol if explicit else None,
        username=url.username,
        password=url.password,
    )


def _parse_token(token: str) -> DiscoveredProxy | None:
    """One address in any accepted spelling, or None."""
    explicit = "://" in token
    try:
        url = UpstreamURL.parse(token, default_protocol="http")
    except ValueError:
        pass
    else:
        if ":" in url.host and "[" not in token:
            return None  # "2001:db8::1:80": is 80 a port or the last group?  Only brackets say.
        return _from_url(url, explicit)
    if not explicit and "@" not in token and "[" not in token:
        parts = token.split(":")
        if len(parts) == 4 and parts[2]:  # host:port:user:pass (the password ends at a column separator)
            try:
                url = UpstreamURL.parse(f"{parts[0]}:{parts[1]}", default_protocol="http")
            except ValueError:
                return None
            password = _SEPARATORS.split(parts[3], 1)[0]
            return DiscoveredProxy(url.host, url.port, None, parts[2], password or None)
    return None


def _parse_line(line: str) -> DiscoveredProxy | None:
    """The proxy a stripped, non-comment line names, or None (``parse_text`` tried ``_FAST`` already)."""
    columns = line.split()
    first = columns[0]
    found = _parse_token(first)
    if found is not None:
        return found
    if _SEPARATORS.search(first):  # "1.2.3.4:8080,US", "host:port;elite", "host:port#comment"
        found = _parse_token(_SEPARATORS.split(first, 1)[0])
        if found is not None:
            return found
    if len(columns) >= 2 and columns[1].isdigit() and _is_ip(first):  # "ip<TAB>port", IPs only:
        return _parse_token(_netloc(first, columns[1]))  # "Updated 20 Jan" is no proxy
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _netloc(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_text(text: str) -> ParseOutcome:
    """Every proxy in ``text``; never raises.  ``protocol`` is set only when a line names a scheme."""
    proxies: list[DiscoveredProxy] = []
    append = proxies.append
    fast_match = _FAST.match
    schemes = _SCHEMES
    skipped = 0
    text = text.removeprefix("\ufeff")
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line[0] == "#" or line.startswith("//"):
            continue
        fast = fast_match(line)  # inlined: this loop is the whole cost of a 100k-line list
        if fast is not None:
            port = int(fast[3])
            if port <= 65535:
                scheme = fast[1]
                append(DiscoveredProxy(fast[2], port, schemes[scheme.lower()] if scheme else None))
                continue
        found = _parse_line(line)
        if found is None:
            skipped += 1
        else:
            append(found)
    return ParseOutcome(proxies, skipped)


def _decode(raw: bytes) -> str:
    """Bytes to text: UTF-16 when its BOM says so, else UTF-8 with bad bytes replaced in place.

    UTF-8 resynchronises at every byte below 0x80, so a bad byte only spoils its own line.
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    return raw.decode("utf-8-sig", errors="replace")


def _describe(text: str) -> str:
    """A short guess at what a body that held no proxies is, for the error message."""
    head = text.lstrip("\ufeff \t\r\n")[:4096]
    if not head:
        return "an empty body"
    junk = sum(1 for c in head if c == "\ufffd" or (c < " " and c not in "\t\r\n"))
    if "\x00" in head or junk * 10 > len(head):
        return "binary data"
    if head.startswith("<"):
        return f"HTML/XML (starts with {head[:20]!r})"
    if head[0] in "[{":
        return f"JSON-like (starts with {head[:20]!r}); try the json_api parser"
    return f"text without proxy addresses (starts with {head[:30]!r})"


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def parse_body(raw: bytes) -> ParseOutcome:
    """Decode and parse a fetched body; ValueError when lines exist but none is a proxy."""
    text = _decode(raw)
    outcome = parse_text(text)
    if not outcome.proxies and outcome.skipped:
        lines = _count(outcome.skipped, "line")
        raise ValueError(f"{NAME}: none of {lines} is a proxy address: body is {_describe(text)}")
    return outcome


class PlaintextParser:
    """One proxy a line; the default for ``.txt`` and ``.list`` sources."""

    name = NAME

    def supports(self, url: str) -> bool:
        return urlsplit(url).path.lower().endswith((".txt", ".list"))

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        if len(raw) > _THREAD_THRESHOLD:
            outcome = await asyncio.to_thread(parse_body, raw)
        else:
            outcome = parse_body(raw)
        log.debug("source %s: %d proxies, %d lines skipped", source.id, len(outcome.proxies), outcome.skipped)
        return outcome.proxies

    def default_schedule(self) -> str | None:
        return "*/30 * * * *"


def create_plugin(settings: Settings) -> PlaintextParser:
    return PlaintextParser()
