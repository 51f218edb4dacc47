"""Selector._distinct asks a candidate whether it is usable, or did worse at the site, only when its exit's
age could change the outcome (the scan of a small pool, where every exit served the site within the
window, was most of a keep-alive request's pick).  Differential: over random pools (shared exits,
exclusions, rests, failures, tunnels, strategies, windows), a selector with it picks exactly what one
with the scan as it was picks, pick after pick."""

from __future__ import annotations

import random
import types
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from pool.models import Proxy
from pool.selector import DISTINCT_SCAN, DISTINCT_TRIES, Route, Selector
from pool.sites import SiteHealth, SiteStats
from tests.unit.test_selector import make_proxy


def _distinct_as_it_was(
    self: Selector,
    stats: SiteStats,
    proxy: Proxy,
    bucket: object,
    exclude: frozenset[int] | set[int],
    site: str,
    now: float,
    tunnel: bool,
    resting: bool = False,
) -> Proxy:
    """The scan before the change, verbatim: every candidate asked everything, in order (``resting``:
    the fallback when every match rests for the site, whose rests are then not asked about)."""
    window = self.distinct_window
    age = stats.exit_age(self._exit_key(proxy))
    if age is None or age >= window:
        return proxy
    best, best_age = proxy, age
    items = bucket.items  # type: ignore[attr-defined]
    n = len(items)
    if n <= DISTINCT_SCAN:
        start = bucket.cursor % n  # type: ignore[attr-defined]
        candidates: Iterable[Proxy] = (items[(start + step) % n] for step in range(n))
    else:
        candidates = (items[self._rng.randrange(n)] for _ in range(DISTINCT_TRIES))
    learning = self.sites.learning
    for other in candidates:
        if other is proxy or not self._usable(other, exclude, None if resting else site, now, tunnel):
            continue
        if learning and self.sites.better(site, other.id, proxy.id):
            continue
        other_age = stats.exit_age(self._exit_key(other))
        if other_age is None or other_age >= window:
            return other
        if other_age > best_age:
            best, best_age = other, other_age
    return best


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


