"""The checker pipeline and the lifecycle it drives, with real proxies, judges and a real store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from config import Settings
from plugins import CheckContext, CheckResult
from plugins.registry import PluginRegistry
from pool.models import AnonymityLevel, Event, Proxy, ProxyStatus, UpstreamURL
from plugins.health import PluginHealth
from pool.pipeline import Pipeline, PoolLowWatch, run_checkers
from pool.selector import Selector
from pool.store import SqliteStore
from pool.tasks import spawn
from tests.support.grade_proxies import black_hole, start_grade_proxy
from tests.support.judges import running_judge
from tests.support.upstreams import closed_port
from tests.support.admin import admin_session

pytestmark = pytest.mark.timeout(60)


class FakeChecker:
    """A checker plugin with a scripted answer (the pipeline's own logic is what is under test)."""

    def __init__(self, name: str, stage: int, answer: CheckResult | Exception, priority: int = 0) -> None:
        self.name = name
        self.stage = stage
        self.priority = priority
        self.timeout = 1.0
        self.answer = answer
        self.calls = 0

    async def check(self, proxy: Proxy, context: CheckContext) -> CheckResult:
        self.calls += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def should_skip(self, proxy: Proxy) -> bool:
        return False


def proxy(n: int = 1) -> Proxy:
    return Proxy(id=n, upstream=UpstreamURL.parse(f"http://127.0.0.1:{1000 + n}"))


async def test_stages_stop_at_first_failure():
    """Stage 2 never runs after a failing stage 1; every result of the stages that ran is kept."""
    ok = FakeChecker("a", 1, CheckResult(True, "ok"))
    bad = FakeChecker("b", 1, CheckResult(False, "nope"))
    later = FakeChecker("c", 2, CheckResult(True, "ok"))
    async with aiohttp.ClientSession() as session:
        run = await run_checkers([ok, bad, later], proxy(), CheckContext(http_client=session))
    assert later.calls == 0
    assert [(c.name, r.passed) for c, r in run.results] == [("a", True), ("b", False)]
    assert run.verdict.passed is False and run.verdict.failed_check == "b"


async def test_a_crashing_checker_is_no_verdict_and_a_slow_one_fails():
    """A checker that raises has a bug: no verdict (the reason is logged); one that overruns its timeout
    is a failed check; neither stops the pipeline."""
    crash = FakeChecker("crash", 1, RuntimeError("boom"))

    class Slow(FakeChecker):
        async def check(self, proxy, context):
            await asyncio.Event().wait()

    slow = Slow("slow", 1, CheckResult(True, ""))
    slow.timeout = 0.05
    health = PluginHealth()
    async with aiohttp.ClientSession() as session:
        alone = await run_checkers([crash], proxy(), CheckContext(http_client=session), health=health)
        run = await run_checkers([crash, slow], proxy(), CheckContext(http_client=session), health=health)
    assert alone.verdict.passed is None and "boom" in alone.results[0][1].detail
    details = {c.name: r.detail for c, r in run.results}
    assert "boom" in details["crash"] and "timed out" in details["slow"]
    assert run.verdict.passed is False and run.verdict.failed_check == "slow"
    assert health.errors == {"crash": 2}


async def test_skipped_result_gives_no_verdict():
    """A check that cannot judge (every judge down) changes no state."""
    skip = FakeChecker("judge", 2, CheckResult(False, "no healthy judge", skipped=True))
    async with aiohttp.ClientSession() as session:
        run = await run_checkers([FakeChecker("tcp", 1, CheckResult(True, "")), skip], proxy(), CheckContext(http_client=session))
    assert run.verdict.passed is None


async def test_real_pipeline_grades_and_logs(tmp_path):
    """Real proxies of each grade through the built-in checkers; results land in the store's check log."""
    store = await SqliteStore.open(tmp_path / "p.db")
    from gateway.app import open_registry

    async with running_judge() as judge:
        settings = Settings(
            checker={"judges": [judge.json_url], "timeout": 2.0, "concurrency": 10},
            plugins={"contrib_dir": str(tmp_path / "none")},
        )
        registry = await open_registry(settings)
        selector = Selector()
        grades = [await start_grade_proxy(g, host=f"127.0.0.{i + 2}") for i, g in enumerate(("transparent", "anonymous", "elite"))]
        try:
            async with black_hole("127.0.0.9") as hole:
                urls = [g.url() for g in grades] + [hole.url(), f"http://127.0.0.8:{closed_port('127.0.0.8')}"]
                result = await store.upsert_proxies(None, [UpstreamURL.parse(u) for u in urls])
                pipeline = Pipeline(settings, registry, store, selector)
                await pipeline.start()
                pipeline.submit(result.new)
                await pipeline.wait_idle()
                await pipeline.stop()
        finally:
            for g in grades:
                await g.stop()
    proxies = {p.host: p for p in await store.all_proxies()}
    assert proxies["127.0.0.2"].anonymity is AnonymityLevel.TRANSPARENT
    assert proxies["127.0.0.3"].anonymity is AnonymityLevel.ANONYMOUS
    assert proxies["127.0.0.4"].anonymity is AnonymityLevel.ELITE
    assert all(proxies[h].status is ProxyStatus.ACTIVE for h in ("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    assert proxies["127.0.0.4"].exit_ip == "127.0.0.4"
    assert proxies["127.0.0.9"].status is ProxyStatus.DEAD
    assert proxies["127.0.0.8"].status is ProxyStatus.DEAD
    assert selector.active_count == 3
    checks = await store.get_checks(proxies["127.0.0.8"].id)
    assert checks and checks[0].checker == "tcp_connect" and not checks[0].passed
    good = await store.get_checks(proxies["127.0.0.4"].id)
    assert {c.checker for c in good} >= {"tcp_connect", "http_anonymity"}
    await store.close()


def test_pool_low_fires_once_per_crossing():
    """proxy.pool_low once when falling below, again only after recovering."""
    fired: list[dict] = []
    watch = PoolLowWatch(3, lambda e: fired.append(e.payload), initial=5)
    for count in (4, 3, 2, 1, 0, 2):
        watch.observe(count)
    assert fired == [{"active_count": 2, "threshold": 3}]
    watch.observe(3)
    watch.observe(2)
    assert len(fired) == 2


async def test_passive_health_benches_then_check_restores(make_pool, upstreams, origin):
    """The gateway's real failures bench a proxy before any re-check; a passing check restores it."""
    pool = await make_pool([upstreams[0].url(), upstreams[1].url()], pool={"passive_failure_limit": 2})
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    victim = next(p for p in pool.selector.proxies() if p.host == upstreams[0].host)
    for _ in range(2):
        pool.selector.report(victim, ok=False)
    assert victim.id in pool.selector.benched
    assert pool.selector.active_count == 1
    # benching queued a re-check; the upstream is fine, so it comes back
    await pool.wait_until(lambda: pool.selector.active_count == 2)
    assert victim.id not in pool.selector.benched


async def test_pool_low_event_reaches_a_notifier(make_pool, upstreams):
    """When checks kill proxies below the threshold, proxy.pool_low is emitted once."""
    pool = await make_pool([u.url() for u in upstreams], pool={"low_threshold": 3})
    await pool.wait_until(lambda: pool.selector.active_count == 3)
    events: list[Event] = []
    pool.events.add_listener(events.append)
    await upstreams[0].stop()
    await upstreams[1].stop()
    victims = [p for p in pool.selector.proxies() if p.host in (upstreams[0].host, upstreams[1].host)]
    pool.gateway.close_idle_upstreams()
    pool.pipeline.submit(victims)
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    await pool.pipeline.wait_idle()
    lows = [e for e in events if e.type == "proxy.pool_low"]
    assert len(lows) == 1
    assert lows[0].payload == {"active_count": 2, "threshold": 3}


async def test_checks_api_and_proxy_figures(make_pool, upstreams):
    """/api/proxies shows the latest figures; /api/proxies/{id}/checks the log, newest first; 404 unknown."""
    pool = await make_pool([upstreams[0].url()])
    await pool.wait_until(lambda: pool.selector.active_count == 1)
    admin = "http://%s:%d" % pool.admin_address
    async with admin_session(pool) as client:
        async with client.get(f"{admin}/api/proxies?status=active") as resp:
            body = await resp.json()
        assert body["total"] == 1
        item = body["proxies"][0]
        assert item["status"] == "active" and item["latency_ms"] is not None and item["success_ratio"] == 1.0
        async with client.get(f"{admin}/api/proxies/{item['id']}/checks") as resp:
            checks = (await resp.json())["checks"]
        assert checks[0]["at"] >= checks[-1]["at"]
        assert {c["checker"] for c in checks} >= {"tcp_connect", "http_anonymity"}
        async with client.get(f"{admin}/api/proxies/999999/checks") as resp:
            assert resp.status == 404
        async with client.get(f"{admin}/api/proxies?status=bogus") as resp:
            assert resp.status == 400
            assert "status" in (await resp.json())["error"]


async def test_dead_proxy_backoff_and_removal(tmp_path):
    """Dead proxies are re-checked with growing back-off and removed after remove_dead_after."""
    from pool.lifecycle import next_check_at, should_remove

    settings = Settings(checker={"dead_backoff": 60, "dead_backoff_max": 600, "remove_dead_after": 3600})
    p = proxy()
    now = datetime.now(UTC)
    p.status, p.last_checked, p.dead_since = ProxyStatus.DEAD, now, now
    waits = []
    for failures in (1, 2, 3, 4, 5, 6):
        p.consecutive_failures = failures
        waits.append((next_check_at(p, settings.checker) - now).total_seconds())
    assert waits == [60, 120, 240, 480, 600, 600]
    assert not should_remove(p, settings.checker, now + timedelta(seconds=3599))
    assert should_remove(p, settings.checker, now + timedelta(seconds=3600))


@pytest.mark.timeout(90)
def test_check_command_json(tmp_path):
    """`proxy-pool check` runs the pipeline once and prints one JSON row per proxy, credentials masked."""
    import threading

    from tests.support.upstreams import start_pproxy

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict = {}

    def serve() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            box["up"] = await start_pproxy("127.0.0.5")
            ready.set()
            box["stop"] = asyncio.Event()
            await box["stop"].wait()
            await box["up"].stop()

        loop.run_until_complete(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        up = box["up"]
        dead = f"socks5://user:hunter2@127.0.0.6:{closed_port('127.0.0.6')}"
        proc = subprocess.run(
            [sys.executable, "-m", "gateway", "check", "--format", "json", up.url(), up.url("socks5"), dead],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            # no public judges (no DNS, no internet): `check` judges loopback proxies itself
            env={**os.environ, "PROXY_POOL_CHECKER__JUDGES": "[]"},
        )
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["status"] for r in rows] == ["active", "active", "dead"]
    assert rows[0]["exit_ip"] == "127.0.0.5" and rows[0]["anonymity"] == "elite"
    assert rows[2]["proxy"] == f"socks5://user:***@127.0.0.6:{dead.rsplit(':', 1)[1]}"
    assert rows[2]["failed_check"] == "tcp_connect" and rows[2]["detail"]
    assert "hunter2" not in proc.stdout + proc.stderr
    assert set(rows[0]) == {
        "proxy", "status", "protocol", "latency_ms", "anonymity", "exit_ip", "country", "failed_check", "detail"
    }


def test_check_command_bad_input_exits_2(tmp_path):
    """A malformed proxy URL is one line on stderr and exit 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "ftp://1.2.3.4:21"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "ftp" in proc.stderr




async def test_stop_keeps_the_batch_being_written(tmp_path):
    """stop() while the write-behind log is saving a batch: the batch still lands.  (Under load a save
    takes long; stop() cancelled it and the run's last results were lost: the black hole of
    test_real_pipeline_grades_and_logs stayed ``new`` in the store, issue 22 #18.)"""

    class HeldStore(SqliteStore):
        entered: asyncio.Event
        release: asyncio.Event

        async def save_results(self, results):
            self.entered.set()
            await self.release.wait()
            await super().save_results(results)

    store = await HeldStore.open(tmp_path / "p.db")
    store.entered, store.release = asyncio.Event(), asyncio.Event()
    registry = PluginRegistry()
    registry.register(FakeChecker("verdict", 1, CheckResult(False, "refused")))
    (new,) = (await store.upsert_proxies(None, [UpstreamURL.parse("http://127.0.0.9:1")])).new
    pipeline = Pipeline(Settings(), registry, store, None, flush_interval=0.01)
    await pipeline.start()
    pipeline.submit([new])
    await pipeline.wait_idle()
    await store.entered.wait()  # the writer holds the batch, mid-save
    stopping = spawn(pipeline.stop(), name="stop")
    await asyncio.sleep(0)  # stop() has asked its tasks to end
    store.release.set()
    await stopping
    (saved,) = await store.all_proxies()
    assert saved.status is ProxyStatus.DEAD
    assert [c.detail for c in await store.get_checks(saved.id)] == ["refused"]
    await store.close()
