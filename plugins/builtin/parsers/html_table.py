"""Parser for proxy tables in web pages (free-proxy-list.net, sslproxies, hidemy-style lists).

Why selectolax: a lexbor-based HTML5 parser (the browser algorithm, so broken markup parses as a
browser would), fast enough that a 5,000-row table costs milliseconds, a small wheel with no system
libraries, and CSS selectors; lxml is a larger binary, and its HTML parser is not HTML5.

Every ``<table>`` whose header row names an address column counts; other tables on the page
(navigation, country statistics) are ignored.  Handled:

- the header in ``<thead>`` or in the first row, with ``<th>`` or ``<td>`` cells; ``colspan``;
- address headers IP, IP Address, Host, Proxy, Address, ``IP:Port`` ...; a Port column, or
  ``ip:port`` (or a whole proxy URL) in the address cell;
- a Protocol/Type column with http/https/socks4/socks5 values (several values give one entry
  each; "https" there, as on every list site, is an HTTP proxy that can CONNECT, so ``http``), and an
  "Https" yes/no column that makes an entry ``http`` when no protocol is named;
- decoy text hidden with inline ``display:none``, scripts and styles inside cells;
- footer rows repeating the header, rows of ``<th>`` only.

A row whose address or port is invalid is skipped and counted.  A page with no proxy table, or
whose proxy tables hold no valid row, is an error: it is usually a block page or a changed layout.
So is a page nested deeper than ``MAX_DEPTH`` (see ``nesting_depth``): HTML5 tree building is
quadratic in nesting depth, and 1 MB of unclosed ``<div>`` would take a worker thread for hours.
Parsing always runs in a worker thread (lexbor releases the GIL), never on the event loop.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

from config import Settings
from plugins import DiscoveredProxy, ProxyProtocol, ProxySource, UpstreamURL

from ._words import protocols_in_text

__all__ = ["HtmlTableParser", "ParseOutcome", "create_plugin", "parse_body", "parse_html"]

log = logging.getLogger("proxy_pool.plugins.html_table")

NAME = "html_table"
_PAGE_EXTENSIONS = (".html", ".htm", ".shtml", ".xhtml", ".php", ".asp", ".aspx", ".jsp")
_MAX_COLSPAN = 64
_HEADER_SEARCH_ROWS = 3  # the header may sit below a caption-like row or two

# Header spellings, compared after lower-casing and turning punctuation into spaces.
_ADDRESS_HEADERS = frozenset(
    {
        "ip", "ip address", "ipaddress", "ip addr", "ip adress", "address", "addr", "host", "hostname",
        "proxy", "proxy ip", "proxy address", "proxy host", "proxy server", "server", "ip port",
        "ip address port", "proxy ip port", "proxy address port", "host port",
    }
)  # fmt: skip
_PORT_HEADERS = frozenset({"port", "proxy port", "port number", "ports"})
_PROTOCOL_HEADERS = frozenset(
    {"protocol", "protocols", "type", "types", "proxy type", "proxy protocol", "scheme"}
)
_HTTPS_HEADERS = frozenset({"https", "ssl", "https support", "ssl support", "supports https"})
_YES = frozenset({"yes", "y", "true", "1", "+", "✓", "✔"})

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_HIDDEN = '[style*="display:none"], [style*="display: none"], [hidden]'

# The nesting guard (see ``nesting_depth``).
MAX_DEPTH = 512  # real pages stay under 100
_TAG = re.compile(r"<(/?)([a-z][a-z0-9]{0,15})")  # run on the lower-cased text
# Void elements never open, and these close their own kind: neither can build depth.
_NEVER_DEEP = frozenset(
    {
        "area", "base", "basefont", "bgsound", "br", "col", "embed", "frame", "hr", "image", "img", "input",
        "keygen", "link", "meta", "param", "source", "track", "wbr",
        "p", "li", "dt", "dd", "option", "optgroup", "rb", "rt", "rp", "rtc",
    }
)  # fmt: skip
_TABLE_PARTS = frozenset({"caption", "colgroup", "tbody", "thead", "tfoot", "tr", "td", "th"})


class ParseOutcome(NamedTuple):
    """What a page yielded: the proxies in order, and how many data rows were not proxies."""

    proxies: list[DiscoveredProxy]
    skipped: int


@dataclass(frozen=True, slots=True)
class _Columns:
    """Where the interesting columns of one table are (indexes after colspan expansion)."""

    address: tuple[int, ...]  # several when the header cell spans columns: the first valid one wins
    port: int | None
    protocol: int | None
    https: int | None


def protocols_in(text: str) -> list[ProxyProtocol]:
    """Each protocol named in a cell: ``"HTTP, HTTPS"`` -> http; ``"SOCKS4/5"`` -> both."""
    return protocols_in_text(text)


def _header_key(text: str) -> str:
    return _NON_ALNUM.sub(" ", text.lower()).strip()


def _rows(table: LexborNode) -> Iterator[LexborNode]:
    """The table's own rows, not those of tables nested in its cells."""
    for child in table.iter():
        if child.tag == "tr":
            yield child
        elif child.tag in ("thead", "tbody", "tfoot"):
            for row in child.iter():
                if row.tag == "tr":
                    yield row