events = st.lists(
    st.tuples(
        st.sampled_from(["pick", "pick", "pick", "pick", "served", "failed", "ban", "tick"]),
        st.integers(0, 3),  # site
        st.integers(0, 60),  # proxy index (modulo the pool)
        st.booleans(),  # tunnel / exclude
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    exits=st.lists(st.sampled_from(["203.0.113.5", "203.0.113.9", "198.51.100.7", "192.0.2.1", None]),
                   min_size=1, max_size=DISTINCT_SCAN + 12),
    tunnels=st.lists(st.sampled_from([True, False, None]), min_size=1, max_size=8),
    mode=st.sampled_from(["ip", "subnet"]),
    window=st.integers(1, 40),
    strategy=st.sampled_from(["round_robin", "random"]),
    ban=st.sampled_from([0.0, 60.0]),
    seed=st.integers(0, 2**16),
    script=events,
)
def test_distinct_picks_what_the_full_scan_picked(exits, tunnels, mode, window, strategy, ban, seed, script):
    runs = []
    for patched in (False, True):
        proxies = [make_proxy(id=i + 1) for i in range(len(exits))]
        for i, (proxy, address) in enumerate(zip(proxies, exits, strict=True)):
            proxy.exit_ip = address
            proxy.tunnels = tunnels[i % len(tunnels)]
        clock = Clock()
        sel = Selector(rng=random.Random(seed), clock=clock, distinct_exit=mode, distinct_window=window,
                       strategy=strategy, sites=SiteHealth(clock=clock, ban_seconds=ban))
        sel.load(proxies)
        if patched:
            sel._distinct = types.MethodType(_distinct_as_it_was, sel)  # type: ignore[method-assign]
        picks: list[int | None] = []
        for kind, s, index, flag in script:
            site = f"site{s}.example"
            proxy = proxies[index % len(proxies)]
            if kind == "pick":
                exclude = {proxy.id} if flag and len(proxies) > 1 else set()
                got = sel.pick(Route(), host=site, exclude=exclude, tunnel=not flag)
                picks.append(None if got is None else got.id)
            elif kind == "served":
                sel.served(proxy, site, 0.05 + index / 100)
            elif kind == "failed":
                sel.report(proxy, False, target=f"{site}:80")
            elif kind == "ban":
                sel.ban(proxy, site)
            else:
                clock.now += 5 * index
        runs.append(picks)
    assert runs[0] == runs[1]


@settings(max_examples=150, deadline=None)
@given(
    exits=st.one_of(
        st.lists(st.sampled_from(["203.0.113.5", "203.0.113.9", "198.51.100.7", "192.0.2.1", None]),
                 min_size=1, max_size=6),
        st.lists(st.sampled_from(["203.0.113.5", "203.0.113.9", None]), min_size=1,
                 max_size=DISTINCT_SCAN + 12),
    ),
    mode=st.sampled_from(["ip", "subnet"]),
    window=st.integers(1, 40),
    ban=st.sampled_from([0.0, 60.0]),
    seed=st.integers(0, 2**16),
    script=st.lists(
        st.tuples(
            st.sampled_from(["pick", "pick", "pick", "pick", "exit", "remove", "served", "ban"]),
            st.integers(0, 2),  # site
            st.integers(0, 80),  # proxy index (modulo the pool) / new exit
            st.booleans(),  # tunnel / exclude
        ),
        min_size=1,
        max_size=100,
    ),
)
def test_kept_pick_when_its_exit_leads_is_what_the_scan_keeps(exits, mode, window, ban, seed, script):
    """The pick is kept without a scan when its exit served the site longest ago and every exit of the
    bucket is known to the site; the memo of the latter must follow exits changing, proxies leaving and
    coming back.  Against a selector that always scans."""
    addresses = ["203.0.113.5", "203.0.113.9", "198.51.100.7", "192.0.2.1", "192.0.2.77", None]
    runs = []
    for always_scan in (False, True):
        proxies = [make_proxy(id=i + 1) for i in range(len(exits))]
        for proxy, address in zip(proxies, exits, strict=True):
            proxy.exit_ip = address
        clock = Clock()
        sel = Selector(rng=random.Random(seed), clock=clock, distinct_exit=mode, distinct_window=window,
                       sites=SiteHealth(clock=clock, ban_seconds=ban))
        sel.load(proxies)
        if always_scan:
            sel._covers = lambda stats, bucket: False  # type: ignore[method-assign]
        picks: list[int | None] = []
        for kind, s, index, flag in script:
            site = f"site{s}.example"
            proxy = proxies[index % len(proxies)]
            if kind == "pick":
                exclude = {proxy.id} if flag and len(proxies) > 1 else set()
                got = sel.pick(Route(), host=site, exclude=exclude)
                picks.append(None if got is None else got.id)
            elif kind == "exit":
                proxy.exit_ip = addresses[(index // 7) % len(addresses)]
                sel.update(proxy)
            elif kind == "remove":
                if sel.get(proxy.id) is not None:
                    sel.remove(proxy.id)
                else:
                    sel.update(proxy)
            elif kind == "served":
                sel.served(proxy, site, 0.05 + index / 100)
            else:
                sel.ban(proxy, site)
        runs.append(picks)
    assert runs[0] == runs[1]


def test_an_exit_new_to_the_site_goes_before_the_one_that_served_it_longest_ago():
    proxies = [make_proxy(id=i + 1) for i in range(3)]
    for proxy, address in zip(proxies, ["203.0.113.5", "203.0.113.9", "198.51.100.7"], strict=True):
        proxy.exit_ip = address
    sel = Selector(distinct_window=32)
    sel.load(proxies)
    picked = [sel.pick(Route(), host="a.example") for _ in range(4)]
    assert [p.id for p in picked if p] == [1, 2, 3, 1]  # 1 served the site longest ago: kept
    proxies[2].exit_ip = "192.0.2.1"  # 3 now leaves from an exit the site has not seen
    sel.update(proxies[2])
    got = sel.pick(Route(), host="a.example")
    assert got is not None and got.id == 3
