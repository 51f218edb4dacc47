"""Which answers are bans: ``gateway.retry_on_status`` and ``[[gateway.ban_rules]]``.

A status in ``retry_on_status`` is a ban from any site.  A ban rule names a site glob (matched against
the target's site, its registrable domain, and against the host itself), the statuses it applies to,
and optionally ``body_contains``: then the answer is a ban only when that text (case-insensitive) is
in its body, which is read whole first, up to ``SNIFF_MAX`` bytes (a longer answer is no captcha page
and goes on as it is).  A gzip or deflate body is inflated (bounded) before it is searched.
"""

from __future__ import annotations

import zlib
from fnmatch import fnmatchcase

from config.settings import GatewaySettings
from gateway.proxy import http1
from gateway.proxy.connection import SNIFF_MAX
from gateway.proxy.errors import BadResponse
from pool.sites import site_of

__all__ = ["BAN", "SNIFF_MAX", "BanRules"]

BAN = ()  # the verdict "a ban, whatever the body" (a tuple of needles is "read the body, then decide")


class BanRules:
    """The compiled rules; ``statuses`` is every status any of them may call a ban (a set lookup on the
    hot path: any other answer is never looked at twice)."""

    def __init__(self, gw: GatewaySettings) -> None:
        self.retry = frozenset(gw.retry_on_status)
        self.rules = [
            (
                rule.site.lower(),
                frozenset(rule.status),
                rule.body_contains.lower().encode() if rule.body_contains else None,
            )
            for rule in gw.ban_rules
        ]
        self.statuses = self.retry.union(*(statuses for _, statuses, _ in self.rules))

    def verdict(self, host: str, status: int) -> tuple[bytes, ...] | None:
        """``BAN``, the texts to look for in the body (read it first), or None: no ban."""
        if status in self.retry:
            return BAN
        needles: list[bytes] = []
        site: str | None = None
        for glob, statuses, needle in self.rules:
            if status not in statuses:
                continue
            if site is None:
                site = site_of(host)
            if fnmatchcase(site, glob) or fnmatchcase(host.lower(), glob):
                if needle is None:
                    return BAN
                needles.append(needle)
        return tuple(needles) or None

    @staticmethod
    def body_bans(needles: tuple[bytes, ...], body: bytes, resp: http1.ResponseHead) -> bool:
        """Whether a whole body (at most ``SNIFF_MAX`` bytes, as framed on the wire) holds a needle."""
        text = _content(body, resp).lower()
        return any(needle in text for needle in needles)


def _content(body: bytes, resp: http1.ResponseHead) -> bytes:
    """The body's content: chunk framing removed, gzip/deflate inflated (at most 4 x ``SNIFF_MAX``)."""
    if resp.chunked:
        tracker = http1.BodyTracker(http1.FramingKind.CHUNKED, 0)
        pieces: list[bytes] = []
        try:
            tracker.feed(body, collect=pieces)
        except BadResponse:  # malformed framing: search the bytes as they came
            pieces = [body]
        body = b"".join(pieces)
    coding = next((value.strip().lower() for name, value in resp.headers if name.lower() == "content-encoding"), "")
    if coding in ("gzip", "x-gzip", "deflate"):
        try:
            body = zlib.decompressobj(wbits=47 if coding != "deflate" else 15).decompress(body, 4 * SNIFF_MAX)
        except zlib.error:
            pass
    return body
