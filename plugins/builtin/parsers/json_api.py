"""Parser for JSON proxy APIs (geonode, proxyscrape, pubproxy-style answers, JSON-lines dumps).

Accepted shapes:

- a list of objects, or an object holding the list under ``data``, ``proxies``, ``results``,
  ``list``, ``items`` (or one level deeper: ``{"data": {"proxies": [...]}}``), or one proxy object;
- JSON lines: one object a line;
- objects with the address under ip/host/address/addr/proxy/ipPort (``"ip:port"`` or a whole
  proxy URL is fine), the port under ``port`` (number or string), the protocol under
  protocol/type/protocols (a string, a list, or ``"http, https"``: each protocol its own entry; "https"
  on a list site is an HTTP proxy that can CONNECT, so ``http``),
  and credentials under username/user/login and password/pass;
- lists of ``"ip:port"`` or proxy-URL strings, or of ``["ip", port]`` pairs.

An entry that is not a valid proxy is skipped and counted.  A body that is not JSON (an HTML
error page, binary junk), nested beyond reason, or whose entries are none of them proxies raises
``ValueError`` with one line saying why; a valid empty list is ``[]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from config import Settings
from plugins import DiscoveredProxy, ProxyProtocol, ProxySource, UpstreamURL

from ._words import protocols_in_text

__all__ = ["JsonApiParser", "ParseOutcome", "create_plugin", "extract", "parse_body"]

log = logging.getLogger("proxy_pool.plugins.json_api")

NAME = "json_api"
_THREAD_THRESHOLD = 64 * 1024  # bodies above this (a few ms of work) are parsed off the event loop

_LIST_KEYS = ("data", "proxies", "results", "result", "list", "items", "proxy_list", "proxylist")
_ADDRESS_KEYS = (
    "ip",
    "host",
    "address",
    "addr",
    "ip_address",
    "ipaddress",
    "ipport",
    "ip_port",
    "proxy",
    "server",
)
_PORT_KEYS = ("port",)
_PROTOCOL_KEYS = ("protocols", "protocol", "type", "types", "proxy_type", "scheme")
_USER_KEYS = ("username", "user", "login")
_PASSWORD_KEYS = ("password", "pass", "pwd")
_HTTPS_FLAG_KEYS = ("https", "ssl")



class ParseOutcome(NamedTuple):
    """What a body yielded: the proxies in order, and how many list entries were not proxies."""

    proxies: list[DiscoveredProxy]
    skipped: int


def protocols_in(value: object) -> list[ProxyProtocol]:
    """Each protocol a value names: ``"socks5"``, ``["http", "https"]``, ``"HTTP/HTTPS"``, ``"socks4/5"``."""
    texts = value if isinstance(value, list) else [value]
    found: list[ProxyProtocol] = []
    for text in texts:
        if isinstance(text, str):
            protocols_in_text(text, found)
    return found


def _first(entry: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in entry and entry[key] not in (None, ""):
            return entry[key]
    return None


def _port_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _join(address: str, port: str | None) -> str:
    """An address (maybe already ``ip:port`` or a URL) and a separate port as one parseable string."""
    if port is None or "://" in address or address.startswith("[") or address.count(":") == 1:
        return address  # the address carries its own port (or is a whole URL)
    if ":" in address:
        return f"[{address}]:{port}"  # a bare IPv6 address
    return f"{address}:{port}"


def _validate(text: str) -> UpstreamURL | None:
    """The parsed address, or None; an unbracketed IPv6 with a port (``2001:db8::1:80``) is ambiguous."""
    try:
        url = UpstreamURL.parse(text, default_protocol="http")
    except ValueError:
        return None
    return None if ":" in url.host and "[" not in text else url


def _from_string(text: str) -> list[DiscoveredProxy]:
    url = _validate(text)
    if url is None:
        return []
    protocol = url.protocol if "://" in text else None
    return [DiscoveredProxy(url.host, url.port, protocol, url.username, url.password)]


def _credential(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _from_object(raw: dict[str, Any]) -> list[DiscoveredProxy]:
    """The entries one object stands for (one per listed protocol); [] if it is not a proxy."""
    entry = {str(key).lower(): value for key, value in raw.items()}
    address = _first(entry, _ADDRESS_KEYS)
    if not isinstance(address, str):
        return []
    address = address.strip()
    explicit = "://" in address
    url = _validate(_join(address, _port_text(_first(entry, _PORT_KEYS))))
    if url is None:
        return []
    username = _credential(_first(entry, _USER_KEYS)) or url.username
    password = _credential(_first(entry, _PASSWORD_KEYS)) or url.password
    protocols: list[ProxyProtocol | None] = []
    for key in _PROTOCOL_KEYS:  # "type" may hold an anonymity level instead: take the first that names one
        if key in entry:
            protocols.extend(protocols_in(entry[key]))
            if protocols:
                break
    if not protocols and explicit:
        protocols = [url.protocol]
    if not protocols:
        flag = _first(entry, _HTTPS_FLAG_KEYS)
        if flag is True or (isinstance(flag, str) and flag.strip().lower() in ("yes", "true", "1")):
            protocols = [ProxyProtocol.HTTP]  # an HTTPS/SSL flag: an HTTP proxy that can CONNECT
    return [DiscoveredProxy(url.host, url.port, p, username, password) for p in protocols or [None]]


def _looks_like_proxy_object(value: dict[str, Any]) -> bool:
    return any(str(key).lower() in _ADDRESS_KEYS for key in value)


def _find_list(doc: Any) -> list[Any]:
    """The list of entries in a decoded document; ValueError naming the keys when there is none."""
    if isinstance(doc, list):
        return doc
    if not isinstance(doc, dict):
        kind = type(doc).__name__
        raise ValueError(f"{NAME}: JSON body is a {kind}, not a list or an object")  # noqa: TRY004
    lowered = {str(key).lower(): value for key, value in doc.items()}
    for key in _LIST_KEYS:
        value = lowered.get(key)
        if isinstance(value, list):
            return value
        if isinstance(value, dict):
            for inner_key in _LIST_KEYS:
                inner = {str(k).lower(): v for k, v in value.items()}.get(inner_key)
                if isinstance(inner, list):
                    return inner
            if _looks_like_proxy_object(value):
                return [value]
    if _looks_like_proxy_object(doc):  # an endpoint answering one proxy
        return [doc]
    keys = ", ".join(repr(str(key)) for key in list(doc)[:8]) or "none"
    raise ValueError(f"{NAME}: no proxy list in the JSON object (keys: {keys})")


def extract(doc: Any) -> ParseOutcome:
    """Every proxy in a decoded JSON document; ValueError when it holds no list at all."""
    entries = _find_list(doc)
    proxies: list[DiscoveredProxy] = []
    skipped = 0
    for item in entries:
        if isinstance(item, str):
            found = _from_string(item.strip())
        elif isinstance(item, dict):
            found = _from_object(item)
        elif isinstance(item, list) and len(item) >= 2 and isinstance(item[0], str):  # ["ip", port]
            port = _port_text(item[1])
            found = _from_string(_join(item[0].strip(), port)) if port else []
        else:
            found = []
        if found:
            proxies.extend(found)
        else:
            skipped += 1
    return ParseOutcome(proxies, skipped)


def _describe(raw: bytes) -> str:
    head = raw[:4096].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not head:
        return "the body is empty"
    junk = sum(1 for c in head if c == "\ufffd" or (c < " " and c not in "\t\r\n"))
    if "\x00" in head or junk * 10 > len(head):
        return "body is not JSON (binary data)"
    return f"body is not JSON (starts with {head[:20]!r})"


def _loads(raw: bytes) -> Any:
    """Decode JSON or JSON lines; ValueError with one clear line otherwise."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{NAME}: JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data" or not raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            raise ValueError(f"{NAME}: {_describe(raw)}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{NAME}: {_describe(raw)}") from None
    except ValueError as exc:  # e.g. an integer literal too long to convert
        raise ValueError(f"{NAME}: body is not valid JSON ({str(exc).splitlines()[0][:160]})") from None
    documents: list[Any] = []  # JSON lines: one object a line
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            documents.append(json.loads(line))
        except RecursionError:
            raise ValueError(f"{NAME}: JSON nested too deeply") from None
        except ValueError:
            start = line.strip()[:20].decode("utf-8", errors="replace")
            raise ValueError(
                f"{NAME}: body is neither JSON nor JSON lines (line {number}: {start!r})"
            ) from None
    return documents


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def parse_body(raw: bytes) -> ParseOutcome:
    """Decode and read a fetched body; ValueError (one line) for anything that is not a proxy list."""
    outcome = extract(_loads(raw))
    if not outcome.proxies and outcome.skipped:
        raise ValueError(
            f"{NAME}: none of {_count(outcome.skipped, 'list entry', 'list entries')} is a proxy"
        )
    return outcome


class JsonApiParser:
    """JSON proxy APIs; the default for ``.json`` URLs and URLs with ``api`` in the path."""

    name = NAME

    def supports(self, url: str) -> bool:
        parts = urlsplit(url)
        path = parts.path.lower()
        if path.endswith((".txt", ".list", ".html", ".htm", ".csv")):
            return False
        api_segment = any(seg == "api" or seg.startswith(("api.", "api-", "api_")) for seg in path.split("/"))
        return (
            path.endswith(".json")
            or api_segment
            or (parts.hostname or "").startswith("api.")
            or "format=json" in parts.query.lower()
        )

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        if len(raw) > _THREAD_THRESHOLD:
            outcome = await asyncio.to_thread(parse_body, raw)
        else:
            outcome = parse_body(raw)
        log.debug(
            "source %s: %d proxies, %d entries skipped", source.id, len(outcome.proxies), outcome.skipped
        )
        return outcome.proxies

    def default_schedule(self) -> str | None:
        return "*/30 * * * *"


def create_plugin(settings: Settings) -> JsonApiParser:
    return JsonApiParser()
