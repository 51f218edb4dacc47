"""SqliteStore on a temporary file: schema and migrations, sources, upserts, check results, listing."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

import pool.store.schema as schema_module
from pool.errors import DuplicateError, NotFoundError
from pool.models import AnonymityLevel, ProxyCheck, ProxyProtocol, ProxyStatus, UpstreamURL
from pool.store import CHECK_LOG_KEEP, MIGRATIONS, ProxyFilter, SqliteStore
from pool.store.postgres import PostgresStore

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def up(text: str) -> UpstreamURL:
    return UpstreamURL.parse(text, default_protocol="http")


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path: Path):
    """Every store test runs on both stores behind the seam."""
    if request.param == "sqlite":
        s = await SqliteStore.open(tmp_path / "db" / "pool.db")
    else:
        s = await PostgresStore.open(request.getfixturevalue("pg_url"))
    try:
        yield s
    finally:
        await s.close()


async def count_rows(store, table: str) -> int:
    """A peek under the seam, for tests only."""
    if isinstance(store, PostgresStore):
        return int(await store._pool.fetchval(f"SELECT COUNT(*) FROM {table}"))
    with sqlite3.connect(store.path) as db:
        return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


def check(proxy_id: int, n: int, passed: bool = True) -> ProxyCheck:
    return ProxyCheck(proxy_id, f"checker{n}", 1, passed, f"detail {n}", float(n), T0 + timedelta(seconds=n))


# -- schema and migrations -------------------------------------------------------------------------


async def test_new_database_gets_the_latest_schema_in_wal_mode(tmp_path):
    """A fresh file (its folder created) is migrated to the latest version and uses WAL."""
    path = tmp_path / "nested" / "dir" / "pool.db"
    s = await SqliteStore.open(path)
    try:
        assert await s.schema_version() == len(MIGRATIONS)
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"sources", "proxies", "proxy_checks"} <= tables


async def test_reopening_keeps_data_and_version(tmp_path):
    """Opening an up-to-date database runs no migration and loses nothing."""
    path = tmp_path / "pool.db"
    s = await SqliteStore.open(path)
    await s.upsert_proxies(None, [up("1.2.3.4:80")])
    await s.close()
    s = await SqliteStore.open(path)
    try:
        assert await s.schema_version() == len(MIGRATIONS)
        assert [p.url for p in await s.all_proxies()] == ["http://1.2.3.4:80"]
    finally:
        await s.close()


async def test_a_new_migration_step_upgrades_an_old_database(tmp_path, monkeypatch):
    """A database at version N meets a program with step N+1: the step runs once, data kept."""
    path = tmp_path / "pool.db"
    s = await SqliteStore.open(path)
    await s.upsert_proxies(None, [up("1.2.3.4:80")])
    await s.close()
    monkeypatch.setattr(
        schema_module, "MIGRATIONS", [*MIGRATIONS, "ALTER TABLE proxies ADD COLUMN note TEXT;"]
    )
    s = await SqliteStore.open(path)
    try:
        assert await s.schema_version() == len(MIGRATIONS) + 1
        assert len(await s.all_proxies()) == 1
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        columns = {r[1] for r in db.execute("PRAGMA table_info(proxies)")}
    assert "note" in columns


async def test_a_failing_migration_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    """A broken step raises and neither half-applies nor bumps the version."""
    path = tmp_path / "pool.db"
    await (await SqliteStore.open(path)).close()
    broken = "ALTER TABLE proxies ADD COLUMN half TEXT;\nTHIS IS NOT SQL;"
    monkeypatch.setattr(schema_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.Error):
        await SqliteStore.open(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert "half" not in {r[1] for r in db.execute("PRAGMA table_info(proxies)")}


async def test_database_from_a_newer_program_is_refused(tmp_path):
    """A schema version above what this program knows stops it, saying to upgrade."""
    path = tmp_path / "pool.db"
    await (await SqliteStore.open(path)).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 5}")
    with pytest.raises(RuntimeError, match="upgrade"):
        await SqliteStore.open(path)


# -- PostgreSQL: the same schema versions, migrated by one replica while the others wait ------------


def test_every_migration_exists_for_postgresql_too():
    """Every schema step exists for PostgreSQL too, under the same version number, each rendered in its
    database's types: SQLite keeps rowid keys (its bulk inserts find their rows by them), PostgreSQL
    identity keys, and no type word is left unrendered."""
    assert len(schema_module.PG_MIGRATIONS) == len(MIGRATIONS) == len(schema_module.STEPS), (
        "write a schema step once, in pool/store/schema.py STEPS"
    )
    for sqlite_step, pg_step in zip(MIGRATIONS, schema_module.PG_MIGRATIONS, strict=True):
        assert "{" not in sqlite_step + pg_step and "}" not in sqlite_step + pg_step
        assert "DOUBLE PRECISION" not in sqlite_step and "BOOLEAN" not in sqlite_step
        assert " REAL" not in pg_step and "INTEGER PRIMARY KEY" not in pg_step
    assert "id INTEGER PRIMARY KEY," in MIGRATIONS[0]
    assert "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY," in schema_module.PG_MIGRATIONS[0]


async def test_postgres_new_database_gets_the_latest_schema(pg_url):
    """A fresh PostgreSQL database is migrated to the same version number as SQLite's."""
    s = await PostgresStore.open(pg_url)
    try:
        assert await s.schema_version() == len(MIGRATIONS)
    finally:
        await s.close()


