"""The canonical form of a target host: read it the way the software behind an upstream will.

An upstream proxy (and the C library under it) does not read ``2130706433``, ``0x7f000001``,
``127.1``, ``0177.0.0.1``, ``127.0.0.%31`` or ``[::ffff:127.0.0.1]`` as names: it reads all of them as
127.0.0.1.  A loop or private-network check that compares strings lets them all through.  So every
target is first put in the one form the WHATWG URL host parser gives (which also covers ``inet_aton``):

- ``[...]``: an IPv6 literal (no zone id); an IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible
  (``::a.b.c.d``, except ``::`` and ``::1``), SIIT (``::ffff:0:a.b.c.d``) or NAT64 (``64:ff9b::a.b.c.d``)
  address is its IPv4 address, since that is where a connection to it goes;
- otherwise percent-decoding, then UTS 46 mapping for a name that is not ASCII (full-width digits, ``。``,
  ``ｌｏｃａｌｈｏｓｔ``), lower case;
- a host whose last label is a number (decimal, ``0x`` hex, ``0`` octal) is an IPv4 address of 1 to 4
  parts (``127.1`` = 127.0.0.1, ``2130706433``, ``0x7f.1``); a trailing dot is dropped there;
- anything left must be a DNS name (labels of letters, digits, ``-`` and ``_``, 1-63 bytes, 253 in all).

Examples::

    >>> canonical_host("0x7f000001"), canonical_host("127.1"), canonical_host("::ffff:7f00:1")
    ('127.0.0.1', '127.0.0.1', '127.0.0.1')
    >>> canonical_host("Example.COM"), canonical_host("bücher.example")
    ('example.com', 'xn--bcher-kva.example')

Anything else raises ``BadRequest`` (400) naming the host.  Pure: no I/O, no DNS.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import unquote_to_bytes

import idna

from gateway.proxy.errors import BadRequest

__all__ = ["canonical_host", "parse_ipv4"]

# The common case, settled by one regex: a lower-case ASCII name whose last label has a letter that
# cannot make it a number (so neither an IPv4 form nor anything percent-encoded or mapped).
_PLAIN_NAME = re.compile(r"(?:[a-z0-9_-]{1,63}\.)*(?=[a-z0-9_-]*[g-wyz_-])[a-z0-9_-]{1,63}\.?")
_DOTTED_QUAD = re.compile(r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# WHATWG "forbidden domain code point": forbidden host code points, C0 controls, % and DEL
_FORBIDDEN = re.compile(r"[\x00-\x20#%/:<>?@\[\\\]^|\x7f]")
_HEX = frozenset("0123456789abcdefABCDEF")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")


@lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """The host as an upstream reads it: an IPv4 dotted quad, a compressed IPv6 literal (no brackets)
    or a lower-case ASCII DNS name.  Raises ``BadRequest`` (400) for anything that is none of these.
    Cached: a gateway sees the same few thousand hosts again and again, and a hit costs one lookup
    instead of two regexes (a refused host is not cached and is checked again every time)."""
    if len(host) <= 253 and (_PLAIN_NAME.fullmatch(host) or _DOTTED_QUAD.fullmatch(host)):
        return host
    return _canonical(host)


def _canonical(host: str) -> str:
    if not host:
        raise BadRequest(400, "empty target host")
    if host[0] == "[" or ":" in host:
        return _ipv6(host[1:-1] if host[0] == "[" and host[-1] == "]" else host)
    try:
        domain = unquote_to_bytes(host).decode("utf-8") if "%" in host else host
    except UnicodeDecodeError:
        raise BadRequest(400, f"target host {_shown(host)} is not valid UTF-8 once percent-decoded") from None
    ascii_domain = _to_ascii(domain, host)
    if _FORBIDDEN.search(ascii_domain):
        raise BadRequest(400, f"target host {_shown(host)} has a character no host name can have")
    if _ends_in_number(ascii_domain):
        address = parse_ipv4(ascii_domain)
        if address is None:
            raise BadRequest(400, f"target host {_shown(host)} is neither an IPv4 address nor a DNS name")
        return str(address)
    name = ascii_domain[:-1] if ascii_domain.endswith(".") else ascii_domain
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise BadRequest(400, f"target host {_shown(host)} is not a valid DNS name")
    return ascii_domain


def _ipv6(literal: str) -> str:
    if "%" in literal:
        raise BadRequest(400, f"IPv6 zone identifier in target host {_shown(literal)} is not allowed")
    try:
        address = ipaddress.IPv6Address(literal)
    except ValueError:
        raise BadRequest(400, f"invalid IPv6 address {_shown(literal)}") from None
    embedded = _embedded_ipv4(address)
    return str(embedded) if embedded is not None else str(address)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a connection to ``address`` reaches, when it is one in IPv6 clothing."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    value = int(address)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks)
        return ipaddress.IPv4Address(value)
    if address in _SIIT or address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return None


def _to_ascii(domain: str, original: str) -> str:
    """UTS 46 ToASCII as WHATWG asks (not strict): ASCII only lower-cased, other labels mapped and punycoded."""
    if domain.isascii():
        return domain.lower()
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
        return ".".join(
            label if label.isascii() else idna.alabel(label).decode("ascii") for label in mapped.split(".")
        )
    except (idna.IDNAError, UnicodeError, ValueError):
        raise BadRequest(400, f"target host {_shown(original)} is not a valid international domain name") from None


def _ends_in_number(domain: str) -> bool:
    """WHATWG "ends in a number": the last label (a trailing empty one dropped) is digits, or a valid
    IPv4 number (``0x``-hex: ``0x``, ``0x7f``)."""
    parts = domain.split(".")
    if parts[-1] == "":
        if len(parts) == 1:
            return False
        parts.pop()
    last = parts[-1]
    if last and last.isdigit() and last.isascii():
        return True
    return _ipv4_number(last) is not None


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 address: decimal, ``0x`` hex (``0x`` alone is 0), or octal with a leading 0."""
    if not part:
        return None
    radix = 10
    if part[:2] in ("0x", "0X"):
        part, radix = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, radix = part[1:], 8
    if not part:
        return 0
    if not part.isascii() or (radix == 16 and not _HEX.issuperset(part)) or (radix != 16 and not part.isdigit()):
        return None
    if radix == 8 and ("8" in part or "9" in part):
        return None
    return int(part, radix)


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The WHATWG IPv4 parser (a superset of ``inet_aton``): 1 to 4 parts, the last filling the rest."""
    parts = text.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if len(parts) > 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    *head, last = numbers  # type: ignore[misc]
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _shown(host: str) -> str:
    return repr(host if len(host) <= 80 else host[:77] + "...")
