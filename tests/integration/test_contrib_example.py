"""The documented contrib parser (docs/examples/contrib_csv_parser.py) works as the docs say.

It is copied into a temporary contrib directory, discovered like any user plugin, and scrapes a
CSV export served on 127.0.0.1 into a real store.  The guide must show the same code.
"""

from __future__ import annotations

import ast
import asyncio
import re
import shutil
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from config import Settings
from config.settings import SourcesFetchSettings
from plugins import ProxySource
from plugins.discovery import load_all_plugins
from plugins.registry import PluginRegistry
from pool.models import Event, ProxyProtocol
from pool.scraper import Scraper
from pool.store import SqliteStore

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "contrib_csv_parser.py"
GUIDE = ROOT / "docs" / "extend" / "parsers.md"  # "Write your own parser" in the docs site

EXPORT = (
    "\ufeffCountry;ignored,Port,IP,Type\r\n"  # a header in another order, with a BOM and CRLF
    "DE,8080,203.0.113.7,http\r\n"
    "US,1080,198.51.100.23,SOCKS5\r\n"
    'NL,3128,"2001:db8::7",\r\n'  # no protocol: the source's default
    "FR,99999,203.0.113.8,http\r\n"  # bad port: skipped
    "XX,80,300.1.2.3,http\r\n"  # bad address: skipped
    "\r\n"
    "GB,8080,203.0.113.7,http\r\n"  # a duplicate
).encode()


@pytest.fixture
def contrib(tmp_path: Path) -> Path:
    directory = tmp_path / "plugins-contrib"
    directory.mkdir()
    shutil.copy(EXAMPLE, directory / "csv_export.py")
    return directory


@pytest.fixture
async def registry(contrib: Path) -> PluginRegistry:
    return await load_all_plugins(Settings(plugins={"contrib_dir": str(contrib)}))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    db = await SqliteStore.open(tmp_path / "pool.db")
    yield db
    await db.close()


@pytest.fixture
async def export_server(aiohttp_server: ServerFactory) -> TestServer:
    async def export(request: web.Request) -> web.Response:
        return web.Response(body=EXPORT, content_type="text/csv")

    async def blocked(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Access denied</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/exports/proxies.csv", export)
    app.router.add_get("/exports/blocked.csv", blocked)
    return await aiohttp_server(app, host="127.0.0.1")


def test_example_imports_only_the_public_surface() -> None:
    """The example imports nothing from the program but `plugins` and `config` (plus the stdlib)."""
    tree = ast.parse(EXAMPLE.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
    own = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert own == {"plugins", "config"}
    assert not any(m in imported for m in ("pool", "gateway", "aiohttp"))


def test_guide_shows_the_tested_example_verbatim() -> None:
    """The guide's code block is exactly the example file: the documented code is the tested code."""
    for doc in (GUIDE,):
        blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)
        assert EXAMPLE.read_text() in blocks, doc.name
        guide = doc.read_text()
        for must in ("contrib_dir", "/app/plugins-contrib", "proxy-pool plugins", "create_plugin"):
            assert must in guide, (doc.name, must)


async def test_discovered_from_the_contrib_directory(registry: PluginRegistry, contrib: Path) -> None:
    """Discovery registers the example as parser 'csv' from its file, next to the built-ins, with no errors."""
    parser = registry.get_parser("csv")

    assert registry.module_of(parser) == str(contrib / "csv_export.py")
    assert registry.errors == []
    assert {"plaintext", "html_table", "json_api", "csv"} <= set(registry.parsers)
    rows = [(i.kind, i.name, i.module) for i in registry.describe()]
    assert ("parser", "csv", str(contrib / "csv_export.py")) in rows
    assert parser.default_schedule() == "0 * * * *"


async def test_scrapes_a_csv_export_end_to_end(
    registry: PluginRegistry, store: SqliteStore, export_server: TestServer
) -> None:
    """A .csv source with no parser named is read by the contrib parser into the store, with new_batch."""
    events: list[Event] = []
    registry.events.add_listener(events.append)
    url = str(export_server.make_url("/exports/proxies.csv"))
    source = await store.add_source(
        url, parser=None, schedule=None, default_protocol=ProxyProtocol.HTTPS, origin="user"
    )
    scraper = Scraper(store, registry, SourcesFetchSettings(timeout=5.0))
    try:
        assert scraper.parser_for(source).name == "csv"

        result = await scraper.scrape(source)
        again = await scraper.scrape(source)
    finally:
        await scraper.close()

    assert result.error is None
    assert (result.found, len(result.new)) == (3, 3)
    assert (again.found, len(again.new)) == (3, 0)
    assert {p.upstream.key for p in await store.all_proxies()} == {
        ("http", "203.0.113.7", 8080),
        ("socks5", "198.51.100.23", 1080),
        ("https", "2001:db8::7", 3128),
    }
    assert [e.payload["count"] for e in events if e.type == "proxy.new_batch"] == [3]


async def test_a_page_that_is_not_csv_fails_the_source(
    registry: PluginRegistry, store: SqliteStore, export_server: TestServer
) -> None:
    """An HTML block page behind a .csv URL gives source.failed from the parser, and nothing is stored."""
    events: list[Event] = []
    registry.events.add_listener(events.append)
    url = str(export_server.make_url("/exports/blocked.csv"))
    source = await store.add_source(
        url, parser="csv", schedule=None, default_protocol=ProxyProtocol.HTTP, origin="user"
    )
    scraper = Scraper(store, registry, SourcesFetchSettings(timeout=5.0))
    try:
        result = await scraper.scrape(source)
    finally:
        await scraper.close()

    assert result.error is not None and result.error.startswith(
        "csv: none of 1 rows"
    )
    assert [e.type for e in events] == ["source.failed"]
    assert await store.all_proxies() == []


async def test_rows_without_a_header_use_the_documented_column_order(registry: PluginRegistry) -> None:
    """Without a header, columns are ip,port,protocol,country; unknown protocols leave the default."""
    parser = registry.get_parser("csv")
    source = ProxySource(id=1, url="file:///exports/x.csv")

    found = await parser.parse(b"192.0.2.1,8080,socks4,DE\n192.0.2.2,3128,carrier-pigeon,US\n", source)

    assert [(d.ip, d.port, d.protocol) for d in found] == [
        ("192.0.2.1", 8080, ProxyProtocol.SOCKS4),
        ("192.0.2.2", 3128, None),
    ]


async def test_listed_by_the_plugins_command(contrib: Path, tmp_path: Path) -> None:
    """`proxy-pool plugins --config F` with contrib_dir in F shows the parser, as the guide says."""
    config = tmp_path / "proxy-pool.toml"
    config.write_text(f'[plugins]\ncontrib_dir = "{contrib}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "plugins", "--config", str(config),
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 45)

    assert proc.returncode == 0, err.decode()
    line = next(line for line in out.decode().splitlines() if line.split()[:2] == ["parser", "csv"])
    assert str(contrib / "csv_export.py") in line and line.rstrip().endswith("ok")


CHECKER_EXAMPLE = ROOT / "docs" / "examples" / "contrib_latency_checker.py"
NOTIFIER_EXAMPLE = ROOT / "docs" / "examples" / "contrib_jsonl_notifier.py"


def test_the_checker_and_notifier_pages_show_their_tested_examples_verbatim() -> None:
    for page, example in (("checkers.md", CHECKER_EXAMPLE), ("notifiers.md", NOTIFIER_EXAMPLE)):
        text = (ROOT / "docs" / "extend" / page).read_text()
        assert example.read_text() in re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL), page