async def test_postgres_replicas_opening_at_once_migrate_once(pg_url):
    """Five replicas start together: one migrates under the advisory lock, the others wait and find it done."""
    stores = await asyncio.gather(*(PostgresStore.open(pg_url) for _ in range(5)))
    try:
        assert {await s.schema_version() for s in stores} == {len(MIGRATIONS)}
        await stores[0].upsert_proxies(None, [up("1.2.3.4:80")])
        assert [p.url for p in await stores[4].all_proxies()] == ["http://1.2.3.4:80"]
    finally:
        for s in stores:
            await s.close()


async def test_postgres_new_step_upgrades_and_a_failing_one_changes_nothing(pg_url, monkeypatch):
    """A step N+1 runs once with data kept; a broken step neither half-applies nor bumps the version."""
    s = await PostgresStore.open(pg_url)
    await s.upsert_proxies(None, [up("1.2.3.4:80")])
    await s.close()
    broken = "ALTER TABLE proxies ADD COLUMN half TEXT;\nTHIS IS NOT SQL;"
    monkeypatch.setattr(schema_module, "PG_MIGRATIONS", [*schema_module.PG_MIGRATIONS, broken])
    with pytest.raises(asyncpg.PostgresSyntaxError):
        await PostgresStore.open(pg_url)
    monkeypatch.setattr(
        schema_module, "PG_MIGRATIONS", [*schema_module.PG_MIGRATIONS[:-1], "ALTER TABLE proxies ADD COLUMN note TEXT;"]
    )
    s = await PostgresStore.open(pg_url)
    try:
        assert await s.schema_version() == len(MIGRATIONS) + 1
        assert len(await s.all_proxies()) == 1
        columns = {r[0] for r in await s._pool.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'proxies'"
        )}
        assert "note" in columns and "half" not in columns
    finally:
        await s.close()


async def test_postgres_database_from_a_newer_program_is_refused(pg_url):
    """A schema version above what this program knows stops it, saying to upgrade."""
    s = await PostgresStore.open(pg_url)
    await s._pool.execute("UPDATE schema_version SET version = version + 5")
    await s.close()
    with pytest.raises(RuntimeError, match="upgrade"):
        await PostgresStore.open(pg_url)


# -- sources ---------------------------------------------------------------------------------------


async def test_source_crud(store):
    """Add, get, find, list and remove sources; ids are stable and listed in order."""
    a = await store.add_source(
        "https://example.test/a.txt",
        parser="plaintext",
        schedule="*/5 * * * *",
        default_protocol=ProxyProtocol.SOCKS5,
        origin="config",
    )
    b = await store.add_source("/srv/list.txt")
    assert (a.parser, a.schedule, a.default_protocol, a.origin) == (
        "plaintext",
        "*/5 * * * *",
        ProxyProtocol.SOCKS5,
        "config",
    )
    assert (b.parser, b.default_protocol, b.origin) == (None, ProxyProtocol.HTTP, "user")
    assert await store.get_source(a.id) == a
    assert await store.find_source("/srv/list.txt") == b
    assert await store.find_source("/nope") is None
    assert [s.id for s in await store.list_sources()] == [a.id, b.id]
    await store.remove_source(a.id)
    assert [s.url for s in await store.list_sources()] == ["/srv/list.txt"]
    with pytest.raises(NotFoundError):
        await store.get_source(a.id)


