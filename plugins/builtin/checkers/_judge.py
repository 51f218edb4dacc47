"""Read a judge's answer and grade what it reveals; pure functions, no I/O.

Two formats are found in the wild:

- httpbin-style JSON (``/get?show_env=1``, the admin ``/judge``): ``{"origin": "a[, b]", "headers": {...}}``.
  ``origin`` may be a comma list when the judge sits behind its own balancer; the last entry is the
  peer the judge saw.
- azenv-style text, often wrapped in ``<pre>``: ``REMOTE_ADDR = 1.2.3.4`` and one ``HTTP_X_FOO = v``
  line per request header.

Genuine answers: every request a check sends to a judge carries a fresh unguessable token, in the
query (``pp_check=TOKEN``) and in a header (``X-Check-Token``).  A judge echoes both (httpbin in
``args`` and ``headers``, azenv in ``QUERY_STRING``/``REQUEST_URI`` and ``HTTP_X_CHECK_TOKEN``); an
answer that echoes neither was not written by the judge for this request (a proxy answering
itself with a canned page).

Grades: ``transparent`` when one of the host's real addresses is in ``origin`` or in a forwarding
header; ``anonymous`` when not, but a proxy header (Via, X-Forwarded-For, Forwarded, ...) is there;
``elite`` otherwise.  The Host header and the judge's own front end are never signs: a forwarding
header that carries only the exit address is what a judge's balancer adds about its peer.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from plugins import AnonymityLevel

__all__ = [
    "TOKEN_HEADER",
    "TOKEN_PARAM",
    "JudgeFormatError",
    "JudgeReply",
    "Verdict",
    "echoes_token",
    "grade",
    "new_token",
    "parse_judge_reply",
    "reported_addresses",
    "with_token",
]

TOKEN_PARAM = "pp_check"
TOKEN_HEADER = "X-Check-Token"


class JudgeFormatError(ValueError):
    """The body is neither httpbin-style JSON nor azenv-style text."""


@dataclass(frozen=True)
class JudgeReply:
    origin: list[str]  # addresses the judge reports for its peer, normalised, last = the peer
    headers: dict[str, str] = field(default_factory=dict)  # request headers as the judge saw them
    query: dict[str, list[str]] = field(default_factory=dict)  # query parameters as the judge saw them

    @property
    def exit_ip(self) -> str:
        return self.origin[-1]


@dataclass(frozen=True)
class Verdict:
    level: AnonymityLevel
    exit_ip: str
    signs: list[str]  # header names that give the proxy away, as the judge spelled them


# Headers whose mere presence says "a proxy was here".
SIGN_HEADERS = frozenset(
    {
        "via",
        "x-via",
        "forwarded",
        "forwarded-for",
        "forwarded-for-ip",
        "x-forwarded",
        "x-forwarded-for",
        "x-forwarded-for-ip",
        "x-real-ip",
        "client-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "x-originating-ip",
        "x-remote-ip",
        "x-remote-addr",
        "proxy-connection",
        "x-proxy-connection",
        "proxy-client-ip",
        "wl-proxy-client-ip",
        "x-proxy-id",
        "proxy-id",
        "x-bluecoat-via",
        "xroxy-connection",
        "coming-from",
        "x-coming-from",
        "pc-remote-addr",
        "http-client-ip",
    }
)

# Signs that name no address: always a sign, never scanned for the real address (Via lists proxies).
_ADDRESSLESS = frozenset(
    {
        "via",
        "x-via",
        "x-bluecoat-via",
        "proxy-connection",
        "x-proxy-connection",
        "xroxy-connection",
        "x-proxy-id",
        "proxy-id",
    }
)

# Added by the judge's own front end or describing the judge itself: never a sign.
_JUDGE_SIDE = frozenset(
    {
        "host",
        "referer",
        "origin",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-forwarded-server",
        "x-forwarded-ssl",
        "x-forwarded-scheme",
        "x-amzn-trace-id",
        "x-request-id",
        "x-request-start",
    }
)

# Other header names that may carry a client address (scanned for the real address only).
_ADDRESS_HINT = re.compile(r"forward|client|remote|real|originat|addr|(^|-)ip$")

_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:%\w+)?")
_TAG = re.compile(r"<[^>]*>")
_AZENV_LINE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s?(.*?)\s*$")


def normalise_ip(text: str) -> str | None:
    """``text`` as a canonical address (IPv4-mapped IPv6 becomes IPv4), or None."""
    candidate = text.strip().strip("\"'")
    if candidate.startswith("["):  # [v6]:port
        candidate = candidate[1:].partition("]")[0]
    if candidate.count(":") == 1 and "." in candidate:  # 1.2.3.4:5678
        candidate = candidate.partition(":")[0]
    try:
        addr = ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def addresses_in(value: str) -> list[str]:
    """Every IPv4/IPv6 address written somewhere in a header value."""
    found: list[str] = []
    for match in (*_IPV4.finditer(value), *_IPV6.finditer(value)):
        ip = normalise_ip(match.group(0))
        if ip is not None and ip not in found:
            found.append(ip)
    return found


def _origin_list(raw: str) -> list[str]:
    addrs = [ip for part in raw.split(",") if (ip := normalise_ip(part)) is not None]
    if not addrs:
        raise JudgeFormatError(f"judge origin {raw[:60]!r} holds no address")
    return addrs


def _parse_json(text: str) -> JudgeReply:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise JudgeFormatError(f"judge answered broken JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("origin"), str):
        raise JudgeFormatError("judge JSON has no 'origin' string")
    raw_headers = data.get("headers", {})
    if not isinstance(raw_headers, dict):
        raise JudgeFormatError("judge JSON 'headers' is not an object")
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        headers[str(name)] = str(value)
    query: dict[str, list[str]] = {}
    args = data.get("args", {})
    if isinstance(args, dict):
        for name, value in args.items():
            values = value if isinstance(value, list) else [value]
            query[str(name)] = [str(v) for v in values]
    return JudgeReply(_origin_list(data["origin"]), headers, query)


def _header_name(env_key: str) -> str:
    """``HTTP_X_FORWARDED_FOR`` -> ``X-Forwarded-For``."""
    return "-".join(part.capitalize() for part in env_key.removeprefix("HTTP_").split("_"))


def _parse_azenv(text: str) -> JudgeReply:
    remote: str | None = None
    headers: dict[str, str] = {}
    query: dict[str, list[str]] = {}
    for line in _TAG.sub("\n", text).splitlines():
        match = _AZENV_LINE.match(line)
        if match is None:
            continue
        key, value = match.groups()
        if key == "REMOTE_ADDR":
            remote = value
        elif key.startswith("HTTP_") and len(key) > 5:
            headers[_header_name(key)] = value
        elif key in ("QUERY_STRING", "REQUEST_URI"):
            raw = value.partition("?")[2] if key == "REQUEST_URI" else value
            for name, values in parse_qs(raw, keep_blank_values=True).items():
                query.setdefault(name, []).extend(values)
    if remote is None:
        raise JudgeFormatError("judge answered neither JSON with 'origin' nor a REMOTE_ADDR line")
    return JudgeReply(_origin_list(remote), headers, query)


def parse_judge_reply(body: bytes) -> JudgeReply:
    """Parse either judge format; raises JudgeFormatError for anything else."""
    text = body.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        return _parse_json(text)
    return _parse_azenv(text)


def new_token() -> str:
    """A fresh token for one judge request: 128 random bits, URL-safe (no escaping anywhere)."""
    return secrets.token_urlsafe(16)


def with_token(url: str, token: str) -> str:
    """``url`` with ``pp_check=TOKEN`` added to its query (before any fragment)."""
    base, _, fragment = url.partition("#")
    parts = urlsplit(base)
    joiner = "&" if parts.query else ("" if base.endswith("?") else "?")
    return f"{base}{joiner}{TOKEN_PARAM}={token}" + (f"#{fragment}" if fragment else "")


def echoes_token(reply: JudgeReply, token: str) -> bool:
    """True only when the judge reflected exactly ``token``: as the query parameter or the header."""
    if not token:
        return False
    if token in reply.query.get(TOKEN_PARAM, ()):
        return True
    wanted = TOKEN_HEADER.lower()
    return any(name.lower() == wanted and value.strip() == token for name, value in reply.headers.items())


def _is_forwarding(name: str) -> bool:
    return name in SIGN_HEADERS or (name not in _JUDGE_SIDE and _ADDRESS_HINT.search(name) is not None)


def _forwarded_for(value: str) -> list[str]:
    """Only the ``for=`` parameters of RFC 7239 ``Forwarded`` name the client (``by=`` is the proxy)."""
    out: list[str] = []
    for match in re.finditer(r"for\s*=\s*(\"[^\"]*\"|[^;,\s]+)", value, re.IGNORECASE):
        out.extend(addresses_in(match.group(1).strip('"')))
    return out


def reported_addresses(reply: JudgeReply) -> set[str]:
    """Every address a judge reported: its ``origin`` list and the addresses in forwarding headers."""
    found = set(reply.origin)
    for name, value in reply.headers.items():
        low = name.lower()
        if _is_forwarding(low) and low not in _ADDRESSLESS:
            found.update(_forwarded_for(value) if low == "forwarded" else addresses_in(value))
    return found


def grade(reply: JudgeReply, real_ips: Collection[str]) -> Verdict:
    """Decide the anonymity level of one proxied answer given the host's real addresses.

    The exit is the last ``origin`` entry that is not one of the host's own: a judge that reports a
    forwarding header as its peer (httpbin behind a trusting front) names the client a transparent
    proxy forwarded, which is the transparent sign, not the exit."""
    real = {ip for raw in real_ips if (ip := normalise_ip(raw)) is not None}
    exit_ip = next((ip for ip in reversed(reply.origin) if ip not in real), reply.exit_ip)
    transparent = any(ip in real for ip in reply.origin)
    signs: list[str] = []
    for name, value in reply.headers.items():
        low = name.lower()
        if not _is_forwarding(low):
            continue
        if low in _ADDRESSLESS:
            signs.append(name)
            continue
        carried = _forwarded_for(value) if low == "forwarded" else addresses_in(value)
        if real.intersection(carried):
            transparent = True
        if low not in SIGN_HEADERS:
            continue
        if carried and all(ip == exit_ip for ip in carried):
            continue  # the judge's own balancer recording its peer
        signs.append(name)
    if transparent:
        level = AnonymityLevel.TRANSPARENT
    elif signs:
        level = AnonymityLevel.ANONYMOUS
    else:
        level = AnonymityLevel.ELITE
    return Verdict(level, exit_ip, signs)
