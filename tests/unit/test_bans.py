"""gateway.proxy.bans: which answers are bans (retry_on_status, [[gateway.ban_rules]])."""

from __future__ import annotations

import gzip
import zlib

from config import Settings
from gateway.proxy import http1
from gateway.proxy.bans import BAN, BanRules


def rules(**gateway) -> BanRules:
    return BanRules(Settings(gateway=gateway).gateway)


def head(*fields: str) -> http1.ResponseHead:
    return http1.parse_response_head(("HTTP/1.1 200 OK\r\n" + "".join(f"{f}\r\n" for f in fields) + "\r\n").encode())


def test_statuses_and_site_globs():
    """retry_on_status bans everywhere; a rule's glob matches the site (registrable domain) or the host."""
    r = rules(
        retry_on_status=[429],
        ban_rules=[
            {"site": "example.co.uk", "status": [403]},
            {"site": "*.shop.test", "status": [200], "body_contains": "Captcha"},
        ],
    )
    assert r.statuses == {429, 403, 200}
    assert r.verdict("anything.test", 429) is BAN
    assert r.verdict("www.example.co.uk", 403) is BAN  # by its site
    assert r.verdict("example.org", 403) is None
    assert r.verdict("eu.shop.test", 200) == (b"captcha",)  # by its host; the body decides
    assert r.verdict("shop.test", 200) is None  # neither its site nor its host matches *.shop.test


def test_body_is_read_as_content():
    """Chunk framing removed, gzip and deflate inflated, compared case-insensitively."""
    needles = (b"captcha",)
    page = b"<p>Solve the CAPTCHA</p>"
    assert BanRules.body_bans(needles, page, head("Content-Length: 24"))
    assert BanRules.body_bans(needles, b"7\r\n<p>Solv\r\n11\r\ne the CAPTCHA</p>\r\n0\r\n\r\n", head("Transfer-Encoding: chunked"))
    assert BanRules.body_bans(needles, gzip.compress(page), head("Content-Encoding: gzip"))
    assert BanRules.body_bans(needles, zlib.compress(page), head("Content-Encoding: deflate"))
    assert not BanRules.body_bans(needles, b"<p>the real page</p>", head())
    assert not BanRules.body_bans(needles, b"not gzip at all", head("Content-Encoding: gzip"))
