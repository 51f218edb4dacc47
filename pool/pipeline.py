"""Runs the checker plugins over proxies, stage by stage, and acts on what they say.

Within a stage the checkers run together (``asyncio.gather``); the first stage with a failure ends
the run.  A checker that overruns its timeout is a failed check.  A checker that raises (or
returns something that is no ``CheckResult``) has a bug: that is no verdict on the proxy (the run
records it as skipped, the proxy keeps its status), it is counted as the plugin's error, and a
checker that raised on each of its first 20 proxies is disabled (``plugins.health``).  One that
returns ``skipped`` gives no verdict either, nor does a check that failed for want of this process's
own descriptors, socket buffers or memory (``pool.resources``: its error, or the C library's wording of
it in the detail, which every checker quotes), whatever the proxy.  Every result goes
to the check log, written behind in batches: the selector learns the new state at once, the
database a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime

import aiohttp

from config import Settings
from plugins.health import PluginHealth
from plugins.protocols import CheckContext, CheckResult, ProxyChecker
from plugins.registry import PluginRegistry
from pool.lifecycle import RunVerdict, apply_run
from pool.models import Event, Occasion, Proxy, ProxyCheck
from pool.resources import is_local_shortage, names_local_shortage
from pool.selector import Selector
from pool.store import Store
from pool.tasks import TaskSet, spawn
from pool.tls_judge import TlsJudge

__all__ = ["CheckRun", "Pipeline", "PoolLowWatch", "run_checkers"]

log = logging.getLogger("proxy_pool.pipeline")

CheckObserver = Callable[[str, str, float], None]  # checker, result (passed|failed|skipped), seconds


@dataclass
class CheckRun:
    proxy: Proxy
    results: list[tuple[ProxyChecker, CheckResult]] = field(default_factory=list)
    verdict: RunVerdict | None = None

    @property
    def failed(self) -> tuple[ProxyChecker, CheckResult] | None:
        for checker, result in self.results:
            if not result.passed and not result.skipped:
                return checker, result
        return None


async def _run_one(
    checker: ProxyChecker,
    proxy: Proxy,
    context: CheckContext,
    observe: CheckObserver | None,
    health: PluginHealth | None = None,
) -> CheckResult:
    started = time.monotonic()
    raised: Exception | None = None
    try:
        # asyncio.timeout, not wait_for: the check runs in this task, which the loop watchdog can name
        with health.calling(checker.name, "check") if health else contextlib.nullcontext():
            async with asyncio.timeout(checker.timeout):
                result = await checker.check(proxy, context)
        if not isinstance(result, CheckResult):
            raise TypeError(f"check() returned {type(result).__name__}, not CheckResult")
    except TimeoutError:
        result = CheckResult(False, f"timed out after {checker.timeout:g} s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the checker's bug: no verdict on the proxy, never a stop of the pipeline
        if is_local_shortage(exc):
            result = _local_shortage(str(exc))
        else:
            raised = exc
            if health is not None:
                health.failed(checker.name, "check", exc)
            result = CheckResult(False, f"{checker.name} raised {type(exc).__name__}: {exc}"[:300], skipped=True)
    if not result.passed and not result.skipped and names_local_shortage(result.detail):
        result = _local_shortage(result.detail)
    if health is not None:
        health.checker_ran(checker.name, raised)
    seconds = time.monotonic() - started
    if result.latency_ms is None and result.passed:
        result.latency_ms = seconds * 1000
    if observe is not None:
        observe(checker.name, "skipped" if result.skipped else "passed" if result.passed else "failed", seconds)
    return result


def _local_shortage(detail: str) -> CheckResult:
    """A check that failed for want of this process's own descriptors, buffers or memory: no verdict."""
    log.warning("a check gave no verdict: this process is short of resources (%s)", detail[:200])
    return CheckResult(False, f"no verdict: local resources exhausted ({detail})"[:300], skipped=True)


def _skips(checker: ProxyChecker, proxy: Proxy, health: PluginHealth | None) -> bool:
    if health is None:
        return checker.should_skip(proxy)
    return health.guard(checker.name, "should_skip", lambda: bool(checker.should_skip(proxy)), False)


