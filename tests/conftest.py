"""Shared fixtures.  No test reaches beyond 127.0.0.0/8."""

from __future__ import annotations

import os

import pytest

# Never let a developer's environment or ./proxy-pool.toml leak into tests.
for _key in list(os.environ):
    if _key.startswith("PROXY_POOL_"):
        del os.environ[_key]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL, started once per session (skips saying why where it cannot run)."""
    from tests.support.postgres import missing_reason, running_server

    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session's PostgreSQL."""
    return pg_server.create_database()
