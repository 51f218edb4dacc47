"""The composition root: settings -> store -> plugins -> pool services -> servers.

``ProxyPool`` owns every long-lived piece and starts and stops them in order (stop in reverse):
nothing leaks past ``stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config import ConfigError, Settings
from gateway.admin.token import ensure_token
from gateway.metrics import Metrics, SourceSample
from gateway.proxy.certs import CertificateAuthority, ensure_ca
from gateway.proxy.server import GatewayServer
from plugins.discovery import load_all_plugins
from plugins.watchdog import LoopWatchdog
from plugins.registry import PluginConflictError, PluginRegistry
from pool.accounts import Accounts
from pool.dbfiles import LeaderLock, ServeLock, ServeLockHeld, local_database
from pool.errors import DuplicateError
from pool.models import Proxy, masked_url, scrub_url_secrets
from pool.events import EventBus
from pool.pipeline import Pipeline, PoolLowWatch
from pool.scheduler import Scheduler
from pool.scraper import Scraper, ScrapeResult
from pool.selector import Selector
from pool.sites import SiteHealth
from pool.sources import DEFAULT_SOURCES, add_source, normalise_source_url
from pool.stores import open_store
from pool.tasks import TaskSet

__all__ = ["ProxyPool", "open_registry"]

log = logging.getLogger("proxy_pool")

LEADER_POLL = 0.5  # seconds between a waiting worker's tries of the leader lock (a takeover's delay)


async def open_registry(settings: Settings, events: EventBus | None = None) -> PluginRegistry:
    """Discover plugins; a parser name conflict is a configuration error (one line, exit 2)."""
    registry = PluginRegistry(events)
    try:
        await load_all_plugins(settings, registry)
    except PluginConflictError as exc:
        raise ConfigError(f"plugin conflict: {exc}") from None
    return registry


class ProxyPool:
    def __init__(
        self, settings: Settings, *, extra_sources: list[str] | None = None, replica_name: str | None = None
    ) -> None:
        self.settings = settings
        self.extra_sources = list(extra_sources or [])
        # a replica's name: its leases and its ``replica`` metric label (default: host name and port,
        # made unique among live replicas at start: ``_hold_name``)
        self.replica = replica_name or f"{socket.gethostname()}:{settings.gateway.host_port[1]}"
        self._named = replica_name is not None
        self.reuse_port = False  # a worker of ``serve --workers N``
        self.pool_lock: int | None = None  # ... on a SQLite file: the serve lock it inherited (a descriptor)
        self._leader: LeaderLock | None = None  # ... which then runs the background work only while it holds this
        self._heard_ids: set[int] = set()
        self._resync = False
        self._heard = asyncio.Event()
        self._tasks = TaskSet()
        self.started = False
        self.gateway_address: tuple[str, int] | None = None
        self.admin_address: tuple[str, int] | None = None
        self.notifier_health: dict[str, dict[str, Any]] = {}
        self.accounts: Any = None
        self._changed = asyncio.Event()
        self._lock: ServeLock | None = None
        self.admin_token = ""
        self.intercept_ca: CertificateAuthority | None = None  # gateway.intercept_listen: the CA it mints with
        self._cli_scrapes: list[asyncio.Task[Any]] = []

    @property
    def intercept_ca_pem(self) -> bytes | None:
        """The interception CA's certificate for ``/ca.pem`` (None: interception is off); never its key."""
        return self.intercept_ca.pem if self.intercept_ca is not None else None

    async def start(self) -> None:
        settings = self.settings
        database = local_database(settings.storage)
        if database is not None:  # a shared store (PostgreSQL) has replicas by design: no lock
            lock = ServeLock(database)
            try:
                if self.pool_lock is not None:  # a worker: the lock its supervisor holds for the pool
                    lock.adopt(self.pool_lock)
                else:
                    lock.acquire()
            except ServeLockHeld as exc:
                raise ConfigError(str(exc)) from None
            self._lock = lock
            if self.pool_lock is not None:
                self._leader = LeaderLock(database)
        try:
            self.admin_token, token_path = ensure_token(settings)
            if token_path is not None:
                log.info("admin API token: in %s (`proxy-pool admin-token` prints it)", token_path)
            _warn_if_open(settings)
            if settings.gateway.intercept_listen:
                self.intercept_ca = ensure_ca(settings)
                log.info("HTTPS interception CA: %s (`proxy-pool ca` prints it)", self.intercept_ca.source)
            self.store = await open_store(settings.storage.location, shared=self._leader is not None)
            await self._hold_name()
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _hold_name(self) -> None:
        """Hold this replica's name in the store while it lives: two live replicas with one name would
        forfeit each other's credit leases.  A name given (``--replica-name``) that a live replica holds
        stops the start; the default takes the first free of HOST:PORT, HOST:ADDRESS:PORT, HOST:PORT/PID."""
        if self._named:
            if not await self.store.hold_replica_name(self.replica):
                raise ConfigError(
                    f"replica name {self.replica!r} is held by a live replica on this database; "
                    "give each replica its own --replica-name"
                )
            return
        host, port = socket.gethostname(), self.settings.gateway.host_port[1]
        address = self.settings.gateway.host_port[0]
        candidates = [self.replica, f"{host}:{address}:{port}", f"{self.replica}/{os.getpid()}"]
        candidates += [f"{self.replica}/{os.getpid()}.{n}" for n in range(2, 100)]
        for name in dict.fromkeys(candidates):
            if await self.store.hold_replica_name(name):
                if name != self.replica:
                    log.info("replica name %s is held by a live replica: this one is %s", self.replica, name)
                self.replica = name
                return
        raise ConfigError(f"no free replica name from {self.replica!r}: give this replica a --replica-name")

    async def _start(self) -> None:
        settings = self.settings
        self.events = EventBus()
        self.events.marks = self.store  # notifiers hear each event once per pool (workers, replicas)
        self.registry = await open_registry(settings, self.events)
        self.selector = Selector(
            settings.gateway.strategy,
            failure_limit=settings.pool.passive_failure_limit,
            session_ttl=settings.gateway.session_ttl,
            max_sessions=settings.gateway.max_sessions,
            sites=SiteHealth(settings.gateway.site_ban_seconds),
            distinct_exit=settings.gateway.distinct_exit,
            distinct_window=settings.gateway.distinct_exit_window,
        )
        self.selector.load(await self.store.all_proxies())
        self.metrics = Metrics(pool_counts=self.selector.counts, country_counts=self._country_counts)
        self.metrics.tunnel_counts = self.selector.tunnel_counts
        if self.store.shared or self._named:
            self.metrics.replica = self.replica
        self.events.add_listener(self.metrics.on_event)
        self.events.add_listener(_log_event)
        for checker in self.registry.checkers:
            self.metrics.register_checker(checker.name)
        self.registry.health.on_error = self.metrics.plugin_error
        self.events.on_plugin_error = self.registry.health.failed
        for info in self.registry.errors:  # modules skipped at discovery count as their plugin's errors
            self.metrics.plugin_error(Path(info.module).stem if "/" in info.module else info.module)
        self.watchdog = LoopWatchdog(self.registry.health)
        self.watchdog.start()
        self.pool_low = PoolLowWatch(
            settings.pool.low_threshold,
            lambda event: self.registry.emit_nowait(event) if self.leading() else None,
            self.selector.active_count,
        )
        self.selector.on_change = self._pool_changed

        from gateway.admin import start_admin  # the admin needs the services built above

        admin_host, admin_port = settings.admin.host_port
        self.pipeline = Pipeline(
            settings,
            self.registry,
            self.store,
            self.selector,
            observe=self.metrics.check_done,
        )
        self.selector.on_bench = lambda proxy: self.pipeline.submit([proxy])
        self.selector.on_suspect = lambda proxy: self.pipeline.submit([proxy])  # target failures: re-check now
        self.scraper = Scraper(
            self.store, self.registry, settings.fetch, on_new=self._new_proxies, on_scraped=self._scraped
        )
        self.scheduler = Scheduler(
            settings, self.store, self.registry, self.scraper, self.pipeline, self.selector, leading=self.leading
        )
        self.accounts = await Accounts.open(
            self.store,
            settings.credits,
            on_event=lambda type_, payload: self.registry.emit_event(type_, **payload),
            on_spent=self.metrics.credits_spent,
            replica=self.replica,
        )
        self.accounts.start()
        self.gateway = GatewayServer(
            settings, self.selector, metrics=self.metrics, accounts=self.accounts, intercept_ca=self.intercept_ca
        )
        self.gateway.reuse_port = self.reuse_port
        self.admin_runner, self.admin_address = await start_admin(self, admin_host, admin_port, self.admin_token)
        self.gateway.add_own_address(*self.admin_address)
        if self._lock is not None:  # the CLI reaches this serve's admin API through the lock file
            self._lock.announce(*self.admin_address)
        self.pipeline.self_judge = f"http://{_netloc(*self.admin_address)}/judge"
        await self._sync_sources()
        for source in await self.store.list_sources():
            self.metrics.register_source(source.id)
        await self.pipeline.start()
        self.gateway_address = await self.gateway.start()
        self.metrics.source_quality = self._source_samples
        if self._leader is not None and not self._leader.try_acquire():
            self._tasks.spawn(self._lead(), name="leader-wait")
        elif self._leader is not None:
            self._leading_now()
        await self.scheduler.start()
        self._tasks.spawn(self._notifier_health_loop(), name="notifier-health")
        self._tasks.spawn(self._after_first_round(), name="first-round")
        self._tasks.spawn(self._follow_changes(), name="follow-changes")
        self.store.subscribe(self._store_changed)
        self.started = True
        sources = await self.store.list_sources()
        if not self.settings.default_sources:  # the ones that will be scraped
            sources = [s for s in sources if s.origin != "default"]
        socks = self.gateway.socks_address
        intercept = self.gateway.intercept_address
        log.info(
            "proxy-pool serving: gateway %s, admin %s, event loop %s, pool of %d proxies (%d active), %d sources%s%s",
            _netloc(*self.gateway_address),
            _netloc(*self.admin_address),
            type(asyncio.get_running_loop()).__module__.partition(".")[0],
            len(self.selector),
            self.selector.active_count,
            len(sources),
            f", SOCKS-only port {_netloc(*socks)}" if socks else "",
            f", HTTPS interception port {_netloc(*intercept)}" if intercept else "",
        )

    async def _sync_sources(self) -> None:
        """Config, default and ``--proxies`` sources into the store; ``--proxies`` scraped at once."""
        settings = self.settings
        wanted: list[tuple[str, str | None, str | None, str, str]] = [
            (s.url, s.parser, s.schedule, s.default_protocol, "config") for s in settings.sources
        ]
        if settings.default_sources:
            wanted += [(url, "plaintext", None, proto.value, "default") for url, proto in DEFAULT_SOURCES]
        for url, parser, schedule, protocol, origin in wanted:
            try:
                await add_source(
                    self.store, self.registry, url, parser=parser, schedule=schedule, protocol=protocol, origin=origin
                )
            except DuplicateError:
                pass
            except ValueError as exc:
                raise ConfigError(f"sources: {masked_url(url)}: {scrub_url_secrets(str(exc), url)}") from None
        for url in self.extra_sources:
            try:
                normalised = normalise_source_url(url)
            except ValueError as exc:
                raise ConfigError(f"--proxies {masked_url(url)}: {scrub_url_secrets(str(exc), url)}") from None
            source = await self.store.find_source(normalised)
            if source is None:
                # a local list is plain text unless its name says otherwise (issue 3: bare host:port lines)
                suffix = normalised.rsplit("/", 1)[-1].rpartition(".")[2].lower()
                local = normalised.startswith("file://")
                parser = "plaintext" if local and suffix not in ("json", "html", "htm") else None
                try:
                    source = await add_source(self.store, self.registry, normalised, parser=parser, origin="cli")
                except DuplicateError:  # a replica started with the same list (serve --workers) added it first
                    source = await self.store.find_source(normalised)
                    if source is None:
                        raise
            # replicas started with the same list: the first to claim it scrapes it
            if await self.store.claim_source(source.id, source.last_run_at, datetime.now(UTC)):
                self._cli_scrapes.append(self._tasks.spawn(self.scraper.scrape(source), name=f"scrape-cli-{source.id}"))

    def leading(self) -> bool:
        """Whether this process runs the background work: always, but for a worker of a pool on a SQLite
        file that does not hold the leader lock (replicas on PostgreSQL split it by claims instead)."""
        return self._leader is None or self._leader.held

    async def _lead(self) -> None:
        """Wait for the leader lock (the kernel drops it when the leader dies), then lead."""
        assert self._leader is not None
        while not self._leader.try_acquire():
            await asyncio.sleep(LEADER_POLL)
        self._leading_now()
        self.scheduler.wake()

    def _leading_now(self) -> None:
        log.info("%s (pid %d) leads: it scrapes, checks and runs the pool's passes", self.replica, os.getpid())

    def _source_samples(self) -> dict[int, SourceSample]:
        """The per-source gauges: the scheduler's figures as of its last quality pass (no SQL at scrape time)."""
        figures = self.scheduler.figures
        return {
            s.id: SourceSample(
                active=figures[s.id].active,
                median_latency_ms=figures[s.id].median_latency_ms,
                survival_1h=s.public_dict()["survival_1h"],
                survival_24h=s.public_dict()["survival_24h"],
                quarantined=s.quarantined,
            )
            for s in self.scheduler.sources
            if s.id in figures
        }

    async def _after_first_round(self) -> None:
        """Once the first scrapes and their checks are over: say so when nothing came of them."""
        await self.scheduler.first_round.wait()
        if self._cli_scrapes:
            await asyncio.wait(self._cli_scrapes)
        await self.pipeline.wait_idle()
        self.pool_low.first_round_over(self.selector.active_count)
        if len(self.selector) > 0 or not self.leading():  # (the leader says it for the workers)
            return
        sources = await self.store.list_sources()
        if not self.settings.default_sources:  # the ones that are scraped
            sources = [s for s in sources if s.origin != "default"]
        if not sources:
            log.warning(
                "the pool is empty and there is no source to scrape: give a list with --proxies FILE "
                "or add one with `proxy-pool sources add URL`"
            )
        elif all(s.last_error is not None for s in sources):
            log.warning(
                "every source failed its first scrape and the pool is empty: check the network, give a list "
                "with --proxies FILE, and see `proxy-pool sources list` for each source's error"
            )

    # other replicas' changes (a shared store announces them; a store of our own never does) ----
    def _store_changed(self, kind: str, ids: list[int]) -> None:
        if kind == "proxies":
            self._heard_ids.update(ids)
        elif kind == "deleted":
            for proxy_id in ids:
                self.selector.remove(proxy_id)
        elif kind == "sources":
            self.scheduler.wake()
        elif kind == "resync":
            self._resync = True
        else:
            return
        self._heard.set()

    async def _follow_changes(self) -> None:
        """Bring changed proxies into the selector (only ids travel); everything after a reconnect."""
        while True:
            await self._heard.wait()
            self._heard.clear()
            ids, self._heard_ids = self._heard_ids, set()
            resync, self._resync = self._resync, False
            try:
                if resync:
                    fresh = await self.store.all_proxies()
                    gone = {p.id for p in self.selector.proxies()} - {p.id for p in fresh}
                else:
                    fresh = await self.store.get_proxies(sorted(ids))
                    gone = ids - {p.id for p in fresh}
                for source in await self.store.list_sources():
                    self.metrics.register_source(source.id)
            except Exception as exc:  # noqa: BLE001  (the database is away: keep serving, try again shortly)
                log.warning("could not read changes from the database (%s); retrying", exc)
                self._heard_ids |= ids
                self._resync |= resync
                await asyncio.sleep(1.0)
                self._heard.set()
                continue
            for proxy in fresh:
                self.selector.update(proxy, notify=False)
            for proxy_id in gone:
                self.selector.remove(proxy_id)
            if fresh:
                self._pool_changed()

    def _new_proxies(self, proxies: list[Proxy]) -> None:
        """New proxies are in the pool's view (status ``new``, listed, not picked) while they are checked."""
        for proxy in proxies:
            self.selector.update(proxy, notify=False)
        self.pipeline.submit(proxies)

    def remove_proxies(self, proxy_ids: list[int]) -> None:
        """Proxies deleted from the store leave the view; a check still running for them is dropped."""
        self.pipeline.forget(proxy_ids)
        for proxy_id in proxy_ids:
            self.selector.remove(proxy_id)

    def _pool_changed(self) -> None:
        self.pool_low.observe(self.selector.active_count)
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait for a condition on the pool, woken by every change (for tests and tooling)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _scraped(self, result: ScrapeResult) -> None:
        self.metrics.register_source(result.source.id)
        self.metrics.scrape_done(result.source.id, result.error is None, result.found)

    def _country_counts(self) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for proxy in self.selector.proxies():
            if proxy.status.value == "active":
                counts[proxy.country] = counts.get(proxy.country, 0) + 1
        return counts

    async def _notifier_health_loop(self) -> None:
        while True:
            await self.check_notifiers()
            await asyncio.sleep(self.settings.notifiers.health_interval)

    async def check_notifiers(self) -> None:
        for notifier in self.registry.notifiers:
            try:
                up = bool(await asyncio.wait_for(notifier.health_check(), 15))
                error = None if up else "health check failed"
            except Exception as exc:
                up, error = False, f"{type(exc).__name__}: {exc}"[:200]
                if not isinstance(exc, TimeoutError):
                    self.registry.health.failed(notifier.name, "health_check", exc)
            was = self.notifier_health.get(notifier.name, {}).get("up")
            self.notifier_health[notifier.name] = {"up": up, "error": error}
            self.metrics.notifier_up(notifier.name, up)
            if was is not False and not up:
                log.warning("notifier %s is down: %s", notifier.name, error)

    async def stop(self) -> None:
        """Reverse order: stop taking requests, drain, stop background work, flush, close."""
        for name in ("gateway",):
            server = getattr(self, name, None)
            if server is not None and self.started:
                await server.stop()
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            await scheduler.stop()
        watchdog = getattr(self, "watchdog", None)
        if watchdog is not None:
            watchdog.stop()
        await self._tasks.close()
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            await pipeline.stop()
        scraper = getattr(self, "scraper", None)
        if scraper is not None:
            await scraper.close()
        if self.accounts is not None and hasattr(self.accounts, "close"):
            await self.accounts.close()
        runner = getattr(self, "admin_runner", None)
        if runner is not None:
            await runner.cleanup()
        events = getattr(self, "events", None)
        if events is not None:
            await events.drain(2.0)
        registry = getattr(self, "registry", None)
        if registry is not None:
            for notifier in registry.notifiers:
                close = getattr(notifier, "close", None)
                if close is not None:
                    try:
                        await close()
                    except Exception:
                        log.debug("closing notifier %s failed", notifier.name, exc_info=True)
        store = getattr(self, "store", None)
        if store is not None:
            await store.close()
        if self._leader is not None:
            self._leader.release()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        self.started = False


def _warn_if_open(settings: Settings) -> None:
    """``allow_open`` lets a public gateway without auth start: say so at every start, not only once."""
    gateway = settings.gateway
    open_ports = gateway.open_listen_keys()
    if gateway.allow_open and open_ports:
        log.warning(
            "gateway.allow_open = true: the gateway on %s is an open proxy (no authentication) for anyone who "
            "can reach it; keep that port firewalled or published on 127.0.0.1 only, or set gateway.auth = \"users\"",
            ", ".join(value for _, value in open_ports),
        )


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log_event(event: Any) -> None:
    if event.type in ("proxy.pool_low", "source.stale", "credits.exhausted"):
        log.warning("event %s %s", event.type, event.payload)
