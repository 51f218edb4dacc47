"""Read a judge's answer and grade what it reveals; pure functions, no I/O.

Two formats are found in the wild:

- httpbin-style JSON (``/get?show_env=1``, the admin ``/judge``): ``{"origin": "a[, b]", "headers": {...}}``.
  ``origin`` may be a comma list when the judge sits behind its own balancer; the last entry is the
  peer the judge saw.
- azenv-style text, often wrapped in ``<pre>``: ``REMOTE_ADDR = 1.2.3.4`` and one ``HTTP_X_FOO = v``
  line per request header.

Grades: ``transparent`` when one of the host's real addresses is in ``origin`` or in a forwarding
header; ``anonymous`` when not, but a proxy header (Via, X-Forwarded-For, Forwarded, ...) is there;
``elite`` otherwise.  The Host header and the judge's own front end are never signs: a forwarding
header that carries only the exit address is what a judge's balancer adds about its peer.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from plugins import AnonymityLevel

__all__ = ["JudgeFormatError", "JudgeReply", "Verdict", "grade", "parse_judge_reply"]


class JudgeFormatError(ValueError):
    """The body is neither httpbin-style JSON nor azenv-style text."""


@dataclass(frozen=True)
class JudgeReply:
    origin: list[str]  # addresses the judge reports for its peer, normalised, last = the peer
    headers: dict[str, str] = field(default_factory=dict)  # request headers as the judge saw them

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
    return JudgeReply(_origin_list(data["origin"]), headers)


def _header_name(env_key: str) -> str:
    """``HTTP_X_FORWARDED_FOR`` -> ``X-Forwarded-For``."""
    return "-".join(part.capitalize() for part in env_key.removeprefix("HTTP_").split("_"))


def _parse_azenv(text: str) -> JudgeReply:
    remote: str | None = None
    headers: dict[str, str] = {}
    for line in _TAG.sub("\n", text).splitlines():
        match = _AZENV_LINE.match(line)
        if match is None:
            continue
        key, value = match.groups()
        if key == "REMOTE_ADDR":
            remote = value
        elif key.startswith("HTTP_") and len(key) > 5:
            headers[_header_name(key)] = value
    if remote is None:
        raise JudgeFormatError("judge answered neither JSON with 'origin' nor a REMOTE_ADDR line")
    return JudgeReply(_origin_list(remote), headers)


def parse_judge_reply(body: bytes) -> JudgeReply:
    """Parse either judge format; raises JudgeFormatError for anything else."""
    text = body.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        return _parse_json(text)
    return _parse_azenv(text)


def _is_forwarding(name: str) -> bool:
    return name in SIGN_HEADERS or (name not in _JUDGE_SIDE and _ADDRESS_HINT.search(name) is not None)


def _forwarded_for(value: str) -> list[str]:
    """Only the ``for=`` parameters of RFC 7239 ``Forwarded`` name the client (``by=`` is the proxy)."""
    out: list[str] = []
    for match in re.finditer(r"for\s*=\s*(\"[^\"]*\"|[^;,\s]+)", value, re.IGNORECASE):
        out.extend(addresses_in(match.group(1).strip('"')))
    return out


def grade(reply: JudgeReply, real_ips: Collection[str]) -> Verdict:
    """Decide the anonymity level of one proxied answer given the host's real addresses."""
    real = {ip for raw in real_ips if (ip := normalise_ip(raw)) is not None}
    exit_ip = reply.exit_ip
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
