"""Routing parameters from the proxy username and ``X-Proxy-Pool-*`` headers.  Pure: no I/O.

    [NAME][-country-CC][-session-ID][-protocol-P][-anonymity-A]

``alice-country-de-session-x1`` is user ``alice`` asking for a German exit on sticky session
``x1``.  With ``auth = "none"`` there is no NAME: ``country-de`` alone.  A header wins over the same
parameter in the username.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from gateway.proxy.errors import BadRequest
from pool.models import AnonymityLevel, ProxyProtocol
from pool.selector import Route

__all__ = ["Credentials", "RouteError", "parse_proxy_authorization", "parse_route", "split_username"]

PARAMS = ("country", "session", "protocol", "anonymity")
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


def split_username(username: str, *, with_name: bool) -> tuple[str | None, dict[str, str]]:
    """``alice-country-de`` -> ("alice", {"country": "de"}); raises RouteError on a bad part."""
    parts = username.split("-") if username else []
    name: str | None = None
    if with_name:
        if not parts or not parts[0]:
            raise RouteError("proxy username is empty")
        if parts[0] in PARAMS:
            raise RouteError(f"proxy username must start with the user name, got parameter {parts[0]!r}")
        name, parts = parts[0], parts[1:]
    elif parts and parts[0] not in PARAMS:
        # auth = none: a leading name is tolerated (clients often send one) and ignored
        parts = parts[1:]
    params: dict[str, str] = {}
    i = 0
    while i < len(parts):
        key = parts[i]
        if key not in PARAMS:
            raise RouteError(f"unknown routing parameter {key!r} in proxy username (known: {', '.join(PARAMS)})")
        if i + 1 >= len(parts) or not parts[i + 1]:
            raise RouteError(f"routing parameter {key!r} in proxy username has no value")
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
    return Route(protocol=protocol, country=country.upper() if country else None, anonymity=anonymity, session=session)


def route_for(username: str | None, header_params: dict[str, str], *, with_name: bool) -> tuple[str | None, Route]:
    """The user name (when auth needs one) and the route, headers overriding the username."""
    name, params = split_username(username or "", with_name=with_name) if username is not None else (None, {})
    for key, value in header_params.items():
        if key not in PARAMS:
            raise RouteError(f"unknown header X-Proxy-Pool-{key.title()} (known: {', '.join(PARAMS)})")
        params[key] = value
    return name, parse_route(params)