async def run_checkers(
    checkers: Sequence[ProxyChecker],
    proxy: Proxy,
    context: CheckContext,
    observe: CheckObserver | None = None,
    health: PluginHealth | None = None,
) -> CheckRun:
    """One proxy through every stage; stops after the first stage with a failure."""
    run = CheckRun(proxy)
    stages: dict[int, list[ProxyChecker]] = {}
    for checker in checkers:
        stages.setdefault(checker.stage, []).append(checker)
    no_verdict = False
    for stage in sorted(stages):
        # should_skip is asked only of the stages a proxy reaches: most of a free list ends in stage 1
        group = sorted((c for c in stages[stage] if not _skips(c, proxy, health)), key=lambda c: c.priority)
        if not group:
            continue
        if len(group) == 1:  # no gather (a task per checker) for a stage of one
            results = [await _run_one(group[0], proxy, context, observe, health)]
        else:
            results = await asyncio.gather(*(_run_one(c, proxy, context, observe, health) for c in group))
        run.results.extend(zip(group, results, strict=True))
        if any(not r.passed and not r.skipped for r in results):
            break
        if any(r.skipped for r in results):
            no_verdict = True
    failed = run.failed
    tunnels = context.tunnels
    latency = context.http_latency_ms if context.http_latency_ms is not None else context.tcp_latency_ms
    run.verdict = RunVerdict(
        passed=False if failed else (None if no_verdict else True),
        at=datetime.now(UTC),
        latency_ms=latency,
        exit_ip=context.exit_ip,
        anonymity=context.anonymity_level,
        country=context.country,
        failed_check=failed[0].name if failed else None,
        detail=failed[1].detail if failed else "",
        tunnels=tunnels,
    )
    return run


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class PoolLowWatch:
    """Emits ``proxy.pool_low`` once per downward crossing of the threshold.  Its occasion (once per
    pool, ``pool/events.py``) is the crossing after the recovery this process saw last (or its start):
    a replica whose pool crosses when another already told this crossing stays silent."""

    MARK = "event:proxy.pool_low"

    def __init__(self, threshold: int, emit: Callable[[Event], None], initial: int) -> None:
        self.threshold = threshold
        self._emit = emit
        self._low = initial < threshold  # a pool that starts low has not "fallen"; it must recover first
        self._first_told = False  # ... but it is told once after the first round (first_round_over)
        self._armed_at = datetime.now(UTC)  # when this process last saw the pool at or above the threshold

    def first_round_over(self, active: int) -> None:
        """The first scrape and check round is over: a pool that started low and is still low says so now."""
        if active < self.threshold and self._low and not self._first_told:
            self._first_told = True
            self._tell(active)

    def observe(self, active: int) -> None:
        if active >= self.threshold:
            if self._low:
                self._armed_at = datetime.now(UTC)
            self._low = False
        elif not self._low:
            self._low = True
            self._tell(active)

    def _tell(self, active: int) -> None:
        payload: dict[str, object] = {"active_count": active, "threshold": self.threshold}
        self._emit(Event("proxy.pool_low", payload, once=Occasion(self.MARK, since=self._armed_at)))


