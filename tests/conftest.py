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
