"""`proxy-pool sources | proxies | plugins` as a user runs them: a real subprocess, a real database.

Each test runs ``python -m gateway ...`` in its own temporary directory with ``--db``.  HTTP sources
are an aiohttp server on 127.0.0.1 in the test's loop (the subprocess is awaited without blocking it).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from pool.models import AnonymityLevel, ProxyStatus, UpstreamURL
from pool.store import SqliteStore

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]

LIST = "# my list\n192.0.2.1:8080\n192.0.2.2:3128\nsocks5://user:secret@198.51.100.3:1080\n"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def json(self) -> object:
        return json.loads(self.out)

    def one_line_error(self) -> str:
        """The single stderr line of a user mistake (never a traceback)."""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("proxy-pool: "), self.err
        return lines[0]


async def cli(cwd: Path, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 45)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def stored_urls(db: str) -> list[str]:
    """The sources in the database, read directly (cheaper than another subprocess)."""
    store = await SqliteStore.open(db)
    try:
        return [s.url for s in await store.list_sources()]
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "x.db")


@pytest.fixture
def listing(tmp_path: Path) -> Path:
    path = tmp_path / "list.txt"
    path.write_text(LIST)
    return path


# sources add / list / remove --------------------------------------------------------------
async def test_add_list_remove_round_trip(tmp_path: Path, db: str, listing: Path) -> None:
    """A source added with options shows in both list formats and is gone after remove."""
    added = await cli(
        tmp_path, "sources", "add", "list.txt", "--parser", "plaintext", "--schedule", "*/5 * * * *",
        "--protocol", "socks5", "--db", db,
    )  # fmt: skip
    assert added.code == 0, added.err
    assert added.out.strip() == f"added source 1: {listing.as_uri()}"

    table, as_json = await asyncio.gather(
        cli(tmp_path, "sources", "list", "--db", db),
        cli(tmp_path, "sources", "list", "--format", "json", "--db", db),
    )
    assert table.code == 0
    header, row = table.out.strip().splitlines()
    assert header.split()[:5] == ["ID", "URL", "PARSER", "SCHEDULE", "DEFAULT_PROTOCOL"]
    assert row.split()[:3] == ["1", listing.as_uri(), "plaintext"]
    assert "*/5 * * * *" in row and "socks5" in row

    listed = as_json.json
    assert isinstance(listed, list) and len(listed) == 1
    assert {
        k: listed[0][k] for k in ("id", "url", "parser", "schedule", "default_protocol", "last_run_at")
    } == {
        "id": 1,
        "url": listing.as_uri(),
        "parser": "plaintext",
        "schedule": "*/5 * * * *",
        "default_protocol": "socks5",
        "last_run_at": None,
    }

    removed = await cli(tmp_path, "sources", "remove", "1", "--db", db)
    assert (removed.code, removed.out.strip()) == (0, "removed source 1")
    assert await stored_urls(db) == []
    assert (await cli(tmp_path, "sources", "list", "--db", db)).out.strip() == "(none)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["list.txt", "--parser", "csv_magic"],
            "unknown parser 'csv_magic' (known: html_table, json_api, plaintext)",
        ),
        (
            ["list.txt", "--schedule", "every five minutes"],
            "'every five minutes' is not a valid cron expression",
        ),
        (["list.txt", "--schedule", "61 * * * *"], "is not a valid cron expression"),
        (["list.txt", "--schedule", "0 0 31 2 *"], "is not a valid cron expression"),  # February 31st: never
        (["missing.txt"], "does not exist"),
        (["list.txt", "--protocol", "ftp"], "unknown protocol 'ftp'"),
        (["ftp://example.invalid/list.txt"], "unsupported source URL"),
    ],
)
async def test_add_rejects_bad_input_with_one_line_and_exit_2(
    tmp_path: Path, db: str, listing: Path, args: list[str], message: str
) -> None:
    """Unknown parser, invalid cron, missing file, bad protocol or scheme: exit 2, one line, nothing added."""
    result = await cli(tmp_path, "sources", "add", *args, "--db", db)

    assert result.code == 2
    assert message in result.one_line_error()
    assert result.out == ""
    assert await stored_urls(db) == []


async def test_duplicate_source_in_any_spelling_is_exit_2(tmp_path: Path, db: str, listing: Path) -> None:
    """The same file as a relative path, an absolute path or a file:// URL is one source."""
    assert (await cli(tmp_path, "sources", "add", "list.txt", "--db", db)).code == 0

    spellings = (str(listing), listing.as_uri(), "./list.txt")
    results = await asyncio.gather(*(cli(tmp_path, "sources", "add", s, "--db", db) for s in spellings))
    for spelling, again in zip(spellings, results, strict=True):
        assert again.code == 2, spelling
        assert again.one_line_error() == f"proxy-pool: source {listing.as_uri()} already exists"
    assert await stored_urls(db) == [listing.as_uri()]