class _Row(NamedTuple):
    texts: list[str]  # one per column, colspan expanded
    origins: list[int]  # for each column, the ordinal of the cell it came from
    all_th: bool


def _cells(row: LexborNode) -> _Row:
    """Cell texts with colspan expanded, as a browser lays the columns out."""
    texts: list[str] = []
    origins: list[int] = []
    all_th = True
    ordinal = 0
    for cell in row.iter():
        if cell.tag not in ("td", "th"):
            continue
        all_th = all_th and cell.tag == "th"
        span_text = cell.attributes.get("colspan") or "1"
        span = max(1, min(int(span_text) if span_text.isdigit() else 1, _MAX_COLSPAN))
        texts.extend([cell.text(deep=True).strip()] * span)
        origins.extend([ordinal] * span)
        ordinal += 1
    return _Row(texts, origins, all_th)


def _find_columns(header: _Row) -> _Columns | None:
    address: tuple[int, ...] | None = None
    port = protocol = https = None
    for index, text in enumerate(header.texts):
        key = _header_key(text)
        if address is None and key in _ADDRESS_HEADERS:
            origin = header.origins[index]
            address = tuple(i for i, o in enumerate(header.origins) if o == origin)
        elif address is not None and index in address:
            continue
        elif port is None and key in _PORT_HEADERS:
            port = index
        elif protocol is None and key in _PROTOCOL_HEADERS:
            protocol = index
        elif https is None and key in _HTTPS_HEADERS:
            https = index
    if address is None:
        return None
    return _Columns(address, port, protocol, https)


def _candidate(address: str, port: str | None) -> str:
    """The address cell (plus the port cell) as one ``host:port`` or URL string."""
    token = address.split()[0] if address else ""
    if not port or "://" in token or token.startswith("["):
        return token
    colons = token.count(":")
    if colons >= 2:  # a bare IPv6 address
        return f"[{token}]:{port}"
    if colons == 1:  # "ip:port" in the address cell already
        return token
    return f"{token}:{port}"


def _address(cell: str, port: str | None) -> UpstreamURL | None:
    text = _candidate(cell, port)
    try:
        url = UpstreamURL.parse(text, default_protocol="http")
    except ValueError:
        return None
    if ":" in url.host and "[" not in text:
        return None  # "2001:db8::1:80" in one cell: is 80 a port or the last group?  Only brackets say.
    return url


def _row_proxies(cells: list[str], columns: _Columns) -> list[DiscoveredProxy]:
    """The entries one data row stands for (one per listed protocol); [] if it is not a proxy."""
    port_text = None
    if columns.port is not None and columns.port < len(cells) and cells[columns.port]:
        port_text = cells[columns.port].split()[0]
    for index in columns.address:
        if index < len(cells) and (url := _address(cells[index], port_text)) is not None:
            break
    else:
        return []
    explicit = "://" in cells[index]
    protocols: list[ProxyProtocol | None]
    if explicit:
        protocols = [url.protocol]
    else:
        protocols = []
        if columns.protocol is not None and columns.protocol < len(cells):
            protocols.extend(protocols_in(cells[columns.protocol]))
        if (
            not protocols
            and columns.https is not None
            and columns.https < len(cells)
            and cells[columns.https].strip().lower() in _YES
        ):
            protocols.append(ProxyProtocol.HTTP)  # "HTTPS: yes" = an HTTP proxy that can CONNECT
        if not protocols:
            protocols.append(None)
    return [
        DiscoveredProxy(url.host, url.port, protocol, url.username, url.password) for protocol in protocols
    ]


def _table_proxies(table: LexborNode) -> tuple[list[DiscoveredProxy], int] | None:
    """Proxies and skipped rows of one table, or None when it is not a proxy table."""
    columns: _Columns | None = None
    header_seen: list[str] | None = None
    proxies: list[DiscoveredProxy] = []
    skipped = 0
    rows_before_header = 0
    for row in _rows(table):
        parsed = _cells(row)
        cells = parsed.texts
        if not any(cells):
            continue
        if columns is None:
            columns = _find_columns(parsed)
            if columns is None:
                rows_before_header += 1
                if rows_before_header >= _HEADER_SEARCH_ROWS:
                    return None  # no row near the top names an address column: not a proxy table
                continue  # a caption-like row above the header
            header_seen = cells
            continue
        if parsed.all_th or cells == header_seen:
            continue  # a repeated header or a footer
        found = _row_proxies(cells, columns)
        if found:
            proxies.extend(found)
        else:
            skipped += 1
    if columns is None:
        return None
    return proxies, skipped


