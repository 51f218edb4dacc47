"""The start line names the event loop, the pool's size and the sources that will be scraped."""

from __future__ import annotations

import logging

import pytest

pytestmark = pytest.mark.timeout(60)


async def test_start_line_names_loop_and_pool(make_pool, upstreams, caplog):
    caplog.set_level(logging.INFO, logger="proxy_pool")
    await make_pool([upstreams[0].url("http")])
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("proxy-pool serving")]
    assert "event loop asyncio" in line and "pool of 0 proxies (0 active)" in line and "1 sources" in line
