"""The interception CA from the outside: `proxy-pool ca` prints the certificate (never the key) and /ca.pem
serves the same certificate without a token; with interception off /ca.pem is a one-line 404."""

from __future__ import annotations

import logging
import subprocess
import sys

import aiohttp
import pytest

pytestmark = pytest.mark.timeout(60)


async def test_ca_pem_open_same_as_cli_and_never_the_key(make_pool, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    pool = await make_pool(admin={"token": "sekrit"}, gateway={"intercept_listen": "127.0.0.1:0"})
    host, port = pool.admin_address
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://{host}:{port}/ca.pem") as resp:
            assert resp.status == 200
            served = await resp.read()
        async with client.get(f"http://{host}:{port}/api/stats") as resp:
            assert resp.status == 401
    assert served.startswith(b"-----BEGIN CERTIFICATE-----") and b"PRIVATE" not in served
    db = pool.settings.storage.path
    done = subprocess.run([sys.executable, "-m", "gateway", "ca", "--db", db], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == served
    key = (tmp_path / "pool.db.ca-key.pem").read_bytes()
    assert b"PRIVATE KEY" in key and key not in done.stdout + done.stderr
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "HTTPS interception CA" in logged and "PRIVATE" not in logged
    assert "HTTPS interception port 127.0.0.1:%d" % pool.gateway.intercept_address[1] in logged
    body = key.split(b"\n")[1].decode()  # a line of the key's base64: in no log line either
    assert body not in logged


async def test_ca_pem_is_404_when_interception_is_off(make_pool):
    pool = await make_pool()
    host, port = pool.admin_address
    async with aiohttp.ClientSession() as client, client.get(f"http://{host}:{port}/ca.pem") as resp:
        assert resp.status == 404
        assert "intercept_listen" in (await resp.json())["error"]


def test_ca_command_unreadable_configured_ca_is_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "ca", "--db", str(tmp_path / "pool.db")],
        capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "PROXY_POOL_GATEWAY__INTERCEPT_CA": str(tmp_path / "nope.pem")},
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "cannot read" in done.stderr and "Traceback" not in done.stderr