async def test_remove_unknown_id_is_exit_2(tmp_path: Path, db: str) -> None:
    """Removing a source that does not exist: exit 2 and one line naming the id."""
    result = await cli(tmp_path, "sources", "remove", "42", "--db", db)

    assert result.code == 2
    assert result.one_line_error() == "proxy-pool: no source with id 42"


async def test_usage_error_is_exit_2(tmp_path: Path, db: str) -> None:
    """A non-numeric id is a usage error (exit 2), not a traceback."""
    result = await cli(tmp_path, "sources", "remove", "abc", "--db", db)

    assert result.code == 2
    assert "Traceback" not in result.err and "invalid int value" in result.err


# sources scrape ---------------------------------------------------------------------------
async def test_scrape_local_file_prints_found_and_new(tmp_path: Path, db: str, listing: Path) -> None:
    """`sources scrape` fetches now, without a server, and prints found/new per source."""
    await cli(tmp_path, "sources", "add", "list.txt", "--db", db)

    first = await cli(tmp_path, "sources", "scrape", "--db", db)
    assert first.code == 0, first.err
    header, row = first.out.strip().splitlines()
    assert header.split() == ["ID", "URL", "FOUND", "NEW", "ERROR"]
    assert row.split() == ["1", listing.as_uri(), "3", "3"]

    listing.write_text(LIST + "192.0.2.4:80\n")
    second = await cli(tmp_path, "sources", "scrape", "1", "--format", "json", "--db", db)
    assert second.code == 0
    assert second.json == [{"id": 1, "url": listing.as_uri(), "found": 4, "new": 1, "error": None}]

    source = (await cli(tmp_path, "sources", "list", "--format", "json", "--db", db)).json[0]  # type: ignore[index]
    assert (source["last_found"], source["last_new"], source["last_error"]) == (4, 1, None)
    assert source["last_run_at"] is not None


async def test_scrape_http_sources_served_on_loopback(
    tmp_path: Path, db: str, aiohttp_server: ServerFactory
) -> None:
    """An http source is fetched and counted; a failing one shows its error; exit 1 only when all fail."""

    async def table(request: web.Request) -> web.Response:
        return web.Response(
            text="<table><tr><th>IP</th><th>Port</th><th>Type</th></tr>"
            "<tr><td>203.0.113.5</td><td>1080</td><td>SOCKS5</td></tr>"
            "<tr><td>203.0.113.6</td><td>8080</td><td>HTTP</td></tr></table>",
            content_type="text/html",
        )

    app = web.Application()
    app.router.add_get("/free-proxy-list", table)
    server = await aiohttp_server(app, host="127.0.0.1")
    good, bad = str(server.make_url("/free-proxy-list")), str(server.make_url("/gone.txt"))
    assert (await cli(tmp_path, "sources", "add", good, "--db", db)).code == 0
    assert (await cli(tmp_path, "sources", "add", bad, "--db", db)).code == 0

    both = await cli(tmp_path, "sources", "scrape", "--format", "json", "--db", db)
    assert both.code == 0, both.err
    assert both.json == [
        {"id": 1, "url": good, "found": 2, "new": 2, "error": None},
        {"id": 2, "url": bad, "found": 0, "new": 0, "error": "HTTP 404 Not Found"},
    ]

    only_bad = await cli(tmp_path, "sources", "scrape", "2", "--db", db)
    assert only_bad.code == 1
    assert "HTTP 404 Not Found" in only_bad.out

    txt = await cli(tmp_path, "proxies", "--format", "txt", "--db", db)
    assert txt.out.splitlines() == ["socks5://203.0.113.5:1080", "http://203.0.113.6:8080"]


async def test_scrape_with_nothing_to_scrape_is_exit_2(tmp_path: Path, db: str) -> None:
    """No sources at all, or an unknown id: one line, exit 2."""
    empty, unknown = await asyncio.gather(
        cli(tmp_path, "sources", "scrape", "--db", db), cli(tmp_path, "sources", "scrape", "7", "--db", db)
    )
    assert empty.code == 2
    assert "no sources" in empty.one_line_error()

    assert unknown.code == 2
    assert unknown.one_line_error() == "proxy-pool: no source with id 7"


