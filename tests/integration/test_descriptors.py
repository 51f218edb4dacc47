"""A `serve` with few descriptors (soft 128, hard 256) flooded with idle client connections, on real sockets:
the soft limit is raised to the hard one (said once), clients never take the reserve, so requests through
an upstream and the checker still work and no proxy is blamed for the process's own shortage."""

from __future__ import annotations

import asyncio
import contextlib
import resource

import pytest
from aiohttp.test_utils import TestServer

from tests.support.grade_proxies import Grade, start_grade_proxy
from tests.support.replicas import start_replica
from tests.support.waiting import across_processes, eventually

pytestmark = pytest.mark.timeout(120)

SOFT, HARD, FLOOD = 128, 256, 300


def few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD))


async def get_through(gateway: tuple[str, int], target: str) -> bytes:
    reader, writer = await asyncio.open_connection(*gateway)
    try:
        head = f"GET http://{target}/echo HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode())
        async with asyncio.timeout(20):
            return await reader.read()
    finally:
        writer.close()


async def test_a_flood_of_idle_clients_leaves_descriptors_for_the_checker_and_dials(
    tmp_path, origin: TestServer
) -> None:
    upstream = await start_grade_proxy(Grade.ELITE)
    listing = tmp_path / "list.txt"
    listing.write_text(upstream.url() + "\n")
    replica = await start_replica(
        str(tmp_path / "pool.db"), "fd", tmp_path, "--proxies", str(listing),
        env={"PROXY_POOL_CHECKER__CONCURRENCY": "4"}, preexec_fn=few_descriptors,
    )  # fmt: skip
    flood: list[asyncio.StreamWriter] = []
    try:

        async def active() -> bool:
            status, body = await replica.api("GET", "/api/proxies")
            return status == 200 and [p["status"] for p in body["proxies"]] == ["active"]

        await across_processes(active, "the upstream graded active")
        _, body = await replica.api("GET", "/api/proxies")
        proxy_id = body["proxies"][0]["id"]
        for _ in range(FLOOD):  # more idle clients (from another address) than the process has descriptors
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(*replica.gateway, local_addr=("127.0.0.3", 0))
                flood.append(writer)
        target = f"127.0.0.1:{origin.port}"
        for _ in range(3):  # dials through the upstream still work (an idle client makes room)
            answer = await get_through(replica.gateway, target)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]
        _, before = await replica.api("GET", f"/api/proxies/{proxy_id}/checks")
        assert (await replica.api("POST", f"/api/proxies/{proxy_id}/recheck"))[0] in (200, 202)

        async def rechecked() -> bool:
            _, checks = await replica.api("GET", f"/api/proxies/{proxy_id}/checks")
            return len(checks["checks"]) > len(before["checks"])

        await across_processes(rechecked, "a re-check during the flood")
        _, checks = await replica.api("GET", f"/api/proxies/{proxy_id}/checks")
        fresh = checks["checks"][: len(checks["checks"]) - len(before["checks"])]
        assert all(c["passed"] for c in fresh), fresh
        assert await active()
        raised = [line for line in replica.messages().splitlines() if "soft limit raised" in line]
        assert raised == [f"open files: soft limit raised from {SOFT} to {HARD} (the hard limit)"], raised
        assert "Too many open files" not in replica.messages()
    finally:
        for writer in flood:
            writer.close()
        await replica.stop()
        await upstream.stop()


SHORTAGE_SCRIPT = r"""
import asyncio, errno, json, os, socket
from gateway.proxy.accounting import Accounting
from gateway.proxy.connection import ConnectionPool
from gateway.proxy.dialing import Dialer
from gateway.proxy.upstream import UpstreamError, open_socks
from plugins import CheckContext
from plugins.builtin.checkers.tcp_connect import TcpConnectChecker
from pool.lifecycle import apply_run
from pool.models import Proxy, ProxyStatus, UpstreamURL
from pool.pipeline import run_checkers

class Told:
    reports = []
    def report(self, proxy, ok, target=None): self.reports.append((proxy.id, ok))
    def refused_tunnel(self, proxy): self.reports.append((proxy.id, "tunnel"))

async def main():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proxy = Proxy(id=1, upstream=UpstreamURL.parse(f"http://127.0.0.1:{port}"), status=ProxyStatus.ACTIVE)
    loop = asyncio.get_running_loop()
    dialer = Dialer(loop, ConnectionPool(), None, 5.0, 65536)
    told = Told()
    accounting = Accounting(told, None, False)
    hog = []
    try:
        while True:  # every descriptor taken: the process, not the proxy, is short
            hog.append(os.dup(listener.fileno()))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    run = await run_checkers([TcpConnectChecker(5.0)], proxy, CheckContext(http_client=None))
    apply_run(proxy, run.verdict)
    failures = []
    for dial in (lambda: dialer._tcp("127.0.0.1", port, "k", "http upstream"),
                 lambda: open_socks(UpstreamURL.parse(f"socks5://127.0.0.1:{port}"), "example.com", 80, 5.0)):
        try:
            await dial()
        except UpstreamError as exc:
            failures.append(exc.reason)
            accounting.report(proxy, False, exc)
    for fd in hog:
        os.close(fd)
    print(json.dumps({"verdict": run.verdict.passed, "skipped": [r.skipped for _, r in run.results],
                      "status": proxy.status.value, "failures": failures, "reports": told.reports}))

asyncio.run(main())
"""


async def test_a_local_shortage_is_no_verdict_on_a_proxy(tmp_path):
    """With every descriptor of the process taken, a check of a listening proxy and dials through it fail
    with EMFILE: the checker gives no verdict (the proxy stays active) and passive health tells the
    selector nothing; the failures are LocalShortage ("local_resources")."""
    import json
    import sys

    from tests.support.replicas import REPO

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SHORTAGE_SCRIPT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=REPO, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, HARD)),
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    found = json.loads(out.decode().strip().splitlines()[-1])
    assert found == {
        "verdict": None,
        "skipped": [True],
        "status": "active",
        "failures": ["local_resources"] * 2,
        "reports": [],
    }, found
