"""What each ``proxy-pool`` command does.  Output for people (tables, progress) or machines (JSON)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from config import ConfigError, Settings
from gateway import eventloop
from gateway.admin.token import NoTokenYet, stored_token
from gateway.app import ProxyPool, open_registry
from gateway.cli.common import CommandFailed, emit, open_store
from gateway.cli.serving import AdminClient, running_admin
from gateway.cli.users import users_command
from gateway.logs import setup_logging
from pool.errors import InvalidInputError, NotFoundError
from pool.models import AnonymityLevel, Proxy, ProxyProtocol, ProxyStatus, UpstreamURL
from pool.pipeline import CheckRun, Pipeline
from pool.resources import raise_open_files_limit
from pool.quality import source_figures, source_view
from pool.scraper import Scraper
from pool.sources import add_source
from pool.store import ProxyFilter, Store
from pool.tasks import TaskSet

__all__ = ["CommandFailed", "admin_token", "run", "serve"]

log = logging.getLogger("proxy_pool")


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    db = getattr(args, "db", None)
    storage = {} if not db else {"url": db} if db.startswith(("postgresql://", "postgres://")) else {"path": db}
    log_over = {k: v for k, v in (("format", args.log_format), ("level", args.log_level)) if v}
    return Settings.load(args.config, storage=storage, log=log_over, **overrides)


# serve ------------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    settings = load_settings(
        args,
        gateway={"listen": args.listen} if args.listen else {},
        admin={"listen": args.admin_listen} if args.admin_listen else {},
        default_sources=False if args.no_default_sources else None,
    )
    if args.workers < 1:
        raise ConfigError(f"--workers must be 1 or more, got {args.workers}")
    setup_logging(settings.log.level, settings.log.format, settings.log.access_log)
    raised = raise_open_files_limit()  # once, before workers start: they inherit it
    if raised is not None:
        log.info("open files: soft limit raised from %d to %d (the hard limit)", *raised)
    if args.workers > 1:
        from gateway.cli.workers import run_workers

        return run_workers(args, settings)
    main = _serve(
        settings, args.proxies, replica_name=args.replica_name, worker=args.worker_of is not None, pool_lock=args.pool_lock
    )
    return eventloop.run(main)


async def _serve(
    settings: Settings,
    extra_sources: list[str],
    *,
    replica_name: str | None = None,
    worker: bool = False,
    pool_lock: int | None = None,
) -> int:
    """One serving process; ``worker``: one of ``serve --workers N`` (``pool_lock``: on a SQLite file,
    the supervisor's serve lock it inherited)."""
    parent = os.getppid()  # the supervisor, read before start-up: it may die while this worker starts
    pool = ProxyPool(settings, extra_sources=extra_sources, replica_name=replica_name)
    pool.reuse_port = worker
    pool.pool_lock = pool_lock
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await pool.start()
    except OSError as exc:
        raise CommandFailed(f"cannot start: {exc.strerror or exc}") from None
    orphan = TaskSet()
    if worker:
        orphan.spawn(_stop_when_orphaned(parent, stop), name="supervisor-watch")
    try:
        await stop.wait()
        log.info("stopping: draining connections and flushing state")
    finally:
        await orphan.close()
        await pool.stop()
    log.info("stopped")
    return 0


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (kill -9) stops too: nobody would stop or restart it."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("the supervisor of this worker is gone: stopping")
    stop.set()


# admin-token ------------------------------------------------------------------------------
def admin_token(args: argparse.Namespace) -> int:
    """Print the token for scripts (``curl -H "Authorization: Bearer $(proxy-pool admin-token)"``)."""
    try:
        print(stored_token(load_settings(args)))
    except NoTokenYet as exc:
        raise CommandFailed(str(exc)) from None
    return 0


# ca ---------------------------------------------------------------------------------------
def ca(args: argparse.Namespace) -> int:
    """Print the interception CA's certificate (``curl --cacert <(proxy-pool ca)``); never its key.
    Without ``gateway.intercept_ca`` the CA is generated beside the database at first need."""
    from gateway.proxy.certs import ensure_ca

    sys.stdout.write(ensure_ca(load_settings(args)).pem.decode("ascii"))
    return 0


# dispatch ---------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    setup_logging(settings.log.level if args.log_level else "warning", settings.log.format)
    handler: Callable[[argparse.Namespace, Settings], Any] = {
        "check": _check,
        "proxies": _proxies,
        "sources": _sources,
        "users": _users,
        "plugins": _plugins,
    }[args.command]
    result = await handler(args, settings)
    return int(result or 0)


# check ------------------------------------------------------------------------------------
class _Progress:
    """A one-line progress bar on a terminal's stderr; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.enabled = sys.stderr.isatty() and total > 0

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 60 + "\r")
            sys.stderr.flush()


@contextlib.asynccontextmanager
async def _local_judge() -> AsyncIterator[str]:
    """A judge on 127.0.0.1 for proxies on this machine (the same answer as the admin's /judge)."""
    from gateway.admin.routes import judge, judge_page

    app = web.Application()
    app.router.add_route("*", "/judge", judge)
    app.router.add_get("/judge/page", judge_page)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/judge"
    finally:
        await runner.cleanup()


def _check_row(run: CheckRun) -> dict[str, Any]:
    proxy, verdict = run.proxy, run.verdict
    assert verdict is not None
    failed = run.failed
    if verdict.passed is None:
        skipped = next((c.name for c, r in run.results if r.skipped), None)
        detail = next((r.detail for _, r in run.results if r.skipped), "no verdict")
        status, failed_check, detail = "dead", skipped, f"no verdict: {detail}"
    else:
        status = "active" if verdict.passed else "dead"
        failed_check = failed[0].name if failed else None
        detail = failed[1].detail if failed else ""
    return {
        "proxy": proxy.display_url,
        "status": status,
        "protocol": proxy.protocol.value,
        "latency_ms": None if proxy.latency_ms is None else round(proxy.latency_ms, 1),
        "anonymity": proxy.anonymity.value if proxy.anonymity else None,
        "exit_ip": proxy.exit_ip,
        "country": proxy.country,
        "failed_check": failed_check,
        "detail": detail,
    }


def _read_proxy_lines(args: argparse.Namespace) -> list[str]:
    lines = list(args.proxies)
    if args.file:
        try:
            text = Path(args.file).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise InvalidInputError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line.split()[0])
    if not lines:
        raise InvalidInputError("give proxy URLs or --file F")
    return lines


async def _check(args: argparse.Namespace, settings: Settings) -> int:
    upstreams: list[UpstreamURL] = []
    for text in _read_proxy_lines(args):
        try:
            upstreams.append(UpstreamURL.parse(text, default_protocol=ProxyProtocol.HTTP))
        except ValueError as exc:
            raise InvalidInputError(f"{text!r}: {exc}") from None
    if args.judge:
        for url in args.judge:
            if not url.startswith(("http://", "https://")):
                raise InvalidInputError(f"--judge {url!r} is not an http(s) URL")
        settings = settings.model_copy(
            update={"checker": settings.checker.model_copy(update={"judges": list(args.judge)})}
        )
    registry = await open_registry(settings)
    proxies = [Proxy(id=i + 1, upstream=u) for i, u in enumerate(upstreams)]
    progress = _Progress(len(proxies))
    async with _local_judge() as judge_url:
        pipeline = Pipeline(settings, registry, None, None, self_judge=None if args.judge else judge_url)
        await pipeline.start(workers=False)
        limit = asyncio.Semaphore(settings.checker.concurrency)

        async def one(proxy: Proxy) -> CheckRun:
            async with limit:
                run = await pipeline.check_one(proxy)
            progress.step()
            return run

        try:
            runs = await asyncio.gather(*(one(p) for p in proxies))
        finally:
            progress.close()
            await pipeline.stop()
    rows = [_check_row(r) for r in runs]
    columns = ("proxy", "status", "protocol", "latency_ms", "anonymity", "exit_ip", "country", "failed_check", "detail")
    emit(rows, columns, args.format)
    return 0


# proxies ----------------------------------------------------------------------------------
async def _proxies(args: argparse.Namespace, settings: Settings) -> int:
    action = getattr(args, "action", None)
    if action == "recheck":
        return await _recheck(args, settings)
    if action == "remove":
        return await _remove_proxies(args, settings)
    country = args.country
    if country is not None and (len(country) != 2 or not country.isalpha()):
        raise InvalidInputError(f"--country {country!r}: expected a two-letter ISO code")
    flt = ProxyFilter(
        status=ProxyStatus(args.status) if args.status else None,
        protocol=ProxyProtocol(args.protocol) if args.protocol else None,
        country=country.upper() if country else None,
        anonymity=AnonymityLevel(args.anonymity) if args.anonymity else None,
    )
    async with open_store(settings) as store:
        proxies, _ = await store.list_proxies(flt)
    if args.format == "txt":
        for proxy in proxies:
            print(proxy.url)  # with credentials: the user asked for a list to use elsewhere
        return 0
    rows = [p.public_dict() for p in proxies]
    emit(
        rows,
        ("id", "url", "status", "latency_ms", "anonymity", "country", "exit_ip", "tunnels", "last_checked"),
        args.format,
    )
    return 0


async def _chosen_proxies(store: Store, args: argparse.Namespace) -> list[Proxy]:
    """The proxies named by ids (every one must exist, else nothing is done), by a status, or all."""
    chosen = [bool(args.ids), args.recheck_status is not None, args.all]
    if sum(chosen) != 1:
        raise InvalidInputError("give proxy ids, --status S or --all (one of them)")
    if args.ids:
        found = {p.id: p for p in await store.get_proxies(sorted(set(args.ids)))}
        missing = [i for i in dict.fromkeys(args.ids) if i not in found]
        if missing:
            raise NotFoundError(f"no proxy with id {', '.join(map(str, missing))}; nothing was re-checked")
        return [found[i] for i in dict.fromkeys(args.ids)]
    status = ProxyStatus(args.recheck_status) if args.recheck_status else None
    proxies, _ = await store.list_proxies(ProxyFilter(status=status))
    return proxies


def _recheck_row(proxy: dict[str, Any], failed_check: str | None, detail: str) -> dict[str, Any]:
    return {
        "id": proxy["id"],
        "url": proxy["url"],
        "status": proxy["status"],
        "latency_ms": proxy["latency_ms"],
        "failed_check": failed_check,
        "detail": detail,
    }


async def _recheck(args: argparse.Namespace, settings: Settings) -> int:
    """Through a running serve of this SQLite file (its pool changes at once), else here: the verdicts
    go to the database (replicas on PostgreSQL hear them)."""
    async with open_store(settings) as store:
        proxies = await _chosen_proxies(store, args)
        progress = _Progress(len(proxies))
        limit = asyncio.Semaphore(settings.checker.concurrency)
        admin = await running_admin(settings)
        if admin is not None:
            async with AdminClient(admin, settings) as client:

                async def remote(proxy: Proxy) -> dict[str, Any]:
                    async with limit:
                        answer = await client.call("POST", f"/api/proxies/{proxy.id}/recheck")
                    progress.step()
                    return _recheck_row(answer["proxy"], answer["failed_check"], answer["detail"])

                try:
                    rows = await asyncio.gather(*(remote(p) for p in proxies))
                finally:
                    progress.close()
        else:
            registry = await open_registry(settings)
            async with _local_judge() as judge_url:
                pipeline = Pipeline(settings, registry, store, None, self_judge=judge_url)
                await pipeline.start(workers=False)

                async def local(proxy: Proxy) -> dict[str, Any]:
                    async with limit:
                        run = await pipeline.check_one(proxy)
                    progress.step()
                    row = _check_row(run)
                    return _recheck_row(proxy.public_dict(), row["failed_check"], row["detail"])

                try:
                    rows = await asyncio.gather(*(local(p) for p in proxies))
                finally:
                    progress.close()
                    await pipeline.stop()  # writes the verdicts
    emit(list(rows), ("id", "url", "status", "latency_ms", "failed_check", "detail"), args.format)
    return 0


async def _remove_proxies(args: argparse.Namespace, settings: Settings) -> int:
    ids = list(dict.fromkeys(args.ids))
    async with open_store(settings) as store:
        found = {p.id for p in await store.get_proxies(ids)}
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFoundError(f"no proxy with id {', '.join(map(str, missing))}; nothing was removed")
        admin = await running_admin(settings)
        if admin is not None:
            async with AdminClient(admin, settings) as client:
                for proxy_id in ids:
                    await client.call("DELETE", f"/api/proxies/{proxy_id}")
        else:
            await store.delete_proxies(ids)
    print(f"removed {len(ids)} {'proxy' if len(ids) == 1 else 'proxies'}: {', '.join(map(str, ids))}")
    return 0


# sources ----------------------------------------------------------------------------------
async def _sources(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        if args.action == "list":
            sources = await store.list_sources()
            figures = source_figures(sources, await store.source_activity(), datetime.now(UTC))
            rows = [source_view(s, figures[s.id]) for s in sources]
            for row in rows:
                row["state"] = "quarantined" if row["quarantined"] else ("failing" if row["last_error"] else "ok")
            emit(
                rows,
                (
                    "id", "url", "parser", "schedule", "default_protocol", "last_run_at", "last_found", "last_new", "active",
                    "survival_1h", "survival_24h", "median_latency_ms", "state", "last_error",
                ),
                args.format,
            )
            return 0
        if args.action == "remove":
            admin = await running_admin(settings)
            if admin is not None:  # the running serve drops the proxies from its pool too
                query = "?keep_proxies=true" if args.keep_proxies else ""
                async with AdminClient(admin, settings) as client:
                    answer = await client.call("DELETE", f"/api/sources/{args.id}{query}")
                removed = int(answer["proxies_removed"])
            else:
                removed = len(await store.remove_source(args.id, keep_proxies=args.keep_proxies))
            if args.keep_proxies:
                print(f"removed source {args.id}; its proxies stay in the pool")
            elif removed == 0:
                print(f"removed source {args.id}")
            else:
                print(
                    f"removed source {args.id} and {removed} {'proxy' if removed == 1 else 'proxies'} no other "
                    "source listed (--keep-proxies keeps them)"
                )
            return 0
        registry = await open_registry(settings)
        if args.action == "add":
            source = await add_source(
                store, registry, args.url, parser=args.parser, schedule=args.schedule, protocol=args.protocol
            )
            print(f"added source {source.id}: {source.display_url}")
            return 0
        # scrape
        sources = [await store.get_source(args.id)] if args.id is not None else await store.list_sources()
        if not sources:
            raise InvalidInputError("no sources: add one with `proxy-pool sources add URL`")
        scraper = Scraper(store, registry, settings.fetch)
        progress = _Progress(len(sources))
        rows = []
        try:
            for source in sources:
                result = await scraper.scrape(source)
                progress.step()
                rows.append(
                    {"id": source.id, "url": source.display_url, "found": result.found, "new": len(result.new), "error": result.error}
                )
        finally:
            progress.close()
            await scraper.close()
        emit(rows, ("id", "url", "found", "new", "error"), args.format)
        return 1 if all(r["error"] for r in rows) else 0


# users ------------------------------------------------------------------------------------
async def _users(args: argparse.Namespace, settings: Settings) -> int:

    return await users_command(args, settings)


# plugins ----------------------------------------------------------------------------------
async def _plugins(args: argparse.Namespace, settings: Settings) -> int:
    registry = await open_registry(settings)
    running = await _running_plugin_health(settings)  # what a serving proxy-pool has seen them do
    errors: dict[str, int] = running.get("errors", {}) if running else {}
    disabled: dict[str, str] = running.get("disabled", {}) if running else {}
    rows = []
    for info in registry.describe():
        stage = f"{info.stage}/{info.priority}" if info.stage is not None else ""
        if info.kind == "error":
            health = "error: " + (info.error or "")
        elif info.kind == "off":
            health = "not configured"
        elif info.kind == "checker" and (info.name in disabled or info.error):
            health = disabled.get(info.name) or info.error or ""
        elif errors.get(info.name):
            health = f"ok, {errors[info.name]} errors while serving"
        else:
            health = "ok"
        rows.append({"kind": info.kind, "name": info.name, "module": info.module, "stage": stage, "health": health})
    emit(rows, ("kind", "name", "module", "stage", "health"), args.format)
    return 0


async def _running_plugin_health(settings: Settings) -> dict[str, Any] | None:
    """The ``plugins`` part of a running serve's ``/api/stats`` (errors, disabled checkers), or None
    when no serve answers on ``admin.listen``: the listing then shows what discovery found."""
    import aiohttp

    host, port = settings.admin.host_port
    if port == 0:
        return None
    try:
        token = stored_token(settings)
    except NoTokenYet:
        return None  # no serve has run on this database yet
    headers = {"Authorization": f"Bearer {token}"}
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2), trust_env=False) as session:
            async with session.get(f"http://{netloc}/api/stats", headers=headers) as resp:
                if resp.status != 200:
                    return None
                stats = await resp.json()
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    plugins = stats.get("plugins") if isinstance(stats, dict) else None
    return plugins if isinstance(plugins, dict) else None