def nesting_depth(text: str, limit: int = MAX_DEPTH) -> int:
    """About how deep the HTML parser's stack of open elements gets; counting stops past ``limit``.

    Every HTML5 tree builder, lexbor included, walks that stack on many start tags, so a page of
    200,000 unclosed ``<div>`` takes minutes to parse.  This linear scan models the stack closely
    enough to refuse such a page first: an end tag pops to its match (a stray one is ignored), a
    table part closes whatever its table's previous cell left open, void and self-closing-kind
    elements never count.  It over-counts only markup inside scripts and comments.  Cost: about a
    tenth of the parse itself.
    """
    stack: list[str] = []
    where: dict[str, list[int]] = {}  # tag name -> its positions in the stack, innermost last
    peak = 0
    never_deep, table_parts = _NEVER_DEEP, _TABLE_PARTS
    for slash, name in _TAG.findall(text.lower()):
        if name in never_deep:
            continue
        size = -1  # pop the stack down to this size first; -1: nothing to pop
        if slash:
            opened = where.get(name)
            if opened:
                size = opened[-1]
        elif name in table_parts:
            tables = where.get("table")
            if tables:
                size = tables[-1] + 1
        while len(stack) > size >= 0:
            where[stack.pop()].pop()
        if slash:
            continue
        positions = where.get(name)
        if positions is None:
            where[name] = positions = []
        positions.append(len(stack))
        stack.append(name)
        if len(stack) > peak:
            peak = len(stack)
            if peak > limit:
                break
    return peak


def _decode(raw: bytes) -> str:
    """Bytes to text.  Addresses and headers are ASCII, so UTF-8 with replacement is enough."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", errors="replace")
    return raw.decode("utf-8-sig", errors="replace")


def _describe(text: str) -> str:
    head = text.lstrip(" \t\r\n")[:4096]
    if not head:
        return "the body is empty"
    junk = sum(1 for c in head if c == "\ufffd" or (c < " " and c not in "\t\r\n"))
    if "\x00" in head or junk * 10 > len(head):
        return "the body is binary data, not HTML"
    if head[0] in "[{":
        return f"the body is JSON, not HTML (starts with {head[:20]!r}); try the json_api parser"
    if "<" not in head:
        return f"the body is not HTML (starts with {head[:30]!r})"
    return f"no <table> in the page (starts with {head[:30]!r})"


class _Page(NamedTuple):
    outcome: ParseOutcome
    tables: int
    proxy_tables: int


def _parse_page(text: str) -> _Page:
    if nesting_depth(text) > MAX_DEPTH:
        raise ValueError(
            f"{NAME}: elements nested more than {MAX_DEPTH} deep; refusing a page built to be slow"
        )
    tree = LexborHTMLParser(text)
    tree.strip_tags(["script", "style", "noscript", "template"])
    for hidden in tree.css(_HIDDEN):
        hidden.decompose()
    proxies: list[DiscoveredProxy] = []
    skipped = 0
    tables = tree.css("table")
    proxy_tables = 0
    for table in tables:
        result = _table_proxies(table)
        if result is None:
            continue
        proxy_tables += 1
        proxies.extend(result[0])
        skipped += result[1]
    return _Page(ParseOutcome(proxies, skipped), len(tables), proxy_tables)


def parse_html(text: str) -> ParseOutcome:
    """Every proxy in the page's proxy tables; raises ValueError only for a page nested absurdly deep."""
    return _parse_page(text).outcome


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def parse_body(raw: bytes) -> ParseOutcome:
    """Decode and parse a fetched page; ValueError (one line) when it holds no proxy table or no valid row."""
    text = _decode(raw)
    page = _parse_page(text)
    if page.outcome.proxies:
        return page.outcome
    if page.tables == 0:
        raise ValueError(f"{NAME}: {_describe(text)}")
    if page.proxy_tables == 0:
        tables = _count(page.tables, "table")
        raise ValueError(f"{NAME}: none of {tables} has an address column (IP, Host, Proxy ...)")
    if page.outcome.skipped:
        raise ValueError(
            f"{NAME}: none of {_count(page.outcome.skipped, 'table row')} holds a valid proxy address"
        )
    return page.outcome  # proxy tables with a header and no rows: a valid, empty list


class HtmlTableParser:
    """Proxy tables in HTML pages; the default for ``.html`` pages and extension-less page URLs."""

    name = NAME

    def supports(self, url: str) -> bool:
        parts = urlsplit(url)
        path = parts.path.lower()
        last = path.rsplit("/", 1)[-1]
        if last.endswith(_PAGE_EXTENSIONS):
            return True
        if "." in last:
            return False
        # No extension: a web page, unless it looks like an API endpoint (json_api's rule, mirrored).
        api_segment = any(seg == "api" or seg.startswith(("api.", "api-", "api_")) for seg in path.split("/"))
        api_host = (parts.hostname or "").startswith("api.")
        return not (api_segment or api_host or "format=json" in parts.query.lower())

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        # Always off the loop: lexbor releases the GIL, and even a guarded page can cost a second.
        outcome = await asyncio.to_thread(parse_body, raw)
        log.debug("source %s: %d proxies, %d rows skipped", source.id, len(outcome.proxies), outcome.skipped)
        return outcome.proxies

    def default_schedule(self) -> str | None:
        return "*/30 * * * *"


def create_plugin(settings: Settings) -> HtmlTableParser:
    return HtmlTableParser()
