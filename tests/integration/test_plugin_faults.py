"""One bad plugin stops nothing (issue 12, item 8): real contrib plugin files in a temp contrib_dir.

Before: a parser whose ``default_schedule()`` raised made every scheduler pass fail; a ``parse()``
that never returned had no timeout; one that blocked the loop froze everything without a word;
``sys.exit(3)`` in a plugin module made ``serve`` exit 3; a checker that raised marked every proxy dead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
from pathlib import Path

import aiohttp
import pytest

from gateway.app import ProxyPool
from plugins.health import PROBATION
from pool.models import ProxySource, ProxyStatus, UpstreamURL
from pool.store import SqliteStore
from tests.support.upstreams import free_port, pproxy_upstreams
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(90)

REPO = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token-0123456789"

PARSER = """
import time
from plugins import DiscoveredProxy


class P:
    name = "{name}"

    def supports(self, url):
        return url.endswith(".{name}")

    async def parse(self, raw, source):
        {parse}
        return [DiscoveredProxy(ip="192.0.2.{n}", port=8080)]

    def default_schedule(self):
        {schedule}


def create_plugin(settings):
    return P()
"""


def parser(contrib: Path, name: str, n: int, parse: str = "pass", schedule: str = "return None") -> Path:
    path = contrib / f"{name}.py"
    path.write_text(textwrap.dedent(PARSER.format(name=name, n=n, parse=parse, schedule=schedule)))
    return path


def listing(tmp_path: Path, name: str, suffix: str) -> str:
    path = tmp_path / f"{name}.{suffix}"
    path.write_text("192.0.2.200:3128\n")
    return str(path)


def plugin_errors(pool: ProxyPool) -> dict[str, float]:
    body, _ = pool.metrics.exposition()
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith("proxy_pool_plugin_errors_total{"):
            name = line.split('plugin="', 1)[1].split('"', 1)[0]
            out[name] = float(line.rsplit(" ", 1)[1])
    return out


async def scraped(pool: ProxyPool) -> dict[str, ProxySource]:
    """Every source, after a scheduler pass and the scrapes it started (joined, not waited for by time)."""
    await pool.scheduler.run_once()
    for source in await pool.store.list_sources():
        await pool.scraper.scrape(source)
    return {Path(s.url).name: s for s in await pool.store.list_sources()}


@pytest.fixture
def contrib(tmp_path: Path) -> Path:
    path = tmp_path / "contrib"
    path.mkdir()
    return path


async def test_raising_default_schedule_stops_no_scheduler_pass(make_pool, tmp_path, contrib, caplog):
    """A parser whose default_schedule() raises: every source is still scraped, the error is logged
    once with its traceback and counted in plugin_errors_total{plugin}."""
    parser(contrib, "boomsched", 1, schedule="raise RuntimeError('no schedule for you')")
    sources = [
        {"url": listing(tmp_path, "mine", "boomsched"), "parser": "boomsched"},
        {"url": listing(tmp_path, "plain", "txt"), "parser": "plaintext"},
    ]
    caplog.set_level(logging.ERROR, "proxy_pool.plugins")
    pool = await make_pool(plugins={"contrib_dir": str(contrib)}, sources=sources)
    for _ in range(3):
        result = await scraped(pool)
    assert {name: s.last_error for name, s in result.items()} == {"mine.boomsched": None, "plain.txt": None}
    assert all(s.last_run_at is not None for s in result.values())
    logged = [r for r in caplog.records if "boomsched" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert plugin_errors(pool).get("boomsched", 0) >= 3


@pytest.mark.parametrize(
    ("parse", "error"),
    [
        ("await __import__('asyncio').Event().wait()", "parse timed out after 0.5 s"),
        ("raise RuntimeError('parser bug')", "parser failed: RuntimeError: parser bug"),
        ("return 42", "parse() returned int, not a list"),
    ],
    ids=["never-returns", "raises", "not-a-list"],
)
async def test_failing_parse_fails_its_source_only(make_pool, tmp_path, contrib, parse, error):
    """A parse() that never returns (sources.parse_timeout), raises or answers junk fails its own
    source with a clear error and counts as the parser's error; the other source is scraped."""
    parser(contrib, "badparse", 2, parse=parse)
    sources = [
        {"url": listing(tmp_path, "mine", "badparse"), "parser": "badparse"},
        {"url": listing(tmp_path, "plain", "txt"), "parser": "plaintext"},
    ]
    pool = await make_pool(plugins={"contrib_dir": str(contrib)}, sources=sources, fetch={"parse_timeout": 0.5})
    result = await scraped(pool)
    assert error in (result["mine.badparse"].last_error or "")
    assert result["plain.txt"].last_error is None and result["plain.txt"].last_success_at is not None
    assert plugin_errors(pool).get("badparse", 0) >= 1


async def test_a_parse_that_blocks_the_loop_is_named(make_pool, tmp_path, contrib, caplog):
    """time.sleep() in parse() holds the event loop: a warning names the plugin and its hook."""
    parser(contrib, "sleepy", 3, parse="time.sleep(2.5)")
    caplog.set_level(logging.WARNING, "proxy_pool.plugins")
    pool = await make_pool(plugins={"contrib_dir": str(contrib)})
    source = await pool.store.add_source(listing(tmp_path, "mine", "sleepy"), parser="sleepy")
    await pool.scraper.scrape(source)

    def warned() -> bool:
        return any("by plugin sleepy (in parse)" in r.getMessage() for r in caplog.records)

    await eventually(warned, lambda: str([r.getMessage() for r in caplog.records]))
    assert plugin_errors(pool).get("sleepy", 0) >= 1


