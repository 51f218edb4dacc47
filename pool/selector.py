"""The in-memory view of the pool and the choice of an upstream per request.

``pick()`` is synchronous and does no I/O: the gateway calls it while a client waits.  Every active,
non-benched proxy sits in eight buckets, one per subset of (protocol, country, anonymity), so a
filtered pick is a list index, never a scan of the pool.  Strategies live here, apart from dialing
(glider's ``rule/``); the pipeline tells the selector of every change with ``update()``.

Sticky sessions choose by rendezvous hashing (the matching upstream with the highest
``hash(session, id)``), not by the strategy: replicas with the same view of the pool agree on a
session's upstream without a shared write, and when it dies they all move to the same next one.
The session table only remembers that choice (for ``session_ttl``, and a retry's move on this
replica); benches and site rests are local to a replica, so a session can differ where they do.

Per-site health (``pool.sites``): a pick for a host skips upstreams resting for its site (a ban), and
weighs the strategy's choice against one random other match by their record at that site (power of two
choices), so learning costs two dict lookups per pick, never a scan of the pool.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import product
from typing import Literal

from pool.models import AnonymityLevel, Proxy, ProxyProtocol, ProxyStatus
from pool.sites import WEAK_OK, WEAK_SECONDS, SiteHealth, SiteStats, beats, site_of

__all__ = ["Route", "Selector"]

Strategy = Literal["round_robin", "random", "fastest"]
BucketKey = tuple[str | None, str | None, str | None]

FASTEST_SPREAD = 5  # "fastest" spreads load over this many of the quickest
DISTINCT_SCAN = 64  # a bucket up to this size is looked through for a distinct exit; a larger one...
DISTINCT_TRIES = 8  # ...is sampled this many times (never a scan of a large pool per request)
TWO_CHOICE_DRAWS = 8  # draws for a usable second choice (where most upstreams rest, one draw rarely is)
SUSPECT_RECHECK_EVERY = 30.0  # seconds between two re-checks asked for by target failures of one upstream


@dataclass(frozen=True, slots=True)
class Route:
    """What a request asks of its upstream; None means any."""

    protocol: ProxyProtocol | None = None
    country: str | None = None
    anonymity: AnonymityLevel | None = None
    session: str | None = None
    strict: bool = False  # a strict session fails instead of moving to another upstream
    session_ttl: float | None = None  # seconds this session is kept after its last use; None: the default
    key: BucketKey = field(init=False, repr=False, compare=False)  # the bucket it picks from

    def __post_init__(self) -> None:
        key = (
            self.protocol.value if self.protocol else None,
            self.country.upper() if self.country else None,
            self.anonymity.value if self.anonymity else None,
        )
        object.__setattr__(self, "key", key)  # computed once, read on every pick

    def describe(self) -> str:
        """The filter as a user writes it (``country-zz`` in the username gives ``country=zz``)."""
        parts = [
            f"{name}={value.lower()}"
            for name, value in zip(("protocol", "country", "anonymity"), self.key, strict=True)
            if value is not None
        ]
        return ", ".join(parts) or "any"


class _Bucket:
    __slots__ = ("_fastest", "cursor", "items", "version", "where")

    def __init__(self) -> None:
        self.items: list[Proxy] = []
        self.where: dict[int, int] = {}
        self.cursor = 0
        self.version = 0  # bumped whenever its members or their exits may have changed
        self._fastest: list[Proxy] | None = None

    def add(self, proxy: Proxy) -> None:
        if proxy.id in self.where:
            return
        self.where[proxy.id] = len(self.items)
        self.items.append(proxy)
        self._fastest = None
        self.version += 1

    def remove(self, proxy: Proxy) -> None:
        index = self.where.pop(proxy.id, None)
        if index is None:
            return
        last = self.items.pop()
        if last is not proxy:
            self.items[index] = last
            self.where[last.id] = index
        self._fastest = None
        self.version += 1

    def fastest(self) -> list[Proxy]:
        if self._fastest is None:
            self._fastest = heapq.nsmallest(
                FASTEST_SPREAD, self.items, key=lambda p: p.latency_ms if p.latency_ms is not None else 1e12
            )
        return self._fastest


_KEYS: dict[BucketKey, tuple[BucketKey, ...]] = {}


def _bucket_keys(proxy: Proxy) -> tuple[BucketKey, ...]:
    """The buckets a proxy belongs in; one shared tuple per attribute combination (memory at 100k)."""
    own = (
        proxy.protocol.value,
        proxy.country.upper() if proxy.country else None,
        proxy.anonymity.value if proxy.anonymity else None,
    )
    keys = _KEYS.get(own)
    if keys is None:
        protocol, country, anonymity = own
        keys = _KEYS[own] = tuple(
            product((None, protocol), (None, country) if country else (None,), (None, anonymity) if anonymity else (None,))
        )
    return keys


class Selector:
    def __init__(
        self,
        strategy: Strategy = "round_robin",
        *,
        failure_limit: int = 3,
        session_ttl: float = 600.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        sites: SiteHealth | None = None,
        distinct_exit: Literal["ip", "subnet", "off"] = "ip",
        distinct_window: int = 32,
    ) -> None:
        if strategy not in ("round_robin", "random", "fastest"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.strategy: Strategy = strategy
        self.failure_limit = failure_limit
        self.session_ttl = session_ttl
        self.max_sessions = max_sessions
        self._clock = clock
        self._rng = rng or random.Random()
        self._random = self._rng.random
        self._proxies: dict[int, Proxy] = {}
        self._indexed: dict[int, tuple[BucketKey, ...]] = {}
        self._buckets: dict[BucketKey, _Bucket] = {}
        self._passive_failures: dict[int, int] = {}
        self._target_streak: dict[int, list[str]] = {}  # distinct targets failed in a row, per upstream
        self._suspected: dict[int, float] = {}  # when a target failure last asked for a re-check
        self.benched: set[int] = set()
        self._sessions: OrderedDict[str, tuple[int, float, float]] = OrderedDict()  # id, last use, ttl
        self.sites = sites if sites is not None else SiteHealth(clock=clock)
        self.distinct_exit = distinct_exit
        self.distinct_window = distinct_window
        self._exit_keys: dict[int, str] = {}  # proxy id -> its exit key (distinct_exit)
        self._exit_of: dict[int, str] = {}  # proxy id -> its exit address, when known
        self._behind: dict[str, set[int]] = {}  # exit address -> the proxies leaving from it (bans rest them all)
        self._counts: Counter[tuple[str, str]] = Counter()
        self._counted: dict[int, tuple[str, str]] = {}
        self.on_bench: Callable[[Proxy], None] | None = None
        self.on_suspect: Callable[[Proxy], None] | None = None  # re-check it now, in the background
        self.on_change: Callable[[], None] | None = None

    # the view ----------------------------------------------------------------------------
    def load(self, proxies: Iterable[Proxy]) -> None:
        for proxy in proxies:
            self.update(proxy, notify=False)
        if self.on_change:
            self.on_change()

    def update(self, proxy: Proxy, *, notify: bool = True) -> None:
        """Learn a proxy's new state (after a check, a scrape, or a load)."""
        # proxies are mutated in place by the pipeline, so remember what each was counted as
        old_key = self._counted.get(proxy.id)
        if old_key is not None:
            self._counts[old_key] -= 1
        previous = self._proxies.get(proxy.id)
        if previous is not None and previous is not proxy:
            self._unindex(previous)  # a fresh object for a known id (e.g. reloaded from the store)
        self._exit_keys.pop(proxy.id, None)  # its exit may have changed
        if self._exit_of.get(proxy.id) != proxy.exit_ip:
            self._leaves(proxy.id)
            if proxy.exit_ip:
                self._exit_of[proxy.id] = proxy.exit_ip
                self._behind.setdefault(proxy.exit_ip, set()).add(proxy.id)
        new_key = (proxy.status.value, proxy.protocol.value)
        self._counts[new_key] += 1
        self._counted[proxy.id] = new_key
        self._proxies[proxy.id] = proxy
        if proxy.status is ProxyStatus.ACTIVE and proxy.consecutive_failures == 0:
            # a passing check lifts a passive bench
            self.benched.discard(proxy.id)
            self._passive_failures.pop(proxy.id, None)
            self._target_streak.pop(proxy.id, None)
        if proxy.status is ProxyStatus.ACTIVE and proxy.id not in self.benched:
            self._index(proxy)
        else:
            self._unindex(proxy)
        if notify and self.on_change:
            self.on_change()

    def remove(self, proxy_id: int) -> None:
        proxy = self._proxies.pop(proxy_id, None)
        if proxy is None:
            return
        old_key = self._counted.pop(proxy_id, None)
        if old_key is not None:
            self._counts[old_key] -= 1
        self._unindex(proxy)
        self.benched.discard(proxy_id)
        self._passive_failures.pop(proxy_id, None)
        self._target_streak.pop(proxy_id, None)
        self._suspected.pop(proxy_id, None)
        self._exit_keys.pop(proxy_id, None)
        self._leaves(proxy_id)
        if self.on_change:
            self.on_change()

    def _index(self, proxy: Proxy) -> None:
        keys = _bucket_keys(proxy)
        current = self._indexed.get(proxy.id)
        if current is keys:
            for key in keys:  # same buckets; cached orderings (and its exit) may have changed
                same = self._buckets[key]
                same._fastest = None
                same.version += 1
            return
        if current is not None:
            self._unindex(proxy)
        for key in keys:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket()
            bucket.add(proxy)
        self._indexed[proxy.id] = keys

    def _unindex(self, proxy: Proxy) -> None:
        keys = self._indexed.pop(proxy.id, None)
        if keys is None:
            return
        for key in keys:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.remove(proxy)
                if not bucket.items:
                    del self._buckets[key]

    def get(self, proxy_id: int) -> Proxy | None:
        return self._proxies.get(proxy_id)

    def __len__(self) -> int:
        return len(self._proxies)

    def proxies(self) -> list[Proxy]:
        return list(self._proxies.values())

    @property
    def active_count(self) -> int:
        """Proxies a request could use now."""
        bucket = self._buckets.get((None, None, None))
        return len(bucket.items) if bucket else 0

    def counts(self) -> dict[tuple[str, str], int]:
        """(status, protocol) -> count, for the proxies gauge; O(number of pairs)."""
        return {key: n for key, n in self._counts.items() if n > 0}

    # the choice --------------------------------------------------------------------------
    def candidates(self, route: Route) -> int:
        """How many upstreams ``route`` could use now (an O(1) bucket size)."""
        bucket = self._buckets.get(route.key)
        return len(bucket.items) if bucket else 0

    def pick(
        self,
        route: Route = Route(),
        *,
        exclude: frozenset[int] | set[int] = frozenset(),
        host: str | None = None,
        tunnel: bool = False,
    ) -> Proxy | None:
        """An upstream for one request, or None when nothing matches.

        ``tunnel=True`` (a client's CONNECT, an HTTPS request, a SOCKS client's tunnel) never picks a
        proxy known not to carry CONNECT (``tunnels is False``); one not yet known may be picked."""
        bucket = self._buckets.get(route.key)
        if bucket is None:
            return None
        sites = self.sites
        site = site_of(host) if host is not None and (sites.learning or self.distinct_exit != "off") else None
        if route.session is None and self.strategy == "round_robin":
            # the everyday pick, decided here without a call: the next in turn, when nothing rules it out
            items = bucket.items
            start = bucket.cursor % len(items)
            proxy = items[start]
            if proxy.id not in exclude and not (tunnel and proxy.tunnels is False):
                if site is None:
                    bucket.cursor = start + 1
                    return proxy
                now = self._clock()
                if not sites.resting_count or not sites.resting(site, proxy.id, now):
                    bucket.cursor = start + 1
                    return self._for_site(site, proxy, bucket, exclude, now, tunnel)
        now = self._clock()
        if route.session is not None:
            sticky = self._sticky(route, bucket, exclude, site, now, tunnel)
            if sticky is not None:
                return sticky
            if route.strict and route.session in self._sessions:
                return None  # a strict session never moves: its request fails instead
        cursor = bucket.cursor
        if route.session is not None:
            proxy = self._rendezvous(route.session, bucket, exclude, site, now, tunnel)
        else:
            proxy = self._choose(bucket, exclude, site, now, tunnel)
            if proxy is not None and site is not None:
                proxy = self._for_site(site, proxy, bucket, exclude, now, tunnel)
        if proxy is None and site is not None and sites.resting_count:
            # every match rests for this site: a resting upstream beats a 503 (or the direct fallback,
            # which would show the gateway's own address to the site that banned the pool)
            bucket.cursor = cursor
            proxy = self._choose(bucket, exclude, None, now, tunnel)
            if proxy is not None and route.session is None:  # weighed and kept to distinct exits as ever
                proxy = self._for_site(site, proxy, bucket, exclude, now, tunnel, resting=True)
        if proxy is not None and route.session is not None:
            self._remember(route, proxy, now)
        return proxy

    def _usable(
        self, proxy: Proxy, exclude: frozenset[int] | set[int], site: str | None, now: float, tunnel: bool = False
    ) -> bool:
        if proxy.id in exclude or (tunnel and proxy.tunnels is False):
            return False
        return site is None or not self.sites.resting_count or not self.sites.resting(site, proxy.id, now)

    def _for_site(
        self,
        site: str,
        proxy: Proxy,
        bucket: _Bucket,
        exclude: frozenset[int] | set[int],
        now: float,
        tunnel: bool,
        resting: bool = False,
    ) -> Proxy:
        """The strategy's pick for a request to ``site``, weighed by the site's record against one random
        other match (power of two choices), then kept off the exits that served the site lately
        (``distinct_exit``).  Written out in one function: it runs on every request with a host.
        ``resting``: every match rests for the site, so resting ones are weighed and varied among."""
        sites = self.sites
        if sites.learning:
            pairs = sites._pairs
            a = pairs.get((site, proxy.id))
            if a is None:  # untried here: what it did elsewhere, or its checked latency
                a = sites.prior(proxy.id, proxy.latency_ms)
            # only a record that another could clearly beat (see pool.sites.beats) is weighed at all
            if a is not None and (a.ok < WEAK_OK or (a.seconds is not None and a.seconds > WEAK_SECONDS)):
                items = bucket.items
                n = len(items)
                for _ in range(TWO_CHOICE_DRAWS):
                    other = items[int(self._random() * n)]
                    if other is proxy or not self._usable(other, exclude, None if resting else site, now, tunnel):
                        continue  # no second choice drawn: draw again (most may rest at a strict site)
                    b = pairs.get((site, other.id))
                    if b is None:
                        b = sites.prior(other.id, other.latency_ms)
                    if beats(b, a):
                        proxy = other
                    break
        if self.distinct_exit != "off":
            stats = sites._sites.get(site) or sites.site(site)
            key = self._exit_keys.get(proxy.id) or self._exit_key(proxy)
            exits = stats.exits
            last = exits.get(key)
            window = self.distinct_window
            if last is not None:
                # every exit served the site lately (fewer exits than the window): the pick's served it
                # longest ago when it leads ``exits`` (kept in order of use), and when every exit of the
                # bucket is in there the scan would keep it anyway, so it is not run
                covered = stats.covered
                if stats.picks - last < window and not (
                    next(iter(exits)) == key
                    and len(bucket.items) <= DISTINCT_SCAN
                    and (
                        (
                            covered is not None
                            and covered[0] is bucket
                            and covered[1] == bucket.version
                            and covered[2] is exits
                        )
                        or self._covers(stats, bucket)
                    )
                ):
                    proxy = self._distinct(stats, proxy, bucket, exclude, site, now, tunnel, resting)
                    key = self._exit_key(proxy)
                exits.pop(key, None)  # re-inserted last: ``exits`` stays in order of use
            picks = stats.picks = stats.picks + 1  # stats.saw_exit(key, window), written out
            exits[key] = picks
            if len(exits) > 2 * window:
                stats.forget_exits(window)
        return proxy

    def _exit_key(self, proxy: Proxy) -> str:
        """The exit a site sees from ``proxy``: the address the judge saw (``subnet``: its /24 or /48);
        unknown, the proxy alone.  Proxies sharing an exit share the key."""
        key = self._exit_keys.get(proxy.id)
        if key is None:
            key = f"#{proxy.id}"
            if proxy.exit_ip:
                try:
                    address = ipaddress.ip_address(proxy.exit_ip)
                except ValueError:
                    pass
                else:
                    if self.distinct_exit == "subnet":
                        prefix = 24 if address.version == 4 else 48
                        key = str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
                    else:
                        key = str(address)
            self._exit_keys[proxy.id] = key
        return key

    def _covers(self, stats: SiteStats, bucket: _Bucket) -> bool:
        """Whether the exit of every upstream in ``bucket`` is in ``stats.exits``; remembered until the
        bucket or the exits forgotten change (a look through the bucket per change, not per request)."""
        exits, keys = stats.exits, self._exit_keys
        for other in bucket.items:
            if (keys.get(other.id) or self._exit_key(other)) not in exits:
                return False
        stats.covered = (bucket, bucket.version, exits)
        return True

    def _distinct(
        self,
        stats: SiteStats,
        proxy: Proxy,
        bucket: _Bucket,
        exclude: frozenset[int] | set[int],
        site: str,
        now: float,
        tunnel: bool,
        resting: bool = False,
    ) -> Proxy:
        """``proxy``, unless its exit served ``site`` within the last ``distinct_window`` picks: then
        another usable match whose exit did not (the next in turn; in a large pool, one of a few random
        ones), else the one whose exit served the site longest ago; never one that did clearly worse at
        the site than ``proxy`` (two choices' measure)."""
        window = self.distinct_window
        age = stats.exit_age(self._exit_key(proxy))
        if age is None or age >= window:
            return proxy
        best, best_age = proxy, age
        items = bucket.items
        n = len(items)
        if n <= DISTINCT_SCAN:
            start = bucket.cursor % n
            candidates: Iterable[Proxy] = (items[(start + step) % n] for step in range(n))
        else:
            candidates = (items[self._rng.randrange(n)] for _ in range(DISTINCT_TRIES))
        learning = self.sites.learning
        exits, picks, keys = stats.exits, stats.picks, self._exit_keys
        for other in candidates:
            if other is proxy:
                continue
            last = exits.get(keys.get(other.id) or self._exit_key(other))
            other_age = None if last is None else picks - last
            if other_age is not None and other_age < window and other_age <= best_age:
                continue  # could be neither returned nor the best so far: nothing more to ask of it
            if not self._usable(other, exclude, None if resting else site, now, tunnel):
                continue
            if learning and self.sites.better(site, other.id, proxy.id):
                continue  # clearly worse at this site: a repeated exit beats a failing one
            if other_age is None or other_age >= window:
                return other
            best, best_age = other, other_age
        return best

    def _choose(
        self, bucket: _Bucket, exclude: frozenset[int] | set[int], site: str | None, now: float, tunnel: bool
    ) -> Proxy | None:
        """The strategy's pick among the usable matches; ``site``: skip the upstreams resting there."""
        items = bucket.items
        n = len(items)
        if self.strategy == "fastest":
            best = bucket.fastest()
            usable = [p for p in best if self._usable(p, exclude, site, now, tunnel)]
            if usable:
                return self._rng.choice(usable)
            # all of the best few are excluded: fall back to any usable one
        if self.strategy == "random" or self.strategy == "fastest":
            start = self._rng.randrange(n)
        else:
            start = bucket.cursor % n
        for step in range(n):
            proxy = items[(start + step) % n]
            if self._usable(proxy, exclude, site, now, tunnel):
                if self.strategy == "round_robin":
                    bucket.cursor = start + step + 1
                return proxy
        return None

    def _rendezvous(
        self, session: str, bucket: _Bucket, exclude: frozenset[int] | set[int], site: str | None, now: float,
        tunnel: bool,
    ) -> Proxy | None:
        """The usable match with the highest score for this session: the same on every replica."""
        seed = int.from_bytes(hashlib.blake2b(session.encode(), digest_size=8).digest(), "big")
        best: Proxy | None = None
        best_score = 0
        for proxy in bucket.items:
            score = hash((seed, proxy.id))  # ints hash alike in every process (no PYTHONHASHSEED)
            if (best is None or score > best_score) and self._usable(proxy, exclude, site, now, tunnel):
                best, best_score = proxy, score
        return best

    def _sticky(
        self, route: Route, bucket: _Bucket, exclude: frozenset[int] | set[int], site: str | None, now: float,
        tunnel: bool,
    ) -> Proxy | None:
        """The session's upstream while it is usable; an expired session is forgotten."""
        session = route.session
        assert session is not None
        entry = self._sessions.get(session)
        if entry is None:
            return None
        proxy_id, last_used, ttl = entry
        if now - last_used > ttl:
            del self._sessions[session]
            return None
        if proxy_id not in bucket.where:  # gone, dead, benched, or no longer matching
            return None
        proxy = bucket.items[bucket.where[proxy_id]]
        if not self._usable(proxy, exclude, site if not route.strict else None, now, tunnel):
            return None  # a strict session stays even where its upstream rests: the site answers
        self._remember(route, proxy, now)
        return proxy

    def _remember(self, route: Route, proxy: Proxy, now: float) -> None:
        session = route.session
        assert session is not None
        ttl = route.session_ttl if route.session_ttl is not None else self.session_ttl
        self._sessions[session] = (proxy.id, now, ttl)
        self._sessions.move_to_end(session)
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)

    # what the gateway learned ----------------------------------------------------------
    def report(self, proxy: Proxy, ok: bool, *, target: str | None = None) -> None:
        """Passive health: a real request's outcome.

        ``target=None``: the upstream's own failure (not reachable, handshake refused, ...);
        ``failure_limit`` of them in a row bench it.  ``target="host:port"``: the upstream worked but
        said or showed that this target failed (closed the CONNECT, 502 about it, cut the answer):
        one dead web site must not bench every proxy, so the upstream is benched only after failures
        at ``failure_limit`` *distinct* sites in a row, and meanwhile an active re-check is asked
        for (``on_suspect``, at most once per ``SUSPECT_RECHECK_EVERY``) whose failure marks it dead.
        A site failing through every upstream (``pool.sites.SITE_FAULT_RUN`` in a row) is failing on
        its own: its failures count against nobody.  A success ends both runs.
        """
        pid = proxy.id
        if ok:
            if self._passive_failures:
                self._passive_failures.pop(pid, None)
            if self._target_streak:
                self._target_streak.pop(pid, None)
            return
        if pid not in self._proxies or pid in self.benched:
            return
        if target is None:
            count = self._passive_failures.get(pid, 0) + 1
            self._passive_failures[pid] = count
            if count >= self.failure_limit:
                self._bench(proxy)
            return
        site = site_of(target.rpartition(":")[0] or target)
        if not self.sites.failed(site, pid):
            return  # the site fails through every upstream: its own fault
        streak = self._target_streak.setdefault(pid, [])
        if site not in streak:
            streak.append(site)
        if len(streak) >= self.failure_limit:
            self._bench(proxy)
            return
        now = self._clock()
        last = self._suspected.get(pid)
        if last is None or now - last >= SUSPECT_RECHECK_EVERY:
            self._suspected[pid] = now
            if self.on_suspect:
                self.on_suspect(proxy)

    def _bench(self, proxy: Proxy) -> None:
        self.benched.add(proxy.id)
        self._target_streak.pop(proxy.id, None)
        self._unindex(proxy)
        if self.on_bench:
            self.on_bench(proxy)
        if self.on_change:
            self.on_change()

    def refused_tunnel(self, proxy: Proxy) -> None:
        """The gateway saw ``proxy`` refuse a CONNECT: no tunnels for it until its next check says otherwise."""
        proxy.tunnels = False

    def tunnel_counts(self) -> dict[str, int]:
        """Active proxies by CONNECT capability (``yes``, ``no``, ``unknown``), for the metrics; O(pool)."""
        counts = {"yes": 0, "no": 0, "unknown": 0}
        for proxy in self._proxies.values():
            if proxy.status is ProxyStatus.ACTIVE:
                counts["unknown" if proxy.tunnels is None else "yes" if proxy.tunnels else "no"] += 1
        return counts

    def session_upstream(self, session: str) -> int | None:
        """The upstream id a sticky session holds, if any (for stats and tests)."""
        entry = self._sessions.get(session)
        return entry[0] if entry else None

    def served(self, proxy: Proxy, host: str, seconds: float | None) -> None:
        """A request to ``host`` through ``proxy`` was answered (its head after ``seconds``): passive
        health's success, and the site's record of that upstream."""
        pid = proxy.id
        if self._passive_failures:  # report(proxy, True), written out: this runs once per request
            self._passive_failures.pop(pid, None)
        if self._target_streak:
            self._target_streak.pop(pid, None)
        self.sites.served(site_of(host), pid, seconds)

    def slow(self, proxy: Proxy, host: str, seconds: float) -> None:
        """``proxy`` had not answered a request to ``host`` after ``seconds`` when another upstream did
        (a hedge won): its record at that site learns it was at least that slow."""
        self.sites.slow(site_of(host), proxy.id, seconds)

    def ban(self, proxy: Proxy, host: str) -> None:
        """``proxy`` was banned by ``host``'s site: it rests for that site only (``site_ban_seconds``);
        other sites still use it, and it benches nothing.  The site banned the address it saw: every
        proxy known to leave from the same exit address rests there too (else a shared exit, one proxy at
        a time, keeps meeting the same ban or rate limit)."""
        site = site_of(host)
        self.sites.banned(site, proxy.id)
        address = self._exit_of.get(proxy.id)
        if address is not None:
            for other in self._behind.get(address, ()):
                if other != proxy.id:
                    self.sites.rest(site, other)

    def _leaves(self, proxy_id: int) -> None:
        """Forget which exit address ``proxy_id`` leaves from (it changed, or the proxy went)."""
        address = self._exit_of.pop(proxy_id, None)
        if address is not None:
            sharing = self._behind.get(address)
            if sharing is not None:
                sharing.discard(proxy_id)
                if not sharing:
                    del self._behind[address]

    @property
    def cooldown_count(self) -> int:
        """Upstreams resting for a site (an upper bound: an ended rest is dropped when next met)."""
        return self.sites.resting_count

    @property
    def session_count(self) -> int:
        return len(self._sessions)