# proxies ----------------------------------------------------------------------------------
async def _seed_pool(db: str) -> None:
    """Four proxies in several states, as a running pool would have left them."""
    store = await SqliteStore.open(db)
    try:
        ups = [
            UpstreamURL.parse("http://192.0.2.1:8080"),
            UpstreamURL.parse("socks5://user:secret@198.51.100.3:1080"),
            UpstreamURL.parse("http://192.0.2.2:3128"),
            UpstreamURL.parse("https://203.0.113.9:443"),
        ]
        new = (await store.upsert_proxies(None, ups)).new
        states = [
            (ProxyStatus.ACTIVE, "DE", AnonymityLevel.ELITE),
            (ProxyStatus.ACTIVE, "US", AnonymityLevel.ANONYMOUS),
            (ProxyStatus.DEAD, "DE", None),
            (ProxyStatus.NEW, None, None),
        ]
        for proxy, (status, country, anonymity) in zip(new, states, strict=True):
            proxy.status, proxy.country, proxy.anonymity = status, country, anonymity
        await store.save_results([(p, []) for p in new])
    finally:
        await store.close()


async def test_proxies_formats_and_filters(tmp_path: Path, db: str) -> None:
    """`proxies` lists the pool as txt (usable URLs), json (masked) or a table, filtered by each field."""
    await _seed_pool(db)

    txt, as_json, table = await asyncio.gather(
        cli(tmp_path, "proxies", "--format", "txt", "--db", db),
        cli(tmp_path, "proxies", "--format", "json", "--db", db),
        cli(tmp_path, "proxies", "--db", db),
    )
    assert txt.code == 0
    assert txt.out.splitlines() == [
        "http://192.0.2.1:8080",
        "socks5://user:secret@198.51.100.3:1080",  # txt is for other tools: credentials included
        "http://192.0.2.2:3128",
        "https://203.0.113.9:443",
    ]

    rows = as_json.json
    assert isinstance(rows, list) and len(rows) == 4
    assert rows[1]["url"] == "socks5://user:***@198.51.100.3:1080"
    assert "secret" not in json.dumps(rows)
    assert {r["status"] for r in rows} == {"active", "dead", "new"}

    assert table.out.splitlines()[0].split()[:3] == ["ID", "URL", "STATUS"]
    assert len(table.out.splitlines()) == 5
    assert "secret" not in table.out

    filters = {
        ("--status", "active"): ["http://192.0.2.1:8080", "socks5://user:secret@198.51.100.3:1080"],
        ("--protocol", "socks5"): ["socks5://user:secret@198.51.100.3:1080"],
        ("--country", "de"): ["http://192.0.2.1:8080", "http://192.0.2.2:3128"],
        ("--country", "DE", "--status", "active", "--anonymity", "elite"): ["http://192.0.2.1:8080"],
        ("--status", "dead", "--protocol", "socks5"): [],
    }
    results = await asyncio.gather(
        *(cli(tmp_path, "proxies", "--format", "txt", *flags, "--db", db) for flags in filters)
    )
    for (flags, expected), result in zip(filters.items(), results, strict=True):
        assert result.code == 0, result.err
        assert result.out.splitlines() == expected, flags


async def test_proxies_rejects_bad_filters(tmp_path: Path, db: str) -> None:
    """A country that is not a two-letter code, or an unknown status, is exit 2 with one line."""
    country, status = await asyncio.gather(
        cli(tmp_path, "proxies", "--country", "Germany", "--db", db),
        cli(tmp_path, "proxies", "--status", "alive", "--db", db),
    )
    assert country.code == 2
    assert "two-letter" in country.one_line_error()

    assert status.code == 2
    assert "Traceback" not in status.err


# plugins ----------------------------------------------------------------------------------
GOOD_CONTRIB = """
from config import Settings
from plugins import DiscoveredProxy, ProxySource


class SemicolonParser:
    name = "semicolon"

    def supports(self, url: str) -> bool:
        return url.endswith(".scsv")

    async def parse(self, raw: bytes, source: ProxySource) -> list[DiscoveredProxy]:
        out = []
        for line in raw.decode().splitlines():
            host, port = line.split(";")[:2]
            out.append(DiscoveredProxy(ip=host, port=int(port)))
        return out

    def default_schedule(self) -> str | None:
        return None


def create_plugin(settings: Settings) -> SemicolonParser:
    return SemicolonParser()
"""

CONFLICTING = GOOD_CONTRIB.replace('name = "semicolon"', 'name = "plaintext"')


def _config(tmp_path: Path, contrib: Path) -> str:
    config = tmp_path / "proxy-pool.test.toml"
    config.write_text(f'[plugins]\ncontrib_dir = "{contrib}"\n')
    return str(config)


