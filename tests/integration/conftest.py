"""Fixtures that start real servers on loopback: upstream proxies, an origin, a whole proxy-pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from config import Settings
from gateway.app import ProxyPool
from tests.support.judges import Judge, running_judge
from tests.support.upstreams import Upstream, origin_app, pproxy_upstreams


@pytest.fixture
async def origin() -> AsyncIterator[TestServer]:
    server = TestServer(origin_app(), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session (checkers take one, as the pipeline's)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def judge() -> AsyncIterator[Judge]:
    """A real judge (echoes what a request carried) on loopback."""
    async with running_judge() as j:
        yield j


@pytest.fixture
async def upstreams() -> AsyncIterator[list[Upstream]]:
    async with pproxy_upstreams(3) as ups:
        yield ups


def pool_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "pool.db")},
        "gateway": {"listen": "127.0.0.1:0", "connect_timeout": 3.0, "drain_timeout": 2.0},
        "admin": {"listen": "127.0.0.1:0"},
        "checker": {"judges": [], "timeout": 3.0, "concurrency": 20},
        "default_sources": False,
        "plugins": {"contrib_dir": str(tmp_path / "no-contrib")},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return Settings(**base)


PoolFactory = Callable[..., Awaitable[ProxyPool]]


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[PoolFactory]:
    started: list[ProxyPool] = []

    async def factory(proxy_urls: list[str] | None = None, **overrides: Any) -> ProxyPool:
        extra: list[str] = []
        if proxy_urls is not None:
            listing = tmp_path / f"list{len(started)}.txt"
            listing.write_text("\n".join(proxy_urls) + "\n")
            extra.append(str(listing))
        settings = pool_settings(tmp_path, **overrides)
        if "storage" not in overrides and any(p.started and p.settings.storage.path == settings.storage.path for p in started):
            # one serve per database (its lock): a second pool running beside the first gets its own
            settings = pool_settings(tmp_path, storage={"path": str(tmp_path / f"pool{len(started)}.db")}, **overrides)
        pool = ProxyPool(settings, extra_sources=extra)
        await pool.start()
        started.append(pool)
        return pool

    yield factory
    for pool in reversed(started):
        await pool.stop()