@dataclass(eq=False, repr=False)
class Pipeline:
    """Background checking: a queue, ``checker.concurrency`` workers, and a write-behind log."""

    settings: Settings
    registry: PluginRegistry
    store: Store | None
    selector: Selector | None
    _: KW_ONLY
    self_judge: str | None = None
    observe: CheckObserver | None = None
    flush_interval: float = 0.5
    tls_judge: TlsJudge | None = field(default=None, init=False)  # the pinned TLS endpoint for loopback proxies
    checked_total: int = field(default=0, init=False)
    on_run: Callable[[CheckRun], None] | None = field(default=None, init=False)
    _queue: asyncio.Queue[Proxy] = field(default_factory=asyncio.Queue, init=False)
    _queued: set[int] = field(default_factory=set, init=False)
    _in_flight: int = field(default=0, init=False)
    _idle: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _pending: list[tuple[Proxy, list[ProxyCheck]]] = field(default_factory=list, init=False)
    _tasks: TaskSet = field(default_factory=TaskSet, init=False)
    _writer_task: asyncio.Task[None] | None = field(default=None, init=False)
    _closing: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _session: aiohttp.ClientSession | None = field(default=None, init=False)
    # removed from the pool: a check still running changes nothing
    _removed: set[int] = field(default_factory=set, init=False)

    def __post_init__(self) -> None:
        self._idle.set()

    # lifecycle ----------------------------------------------------------------------------
    async def start(self, *, workers: bool = True) -> None:
        # no connector limit: checker.concurrency already bounds the work, and a shared cap of 100
        # would let black-hole proxies starve live ones of sockets
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=self.settings.checker.timeout),
            trust_env=False,
        )
        self.tls_judge = await TlsJudge.start("127.0.0.1")
        for n in range(self.settings.checker.concurrency if workers else 0):
            self._tasks.spawn(self._worker(), name=f"checker-{n}")
        if self.store is not None:
            self._closing.clear()
            self._writer_task = spawn(self._writer(), name="check-log-writer")

    async def stop(self) -> None:
        await self._tasks.close()
        # the writer is asked to end, never cancelled: a batch it is saving would be lost (the last
        # results of a run stayed unwritten when a busy machine made the save slow)
        self._closing.set()
        if self._writer_task is not None:
            await asyncio.wait([self._writer_task])
            self._writer_task = None
        await self.flush()
        if self._session is not None:
            await self._session.close()
        if self.tls_judge is not None:
            await self.tls_judge.stop()

    # asking for checks --------------------------------------------------------------------
    def submit(self, proxies: Iterable[Proxy]) -> int:
        """Queue proxies for a check (each at most once at a time); returns how many were queued."""
        added = 0
        for proxy in proxies:
            if proxy.id in self._queued:
                continue
            self._queued.add(proxy.id)
            self._queue.put_nowait(proxy)
            added += 1
        if added:
            self._idle.clear()
        return added

    def forget(self, proxy_ids: Iterable[int]) -> None:
        """These proxies left the pool: a check of them that is queued or running is not applied."""
        self._removed.update(proxy_ids)

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + self._in_flight

    async def wait_idle(self) -> None:
        await self._idle.wait()

    def judges_for(self, proxy: Proxy) -> list[str]:
        """Configured judges; a proxy on loopback can also reach our own ``/judge``."""
        judges = list(self.settings.checker.judges)
        if self.self_judge and _is_loopback(proxy.host):
            judges.insert(0, self.self_judge)
        return judges

    async def check_one(self, proxy: Proxy) -> CheckRun:
        """Run the pipeline on one proxy and apply the verdict (no queue; used by the CLI too)."""
        assert self._session is not None, "start() the pipeline first"
        context = CheckContext(
            http_client=self._session,
            judges=self.judges_for(proxy),
            tls_endpoints=[self.tls_judge.endpoint] if self.tls_judge and _is_loopback(proxy.host) else [],
        )
        run = await run_checkers(
            self.registry.get_checker_pipeline(), proxy, context, self.observe, self.registry.health
        )
        assert run.verdict is not None
        apply_run(proxy, run.verdict)
        self.checked_total += 1
        at = run.verdict.at
        checks = [
            ProxyCheck(proxy.id, c.name, c.stage, r.passed, r.detail, r.latency_ms, at) for c, r in run.results
        ]
        if proxy.id in self._removed:
            return run
        if self.selector is not None:
            self.selector.update(proxy)
        if self.store is not None:
            self._pending.append((proxy, checks))
        if self.on_run is not None:
            self.on_run(run)
        return run

    async def _worker(self) -> None:
        while True:
            proxy = await self._queue.get()
            self._in_flight += 1
            try:
                await self.check_one(proxy)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("pipeline failed on %s", proxy.display_url)
            finally:
                self._in_flight -= 1
                self._queued.discard(proxy.id)
                if self._queue.empty() and self._in_flight == 0:
                    self._idle.set()

    async def _writer(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._closing.wait()
            await self.flush()

    async def flush(self) -> None:
        if not self._pending or self.store is None:
            return
        batch, self._pending = self._pending, []
        try:
            await self.store.save_results(batch)
        except Exception as exc:  # the database is away: keep them (bounded) for the next round
            log.error("could not write %d check results: %s", len(batch), exc)
            if len(self._pending) + len(batch) <= 100_000:
                self._pending[:0] = batch