async def test_the_example_checker_and_notifier_work_from_the_contrib_directory(tmp_path: Path) -> None:
    """Discovered like any contrib plugin; the checker's verdicts and the notifier's lines are as documented."""
    import json

    import aiohttp

    from plugins import CheckContext, Proxy, UpstreamURL

    contrib = tmp_path / "contrib"
    contrib.mkdir()
    shutil.copy(CHECKER_EXAMPLE, contrib / "max_latency.py")
    shutil.copy(NOTIFIER_EXAMPLE, contrib / "jsonl.py")
    database = tmp_path / "pool.db"
    registry = await load_all_plugins(
        Settings(plugins={"contrib_dir": str(contrib)}, storage={"path": str(database)})
    )
    assert registry.errors == []
    checker = next(c for c in registry.checkers if c.name == "max_latency")
    notifier = next(n for n in registry.notifiers if n.name == "jsonl")
    assert checker.stage == 3

    proxy = Proxy(id=1, upstream=UpstreamURL.parse("http://192.0.2.1:8080"))
    async with aiohttp.ClientSession() as client:
        verdicts = []
        for latency in (150.0, 5000.0, None):
            context = CheckContext(http_client=client)
            context.http_latency_ms = latency
            verdicts.append(await checker.check(proxy, context))
    assert [(v.passed, v.skipped) for v in verdicts] == [(True, False), (False, False), (True, True)]
    assert "too slow: 5000 ms" in verdicts[1].detail

    await notifier.notify(Event("proxy.pool_low", {"active_count": 3, "threshold": 5}))
    assert await notifier.health_check()
    lines = Path(str(database) + ".events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["proxy.pool_low"]
    # with replicas (PostgreSQL) it stays off
    shared = await load_all_plugins(
        Settings(plugins={"contrib_dir": str(contrib)}, storage={"url": "postgresql://u@127.0.0.1:1/db"})
    )
    assert all(n.name != "jsonl" for n in shared.notifiers)