async def test_duplicate_source_and_unknown_ids(store):
    """The same URL twice is a DuplicateError; unknown ids are NotFoundError."""
    await store.add_source("https://example.test/a.txt")
    with pytest.raises(DuplicateError):
        await store.add_source("https://example.test/a.txt")
    secret = "https://user:hunter2@example.test/b.txt?key=s3cret"
    await store.add_source(secret)
    with pytest.raises(DuplicateError) as refused:  # the error names the source, never its secrets
        await store.add_source(secret)
    assert "hunter2" not in str(refused.value) and "s3cret" not in str(refused.value)
    with pytest.raises(NotFoundError):
        await store.remove_source(999)
    with pytest.raises(NotFoundError):
        await store.get_source(999)


async def test_record_scrape_success_and_failures(store):
    """A source keeps its last result: when, found, new, error, consecutive failures; success resets."""
    src = await store.add_source("https://example.test/a.txt")
    s = await store.record_scrape(src.id, at=T0, found=10, new=4, error=None)
    assert (s.last_run_at, s.last_success_at, s.last_found, s.last_new, s.last_error) == (T0, T0, 10, 4, None)
    t1, t2 = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    await store.record_scrape(src.id, at=t1, found=None, new=None, error="timeout")
    s = await store.record_scrape(src.id, at=t2, found=None, new=None, error="HTTP 500")
    assert s.consecutive_failures == 2 and s.last_error == "HTTP 500"
    assert s.last_run_at == t2 and s.last_success_at == T0 and s.last_found == 10
    s = await store.record_scrape(src.id, at=t2 + timedelta(hours=1), found=3, new=0, error=None)
    assert s.consecutive_failures == 0 and s.last_error is None and s.last_new == 0


async def test_removing_a_source_keeps_its_proxies(store):
    """With keep_proxies, proxies outlive their source (source_id becomes null)."""
    src = await store.add_source("https://example.test/a.txt")
    await store.upsert_proxies(src.id, [up("1.2.3.4:80")])
    assert await store.remove_source(src.id, keep_proxies=True) == []
    (p,) = await store.all_proxies()
    assert p.source_id is None


# -- upsert ----------------------------------------------------------------------------------------


async def test_upsert_dedupes_and_reports_only_new(store):
    """Dedupe on (protocol, host, port) within a call and against the table; 'new' is exactly what was added."""
    src = await store.add_source("https://example.test/a.txt")
    first = await store.upsert_proxies(
        src.id, [up("1.2.3.4:80"), up("1.2.3.4:80"), up("socks5://1.2.3.4:80"), up("http://u:p@5.6.7.8:3128")]
    )
    assert first.found == 3
    assert sorted(p.url for p in first.new) == sorted(
        ["http://1.2.3.4:80", "socks5://1.2.3.4:80", "http://u:p@5.6.7.8:3128"]
    )
    assert all(p.status is ProxyStatus.NEW and p.source_id == src.id for p in first.new)
    second = await store.upsert_proxies(src.id, [up("1.2.3.4:80"), up("9.9.9.9:8080")])
    assert second.found == 2
    assert [p.url for p in second.new] == ["http://9.9.9.9:8080"]
    assert len(await store.all_proxies()) == 4


async def test_upsert_does_not_reset_a_known_proxy(store):
    """Seeing a checked proxy again in a list keeps its status and figures."""
    (p,) = (await store.upsert_proxies(None, [up("1.2.3.4:80")])).new
    p.status, p.latency_ms, p.country, p.last_checked = ProxyStatus.ACTIVE, 42.0, "DE", T0
    await store.save_results([(p, [])])
    again = await store.upsert_proxies(None, [up("1.2.3.4:80")])
    assert again.new == []
    stored = await store.get_proxy(p.id)
    assert (stored.status, stored.latency_ms, stored.country) == (ProxyStatus.ACTIVE, 42.0, "DE")


async def test_new_detection_after_deletions(store):
    """After the newest proxies were deleted, a new upsert still reports exactly its own inserts."""
    result = await store.upsert_proxies(None, [up(f"10.0.0.{i}:80") for i in range(1, 6)])
    await store.delete_proxies([p.id for p in result.new[-2:]])
    again = await store.upsert_proxies(None, [up("10.0.0.1:80"), up("10.0.0.5:80"), up("10.0.0.9:80")])
    assert sorted(p.host for p in again.new) == ["10.0.0.5", "10.0.0.9"]


