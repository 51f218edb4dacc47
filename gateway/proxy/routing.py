"""Routing parameters from the proxy username and ``X-Proxy-Pool-*`` headers.  Pure: no I/O.

    [NAME][-country-CC][-session-ID][-sessmode-strict|soft][-sesstime-MINUTES][-protocol-P][-anonymity-A]

``alice-country-de-session-x1`` is user ``alice`` asking for a German exit on sticky session
``x1``.  With ``auth = "none"`` there is no NAME: ``country-de`` alone.  A header wins over the same
parameter in the username.  Vendors' spellings route the same, so a scraper switches gateways by
changing only host and port:

* Oxylabs ``customer-NAME-cc-DE-sessid-X-sesstime-10``: ``cc`` is ``country``, ``sessid`` is
  ``session``; a leading ``customer-`` before the name is dropped;
* Decodo ``user-NAME-country-de-session-X-sessionduration-30``: ``sessionduration`` is ``sesstime``;
  a leading ``user-`` before the name is dropped;
* Bright Data ``brd-customer-ID-zone-Z-country-de-session-X``: the user is ``ID``, the zone is ignored.

A leading ``customer``, ``user`` or ``brd-customer`` is a prefix only when a name follows it (one that
is not itself a parameter): ``user-country-de`` is the user called ``user``.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from gateway.proxy.errors import BadRequest
from pool.models import AnonymityLevel, ProxyProtocol
from pool.selector import Route

__all__ = [
    "Credentials",
    "RouteError",
    "parse_proxy_authorization",
    "parse_route",
    "split_username",
    "user_name",
]

PARAMS = ("country", "session", "sessmode", "sesstime", "protocol", "anonymity")
ALIASES = {"cc": "country", "sessid": "session", "sessionduration": "sesstime"}  # vendors' names
_KEYS = frozenset(PARAMS) | frozenset(ALIASES)
_PREFIXES = ("customer", "user")  # Oxylabs, Decodo: a word before the user name
SESSTIME_MAX = 1440  # minutes (a day)
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_SESSION = re.compile(r"^[A-Za-z0-9_.]{1,64}$")


class RouteError(BadRequest):
    """A routing parameter is unknown or malformed: 400 naming the part."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str


def parse_proxy_authorization(value: str | None) -> Credentials | None:
    """``Basic base64(user:pass)`` -> Credentials; None when absent or not Basic."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return Credentials(user, password)


def _leading(parts: list[str]) -> tuple[str | None, list[str]]:
    """The user name a username starts with (vendor prefixes dropped) and the parts after it; None
    when it starts with a parameter."""
    if not parts or parts[0] in _KEYS:
        return None, parts
    if parts[0] == "brd" and len(parts) >= 3 and parts[1] == "customer" and parts[2] and parts[2] not in _KEYS:
        rest = parts[3:]
        if rest and rest[0] == "zone":  # Bright Data's zone names a product of theirs: ignored
            if len(rest) < 2 or not rest[1]:
                raise RouteError("routing parameter 'zone' in proxy username has no value")
            rest = rest[2:]
        return parts[2], rest
    if parts[0] in _PREFIXES and len(parts) >= 2 and parts[1] and parts[1] not in _KEYS:
        return parts[1], parts[2:]
    return parts[0], parts[1:]


def user_name(username: str) -> str:
    """Who a username names (``customer-alice-cc-de`` -> ``alice``), the rest not validated: the
    password is checked before what the username asks for (407 for strangers, whatever they ask)."""
    try:
        name, _ = _leading(username.split("-"))
    except RouteError:
        name = None
    return name or ""


def split_username(username: str, *, with_name: bool) -> tuple[str | None, dict[str, str]]:
    """``alice-country-de`` -> ("alice", {"country": "de"}); raises RouteError on a bad part.

    Vendors' parameter names come back as ours (``cc`` as ``country``)."""
    parts = username.split("-") if username else []
    name, parts = _leading(parts)
    if with_name:
        if not name:
            if not parts or not parts[0]:
                raise RouteError("proxy username is empty")
            raise RouteError(f"proxy username must start with the user name, got parameter {parts[0]!r}")
    else:
        name = None  # auth = none: a leading name is tolerated (clients often send one) and ignored
    params: dict[str, str] = {}
    i = 0
    while i < len(parts):
        word = parts[i]
        key = ALIASES.get(word, word)
        if key not in PARAMS:
            raise RouteError(f"unknown routing parameter {word!r} in proxy username (known: {', '.join(PARAMS)})")
        if i + 1 >= len(parts) or not parts[i + 1]:
            raise RouteError(f"routing parameter {word!r} in proxy username has no value")
        if key in params:
            raise RouteError(f"routing parameter {key!r} given twice in proxy username")
        params[key] = parts[i + 1]
        i += 2
    return name, params


def parse_route(params: dict[str, str]) -> Route:
    """Validated parameters -> Route; raises RouteError naming the bad part."""
    country = params.get("country")
    if country is not None and not _COUNTRY.match(country):
        raise RouteError(f"country={country!r}: expected a two-letter ISO code")
    session = params.get("session")
    if session is not None and not _SESSION.match(session):
        raise RouteError(f"session={session!r}: expected 1-64 letters, digits, '_' or '.'")
    protocol: ProxyProtocol | None = None
    if (value := params.get("protocol")) is not None:
        try:
            protocol = ProxyProtocol(value.lower())
        except ValueError:
            raise RouteError(f"protocol={value!r}: expected http, https, socks4 or socks5") from None
    anonymity: AnonymityLevel | None = None
    if (value := params.get("anonymity")) is not None:
        try:
            anonymity = AnonymityLevel(value.lower())
        except ValueError:
            raise RouteError(f"anonymity={value!r}: expected transparent, anonymous or elite") from None
    strict = False
    if (value := params.get("sessmode")) is not None:
        if value.lower() not in ("strict", "soft"):
            raise RouteError(f"sessmode={value!r}: expected strict or soft")
        strict = value.lower() == "strict"
    ttl: float | None = None
    if (value := params.get("sesstime")) is not None:
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= SESSTIME_MAX:
            raise RouteError(f"sesstime={value!r}: expected minutes, 1 to {SESSTIME_MAX}")
        ttl = int(value) * 60.0
    if session is None and (strict or ttl is not None or "sessmode" in params):
        raise RouteError("sessmode and sesstime need a session (session-ID)")
    return Route(
        protocol=protocol,
        country=country.upper() if country else None,
        anonymity=anonymity,
        session=session,
        strict=strict,
        session_ttl=ttl,
    )


def route_for(username: str | None, header_params: dict[str, str], *, with_name: bool) -> tuple[str | None, Route]:
    """The user name (when auth needs one) and the route, headers overriding the username."""
    name, params = split_username(username or "", with_name=with_name) if username is not None else (None, {})
    for word, value in header_params.items():
        key = ALIASES.get(word, word)
        if key not in PARAMS:
            raise RouteError(f"unknown header X-Proxy-Pool-{word.title()} (known: {', '.join(PARAMS)})")
        params[key] = value
    return name, parse_route(params)
