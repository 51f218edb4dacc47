"""Two live replicas never share a name (issue 22, finding 11): on one PostgreSQL database, a replica
holds its name (a session advisory lock) while it lives; the default name becomes unique, a given name
another live replica holds stops the start with one line, and a dead replica's name is free again."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import ConfigError
from gateway.app import ProxyPool
from tests.integration.conftest import PoolFactory, pool_settings

pytestmark = pytest.mark.timeout(90)
TOKEN = "replica-token-0123456789"


async def test_live_replicas_never_share_a_name(make_pool: PoolFactory, pg_url: str, tmp_path: Path) -> None:
    """Two replicas on 127.0.0.1:0 and 127.0.0.2:0 both default to HOST:0: the second takes the next free
    name; a third asking for the first's name is refused; once the first stops, its name is free."""
    storage = {"url": pg_url}
    first = await make_pool(storage=storage, admin={"token": TOKEN})
    second = await make_pool(storage=storage, admin={"token": TOKEN}, gateway={"listen": "127.0.0.2:0"})
    assert first.replica != second.replica
    assert second.replica.endswith(":127.0.0.2:0")
    taken = ProxyPool(
        pool_settings(tmp_path, storage=storage, admin={"token": TOKEN}), replica_name=first.replica
    )
    with pytest.raises(ConfigError, match="is held by a live replica on this database"):
        await taken.start()
    name = first.replica
    await first.stop()
    again = ProxyPool(pool_settings(tmp_path, storage=storage, admin={"token": TOKEN}), replica_name=name)
    await again.start()
    try:
        assert again.replica == name
    finally:
        await again.stop()