async def test_empty_upsert(store):
    """An empty list inserts nothing."""
    result = await store.upsert_proxies(None, [])
    assert result.found == 0 and result.new == []


async def test_insert_bulk_with_status(store):
    """Bulk load (benches, imports): rows with the given status, existing ones kept."""
    await store.upsert_proxies(None, [up("10.0.0.1:80")])
    n = await store.insert_proxies_bulk([up("10.0.0.1:80"), up("10.0.0.2:80")], ProxyStatus.ACTIVE)
    assert n == 2
    by_host = {p.host: p.status for p in await store.all_proxies()}
    assert by_host == {"10.0.0.1": ProxyStatus.NEW, "10.0.0.2": ProxyStatus.ACTIVE}


async def test_credentials_and_ipv6_roundtrip(store):
    """Credentials and IPv6 hosts survive the database unchanged."""
    (p,) = (await store.upsert_proxies(None, [up("socks5://us%3Aer:p%40ss@[2001:db8::1]:1080")])).new
    got = await store.get_proxy(p.id)
    assert got.upstream == UpstreamURL(ProxyProtocol.SOCKS5, "2001:db8::1", 1080, "us:er", "p@ss")


# -- check results ---------------------------------------------------------------------------------


async def test_save_results_writes_figures_and_check_log(store):
    """Figures of a checked proxy and its check rows land in one go; checks come back newest first."""
    (p,) = (await store.upsert_proxies(None, [up("1.2.3.4:80")])).new
    p.status = ProxyStatus.ACTIVE
    p.latency_ms, p.success_ratio, p.last_checked = 12.5, 0.75, T0
    p.exit_ip, p.anonymity, p.country, p.check_history = "5.5.5.5", AnonymityLevel.ELITE, "NL", "0111"
    await store.save_results([(p, [check(p.id, 1), check(p.id, 2, passed=False)])])
    got = await store.get_proxy(p.id)
    assert (got.status, got.latency_ms, got.success_ratio, got.last_checked) == (
        ProxyStatus.ACTIVE,
        12.5,
        0.75,
        T0,
    )
    assert (got.exit_ip, got.anonymity, got.country, got.check_history) == (
        "5.5.5.5",
        AnonymityLevel.ELITE,
        "NL",
        "0111",
    )
    checks = await store.get_checks(p.id)
    assert [c.checker for c in checks] == ["checker2", "checker1"]
    assert checks[0] == check(p.id, 2, passed=False)


async def test_dead_since_roundtrips(store):
    """A dead proxy keeps its dead_since and failure count."""
    (p,) = (await store.upsert_proxies(None, [up("1.2.3.4:80")])).new
    p.status, p.dead_since, p.consecutive_failures = ProxyStatus.DEAD, T0, 4
    await store.save_results([(p, [])])
    got = await store.get_proxy(p.id)
    assert (got.status, got.dead_since, got.consecutive_failures) == (ProxyStatus.DEAD, T0, 4)


async def test_check_log_is_trimmed_per_proxy(store):
    """Only the newest CHECK_LOG_KEEP rows are kept per proxy; other proxies' logs are untouched."""
    a, b = (await store.upsert_proxies(None, [up("1.2.3.4:80"), up("1.2.3.5:80")])).new
    await store.save_results([(b, [check(b.id, 0)])])
    for batch in range(3):
        rows = [check(a.id, batch * 30 + i) for i in range(30)]
        await store.save_results([(a, rows)])
    kept = await store.get_checks(a.id, limit=1000)
    assert len(kept) == CHECK_LOG_KEEP
    assert kept[0].checker == "checker89" and kept[-1].checker == f"checker{90 - CHECK_LOG_KEEP}"
    assert len(await store.get_checks(b.id)) == 1


async def test_results_for_a_deleted_proxy_are_dropped(store):
    """A check finishing after its proxy was removed writes nothing and fails nothing."""
    a, b = (await store.upsert_proxies(None, [up("1.2.3.4:80"), up("1.2.3.5:80")])).new
    await store.delete_proxies([a.id])
    await store.save_results([(a, [check(a.id, 1)]), (b, [check(b.id, 1)])])
    assert len(await store.get_checks(b.id)) == 1
    with pytest.raises(NotFoundError):
        await store.get_checks(a.id)


