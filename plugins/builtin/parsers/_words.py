"""Protocol names as proxy sites write them, shared by the table and JSON parsers.

On proxy list sites "HTTPS" (or an "SSL"/"HTTPS: yes" flag) means an HTTP proxy that can tunnel HTTPS
with CONNECT, not a proxy spoken to over TLS: such an entry is ``http`` (``https://`` in a proxy URL
means TLS to the proxy itself, and those proxies would all fail the TLS handshake). An explicit
``https://`` URL in a list keeps its scheme.  The leading underscore keeps plugin discovery away.
"""

from __future__ import annotations

import re

from plugins import ProxyProtocol

__all__ = ["protocols_in_text"]

_PROTOCOL_WORDS = re.compile(r"socks\s*([45])(?:\s*/\s*([45]))?|https?")


def protocols_in_text(text: str, found: list[ProxyProtocol] | None = None) -> list[ProxyProtocol]:
    """Each protocol named in ``text``: ``"HTTP, HTTPS"`` -> http; ``"SOCKS4/5"`` -> socks4, socks5."""
    found = [] if found is None else found
    for match in _PROTOCOL_WORDS.finditer(text.lower()):
        if match[1]:  # "socks4", "socks 5", "socks4/5"
            names = [f"socks{match[1]}"] + ([f"socks{match[2]}"] if match[2] else [])
        else:  # "http" or "https": both an HTTP proxy (see the module docstring)
            names = ["http"]
        for name in names:
            protocol = ProxyProtocol(name)
            if protocol not in found:
                found.append(protocol)
    return found