CRASHY = """
from plugins import CheckResult


class Crashy:
    name = "crashy"
    stage = 1
    priority = 50
    timeout = 5.0

    async def check(self, proxy, context):
        raise RuntimeError("checker bug")

    def should_skip(self, proxy):
        return False


def create_plugin(settings):
    return Crashy()
"""


async def test_raising_checker_is_no_verdict_and_gets_disabled(make_pool, tmp_path, contrib):
    """A checker that raises leaves every proxy's status as it was; after raising on its first 20
    proxies it is disabled, and /api/stats and `proxy-pool plugins` say so."""
    (contrib / "crashy.py").write_text(textwrap.dedent(CRASHY))
    async with pproxy_upstreams(PROBATION) as ups:
        store = await SqliteStore.open(tmp_path / "pool.db")
        try:  # an active pool, as a previous run left it
            await store.insert_proxies_bulk([UpstreamURL.parse(u.url()) for u in ups], ProxyStatus.ACTIVE)
        finally:
            await store.close()
        admin_port = free_port()
        pool = await make_pool(
            plugins={"contrib_dir": str(contrib)},
            admin={"listen": f"127.0.0.1:{admin_port}", "token": TOKEN},
            checker={"concurrency": PROBATION},
        )
        pool.pipeline.submit(pool.selector.proxies())
        await pool.pipeline.wait_idle()
        assert pool.registry.health.disabled.keys() == {"crashy"}
        assert {p.status for p in pool.selector.proxies()} == {ProxyStatus.ACTIVE}
        assert plugin_errors(pool)["crashy"] == PROBATION
        assert "crashy" not in [c.name for c in pool.registry.get_checker_pipeline()]

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            async with client.get(f"http://127.0.0.1:{admin_port}/api/stats") as resp:
                stats = await resp.json()
        assert "raised on its first 20 proxies" in stats["checker"]["disabled"]["crashy"]
        assert stats["plugins"]["errors"]["crashy"] == PROBATION

        config = tmp_path / "cli.toml"
        config.write_text(
            f'[admin]\nlisten = "127.0.0.1:{admin_port}"\ntoken = "{TOKEN}"\n'
            f'[plugins]\ncontrib_dir = "{contrib}"\n'
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "plugins", "--config", str(config), "--format", "json",
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 45)
        assert proc.returncode == 0, err.decode()
        (row,) = [r for r in json.loads(out) if r["name"] == "crashy"]
        assert row["health"].startswith("disabled: raised on its first 20 proxies")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROXY_POOL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


async def test_serve_survives_a_plugin_module_calling_sys_exit(tmp_path, contrib):
    """`proxy-pool serve` with a contrib module that runs sys.exit(3) at import keeps serving; the
    module is reported like any import error; SIGTERM still ends it with 0."""
    (contrib / "quitter.py").write_text("import sys\nsys.exit(3)\n")
    (contrib / "interrupter.py").write_text("def create_plugin(settings):\n    raise KeyboardInterrupt\n")
    admin_port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--no-default-sources", "--listen", "127.0.0.1:0",
        "--admin-listen", f"127.0.0.1:{admin_port}", "--db", str(tmp_path / "serve.db"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path, env={**_env(), "PROXY_POOL_PLUGINS__CONTRIB_DIR": str(contrib),
                           "PROXY_POOL_ADMIN__TOKEN": TOKEN},
    )  # fmt: skip
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(45):
            while not any("proxy-pool serving:" in line for line in lines):
                raw = await proc.stderr.readline()
                assert raw, f"serve ended (exit {await proc.wait()}): " + "\n".join(lines)
                lines.append(raw.decode(errors="replace"))
        text = "".join(lines)
        assert "quitter.py skipped: import failed: SystemExit: 3" in text
        assert "interrupter.py skipped: create_plugin failed: KeyboardInterrupt" in text
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            async with client.get(f"http://127.0.0.1:{admin_port}/healthz") as resp:
                assert resp.status == 200
            async with client.get(f"http://127.0.0.1:{admin_port}/api/stats") as resp:
                skipped = {Path(s["module"]).name for s in (await resp.json())["plugins"]["skipped"]}
        assert skipped == {"quitter.py", "interrupter.py"}
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.stderr.read()
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_raising_notifier_is_counted_as_its_error(make_pool, tmp_path, contrib):
    """A notifier whose notify() raises is logged and counted in plugin_errors_total; the event's
    producer (a scrape here) goes on as if nothing happened."""
    (contrib / "shouty.py").write_text(
        textwrap.dedent(
            """
            class Shouty:
                name = "shouty"
                subscribes_to = ["source.*"]

                async def notify(self, event):
                    raise RuntimeError("notifier bug")

                async def health_check(self):
                    return True


            def create_plugin(settings):
                return Shouty()
            """
        )
    )
    pool = await make_pool(plugins={"contrib_dir": str(contrib)})
    source = await pool.store.add_source(str(tmp_path / "missing.txt"), parser="plaintext")
    result = await pool.scraper.scrape(source)
    assert result.error is not None  # source.failed went to the notifier
    await eventually(lambda: plugin_errors(pool).get("shouty", 0) >= 1, lambda: str(plugin_errors(pool)))