async def test_deleting_a_proxy_deletes_its_checks(store):
    """The check log goes with its proxy."""
    (a,) = (await store.upsert_proxies(None, [up("1.2.3.4:80")])).new
    await store.save_results([(a, [check(a.id, 1)])])
    await store.delete_proxies([a.id])
    await store.delete_proxies([])
    assert await count_rows(store, "proxy_checks") == 0


async def test_unknown_proxy_is_not_found(store):
    """get_proxy / get_checks for an unknown id: NotFoundError (404 in the API)."""
    with pytest.raises(NotFoundError):
        await store.get_proxy(12345)
    with pytest.raises(NotFoundError):
        await store.get_checks(12345)


# -- listing ---------------------------------------------------------------------------------------


@pytest.fixture
async def listed(store):
    """Twelve proxies: protocols, statuses, countries and anonymity levels mixed."""
    result = await store.upsert_proxies(
        None, [up(f"{'socks5' if i % 3 == 0 else 'http'}://10.0.1.{i}:80") for i in range(12)]
    )
    for i, p in enumerate(result.new):
        p.status = [ProxyStatus.ACTIVE, ProxyStatus.DEAD, ProxyStatus.NEW][i % 3 if i % 4 else 0]
        p.country = "DE" if i % 2 else "us"
        p.anonymity = AnonymityLevel.ELITE if i < 6 else None
    await store.save_results([(p, []) for p in result.new])
    return await store.all_proxies()


async def test_list_filters(store, listed):
    """Each filter, alone and combined, returns exactly the matching proxies and their total."""
    cases = [
        (ProxyFilter(), lambda p: True),
        (ProxyFilter(status=ProxyStatus.ACTIVE), lambda p: p.status is ProxyStatus.ACTIVE),
        (ProxyFilter(protocol=ProxyProtocol.SOCKS5), lambda p: p.protocol is ProxyProtocol.SOCKS5),
        (ProxyFilter(country="de"), lambda p: p.country == "DE"),
        (ProxyFilter(country="US"), lambda p: p.country == "us"),
        (ProxyFilter(anonymity=AnonymityLevel.ELITE), lambda p: p.anonymity is AnonymityLevel.ELITE),
        (
            ProxyFilter(status=ProxyStatus.ACTIVE, protocol=ProxyProtocol.HTTP, country="DE"),
            lambda p: (
                p.status is ProxyStatus.ACTIVE and p.protocol is ProxyProtocol.HTTP and p.country == "DE"
            ),
        ),
    ]
    for flt, pred in cases:
        expected = [p.id for p in listed if pred(p)]
        got, total = await store.list_proxies(flt)
        assert [p.id for p in got] == expected, flt
        assert total == len(expected), flt
    assert (await store.list_proxies(ProxyFilter(country="ZZ"))) == ([], 0)


async def test_list_paging(store, listed):
    """limit/offset page through the ordered result; total is the unpaged count."""
    ids = [p.id for p in listed]
    pages = []
    for offset in range(0, 12, 5):
        page, total = await store.list_proxies(ProxyFilter(), limit=5, offset=offset)
        assert total == 12
        pages += [p.id for p in page]
    assert pages == ids
    tail, total = await store.list_proxies(ProxyFilter(), limit=None, offset=10)
    assert [p.id for p in tail] == ids[10:] and total == 12
    beyond, total = await store.list_proxies(ProxyFilter(), limit=5, offset=100)
    assert beyond == [] and total == 12
    none, total = await store.list_proxies(ProxyFilter(), limit=0, offset=0)
    assert none == [] and total == 12


async def test_list_filtered_and_paged(store, listed):
    """Paging applies after filtering."""
    active = [p.id for p in listed if p.status is ProxyStatus.ACTIVE]
    page, total = await store.list_proxies(ProxyFilter(status=ProxyStatus.ACTIVE), limit=2, offset=1)
    assert [p.id for p in page] == active[1:3] and total == len(active)


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    """Two CLI commands on a fresh database race to create its tables: the loser finds them made."""
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    code = (
        "import asyncio, sys\nfrom pool.store import SqliteStore\n"
        "async def main():\n    store = await SqliteStore.open(sys.argv[1])\n    await store.close()\n"
        "asyncio.run(main())"
    )
    env = {**os.environ, "PYTHONPATH": root}
    for attempt in range(3):
        db = tmp_path / f"race{attempt}.db"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(db)], stderr=subprocess.PIPE, env=env) for _ in range(4)
        ]
        errors = [p.communicate(timeout=30)[1].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), [e[-300:] for e in errors if e]