async def test_plugins_lists_builtins(tmp_path: Path) -> None:
    """`plugins` lists each discovered plugin's kind, name and module, checkers with stage/priority."""
    table, as_json = await asyncio.gather(
        cli(tmp_path, "plugins"), cli(tmp_path, "plugins", "--format", "json")
    )
    assert table.code == 0, table.err
    assert table.out.splitlines()[0].split() == ["KIND", "NAME", "MODULE", "STAGE", "HEALTH"]

    rows = as_json.json
    assert isinstance(rows, list)
    parsers = {r["name"]: r for r in rows if r["kind"] == "parser"}
    assert set(parsers) == {"plaintext", "html_table", "json_api"}
    assert parsers["plaintext"]["module"] == "plugins.builtin.parsers.plaintext"
    assert all(r["health"] == "ok" for r in rows if r["kind"] != "off")
    # plugins whose section is absent are listed as not configured, not hidden
    off = {r["name"]: r["health"] for r in rows if r["kind"] == "off"}
    assert off == {n: "not configured" for n in ("geoip_lookup", "site_reach", "smtp", "webhook")}
    checkers = [r for r in rows if r["kind"] == "checker"]
    assert checkers and all("/" in r["stage"] for r in checkers)


async def test_plugins_shows_broken_contrib_modules_as_errors(tmp_path: Path) -> None:
    """A contrib module that fails to import or returns no plugin is listed as an error; good ones load."""
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    (contrib / "semicolon.py").write_text(GOOD_CONTRIB)
    (contrib / "broken.py").write_text("import this_module_does_not_exist\n")
    (contrib / "not_a_plugin.py").write_text("def create_plugin(settings):\n    return object()\n")
    (contrib / "opted_out.py").write_text("def create_plugin(settings):\n    return None\n")
    (contrib / "_private.py").write_text("raise RuntimeError('never imported')\n")

    config = _config(tmp_path, contrib)
    result, table = await asyncio.gather(
        cli(tmp_path, "plugins", "--format", "json", "--config", config),
        cli(tmp_path, "plugins", "--config", config),
    )

    assert result.code == 0, result.err
    rows = result.json
    assert isinstance(rows, list)
    errors = {Path(r["module"]).name: r["health"] for r in rows if r["kind"] == "error"}
    assert set(errors) == {"broken.py", "not_a_plugin.py"}
    assert "import failed: ModuleNotFoundError" in errors["broken.py"]
    assert "this_module_does_not_exist" in errors["broken.py"]
    assert "matches no plugin protocol" in errors["not_a_plugin.py"]
    semicolon = [r for r in rows if r["name"] == "semicolon"]
    assert len(semicolon) == 1 and semicolon[0]["kind"] == "parser"
    assert semicolon[0]["module"] == str(contrib / "semicolon.py")

    broken_line = next(line for line in table.out.splitlines() if "broken.py" in line)
    assert broken_line.startswith("error") and "error: import failed" in broken_line


async def test_contrib_parser_usable_from_the_cli(tmp_path: Path, db: str) -> None:
    """A contrib parser can be named in `sources add --parser` and scrapes with `sources scrape`."""
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    (contrib / "semicolon.py").write_text(GOOD_CONTRIB)
    (tmp_path / "export.scsv").write_text("192.0.2.40;8080;DE\n192.0.2.41;3128;FR\n")
    config = _config(tmp_path, contrib)

    added = await cli(
        tmp_path, "sources", "add", "export.scsv", "--parser", "semicolon", "--config", config, "--db", db
    )
    assert added.code == 0, added.err
    scraped = await cli(tmp_path, "sources", "scrape", "--format", "json", "--config", config, "--db", db)
    assert scraped.code == 0, scraped.err
    assert [(r["found"], r["new"], r["error"]) for r in scraped.json] == [(2, 2, None)]  # type: ignore[union-attr]


async def test_parser_name_conflict_is_exit_2_naming_both_modules(tmp_path: Path, db: str) -> None:
    """A contrib parser named like a built-in stops the command: exit 2, one line naming both modules."""
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    (contrib / "my_plaintext.py").write_text(CONFLICTING)
    config = _config(tmp_path, contrib)

    (tmp_path / "x.txt").write_text("192.0.2.1:80\n")
    commands = (["plugins"], ["sources", "add", "x.txt", "--db", db])
    results = await asyncio.gather(*(cli(tmp_path, *args, "--config", config) for args in commands))
    for args, result in zip(commands, results, strict=True):
        assert result.code == 2, args
        line = result.one_line_error()
        assert "plaintext" in line
        assert "plugins.builtin.parsers.plaintext" in line
        assert str(contrib / "my_plaintext.py") in line
