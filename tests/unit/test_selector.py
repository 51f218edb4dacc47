"""The selector: filtered picks, strategies, passive health, sticky sessions and per-host cool-downs.

Pure and synchronous: fed Proxy values and a controlled clock, no sockets, nothing timed.
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import count, pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pool.models import AnonymityLevel, Proxy, ProxyProtocol, ProxyStatus, UpstreamURL
from pool.selector import FASTEST_SPREAD, SUSPECT_RECHECK_EVERY, Route, Selector
from pool.sites import SITE_FAULT_RUN, SiteHealth, site_of

_ids = count(1)


def make_proxy(
    *,
    id: int | None = None,
    protocol: ProxyProtocol = ProxyProtocol.HTTP,
    country: str | None = None,
    anonymity: AnonymityLevel | None = None,
    status: ProxyStatus = ProxyStatus.ACTIVE,
    latency_ms: float | None = None,
) -> Proxy:
    pid = next(_ids) if id is None else id
    return Proxy(
        pid,
        UpstreamURL(protocol, f"10.{pid // 65536 % 256}.{pid // 256 % 256}.{pid % 256}", 1000 + pid % 50000),
        status=status,
        country=country,
        anonymity=anonymity,
        latency_ms=latency_ms,
    )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def selector(*proxies: Proxy, **kwargs) -> Selector:
    kwargs.setdefault("rng", random.Random(1234))
    s = Selector(**kwargs)
    s.load(proxies)
    return s


def matches(proxy: Proxy, route: Route) -> bool:
    return (
        (route.protocol is None or proxy.protocol is route.protocol)
        and (route.country is None or (proxy.country or "").upper() == route.country.upper())
        and (route.anonymity is None or proxy.anonymity is route.anonymity)
    )


# -- filtered picks --------------------------------------------------------------------------------

countries = st.sampled_from([None, "DE", "US", "fr"])
anonymities = st.sampled_from([None, *AnonymityLevel])
proxy_specs = st.tuples(
    st.sampled_from(list(ProxyProtocol)), countries, anonymities, st.sampled_from(list(ProxyStatus))
)
routes = st.builds(
    Route,
    protocol=st.sampled_from([None, *ProxyProtocol]),
    country=st.sampled_from([None, "DE", "de", "US", "FR", "ZZ"]),
    anonymity=anonymities,
)


@settings(max_examples=200, deadline=None)
@given(
    specs=st.lists(proxy_specs, max_size=30),
    route=routes,
    strategy=st.sampled_from(["round_robin", "random", "fastest"]),
    seed=st.integers(0, 2**16),
)
def test_filtered_pick_never_returns_a_non_matching_proxy(specs, route, strategy, seed):
    """Property: over random pools and filters, a pick is an active match, and None only when none exists."""
    pool = [
        make_proxy(id=i + 1, protocol=p, country=c, anonymity=a, status=s, latency_ms=float(i % 7))
        for i, (p, c, a, s) in enumerate(specs)
    ]
    sel = selector(*pool, strategy=strategy, rng=random.Random(seed))
    eligible = {p.id for p in pool if p.status is ProxyStatus.ACTIVE and matches(p, route)}
    assert sel.candidates(route) == len(eligible)
    for _ in range(2 * len(pool) + 1):
        picked = sel.pick(route)
        if not eligible:
            assert picked is None
        else:
            assert picked is not None and picked.id in eligible


ops = st.lists(
    st.one_of(
        st.tuples(st.just("update"), st.integers(1, 8), proxy_specs),
        st.tuples(st.just("remove"), st.integers(1, 8)),
        st.tuples(st.just("fail"), st.integers(1, 8)),
        st.tuples(st.just("ok"), st.integers(1, 8)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, route=routes, strategy=st.sampled_from(["round_robin", "random", "fastest"]))
def test_index_stays_exact_through_updates_removals_and_benching(ops, route, strategy):
    """Property: after any sequence of in-place changes, picks and counts agree with a naive model."""
    limit = 2
    sel = Selector(strategy, failure_limit=limit, rng=random.Random(7))
    live: dict[int, Proxy] = {}
    failures: Counter[int] = Counter()  # the naive model of passive health
    benched: set[int] = set()
    for op in ops:
        pid = op[1]
        if op[0] == "update":
            protocol, country, anonymity, status = op[2]
            proxy = live.get(pid)
            if proxy is None or proxy.protocol is not protocol:
                if proxy is not None:
                    sel.remove(pid)
                    failures.pop(pid, None)
                    benched.discard(pid)
                proxy = live[pid] = make_proxy(id=pid, protocol=protocol)
            proxy.country, proxy.anonymity, proxy.status = country, anonymity, status  # mutated in place
            proxy.consecutive_failures = 0 if status is ProxyStatus.ACTIVE else 1
            if status is ProxyStatus.ACTIVE:  # a passing check lifts the bench
                failures.pop(pid, None)
                benched.discard(pid)
            sel.update(proxy)
        elif op[0] == "remove":
            live.pop(pid, None)
            failures.pop(pid, None)
            benched.discard(pid)
            sel.remove(pid)
        elif pid in live:
            ok = op[0] == "ok"
            if ok:
                failures.pop(pid, None)
            else:
                failures[pid] += 1
                if failures[pid] >= limit:
                    benched.add(pid)
            sel.report(live[pid], ok)
    assert sel.benched == benched
    usable = {
        p.id
        for p in live.values()
        if p.status is ProxyStatus.ACTIVE and p.id not in benched and matches(p, route)
    }
    assert sel.candidates(route) == len(usable)
    assert len(sel) == len(live)
    assert sel.counts() == {
        k: n for k, n in Counter((p.status.value, p.protocol.value) for p in live.values()).items()
    }
    seen = {p.id for _ in range(3 * len(usable) + 1) if (p := sel.pick(route)) is not None}
    assert seen <= usable
    if strategy == "round_robin":
        assert seen == usable


def test_new_and_dead_proxies_are_never_chosen():
    """Only validated (active) proxies are selectable: new ones wait for their first passing check."""
    new, dead, active = (
        make_proxy(status=s) for s in (ProxyStatus.NEW, ProxyStatus.DEAD, ProxyStatus.ACTIVE)
    )
    sel = selector(new, dead, active)
    assert {sel.pick().id for _ in range(10)} == {active.id}
    assert sel.active_count == 1 and len(sel) == 3


def test_country_filter_is_case_insensitive():
    """country=de matches a proxy located in DE."""
    de = make_proxy(country="DE")
    sel = selector(de, make_proxy(country="US"))
    assert sel.pick(Route(country="de")) is de
    assert Route(country="de").describe() == "country=de"


def test_no_match_returns_none_and_route_describes_the_filter():
    """No active proxy for the filter: None, and the filter reads well in a 503 body."""
    sel = selector(make_proxy(country="DE"))
    route = Route(protocol=ProxyProtocol.SOCKS5, country="zz", anonymity=AnonymityLevel.ELITE)
    assert sel.pick(route) is None
    assert route.describe() == "protocol=socks5, country=zz, anonymity=elite"
    assert Route().describe() == "any"


def test_proxy_changing_country_moves_buckets():
    """A re-check that finds a new exit country re-indexes the proxy."""
    p = make_proxy(country="DE")
    sel = selector(p)
    p.country = "FR"
    sel.update(p)
    assert sel.pick(Route(country="DE")) is None
    assert sel.pick(Route(country="FR")) is p


def test_exclude_skips_tried_upstreams():
    """A retry excludes upstreams already tried; all excluded means None."""
    a, b = make_proxy(), make_proxy()
    sel = selector(a, b)
    assert sel.pick(exclude={a.id}) is b
    assert sel.pick(exclude={a.id, b.id}) is None


def test_unknown_strategy_is_refused():
    """No silent fallback to round robin (glider's mistake)."""
    with pytest.raises(ValueError):
        Selector("least_conn")  # type: ignore[arg-type]


# -- strategies ------------------------------------------------------------------------------------


def test_round_robin_visits_every_match_evenly():
    """Round robin over 5 matching proxies: 50 picks give each exactly 10; others never."""
    de = [make_proxy(country="DE") for _ in range(5)]
    sel = selector(*de, *(make_proxy(country="US") for _ in range(3)), strategy="round_robin")
    counts = Counter(sel.pick(Route(country="DE")).id for _ in range(50))
    assert counts == {p.id: 10 for p in de}


def test_round_robin_consecutive_picks_differ():
    """Per-request rotation: two picks in a row never repeat while there are two choices."""
    sel = selector(make_proxy(), make_proxy(), strategy="round_robin")
    picks = [sel.pick().id for _ in range(10)]
    assert all(x != y for x, y in pairwise(picks))


def test_random_spreads_over_all_matches():
    """Random picks only matches and, given enough picks, each of them."""
    socks = [make_proxy(protocol=ProxyProtocol.SOCKS5) for _ in range(4)]
    sel = selector(*socks, make_proxy(protocol=ProxyProtocol.HTTP), strategy="random")
    seen = Counter(sel.pick(Route(protocol=ProxyProtocol.SOCKS5)).id for _ in range(400))
    assert set(seen) == {p.id for p in socks}


def test_fastest_spreads_over_the_quickest_few():
    """Fastest picks among the FASTEST_SPREAD lowest latencies, never the slow tail."""
    quick = [make_proxy(latency_ms=10.0 + i) for i in range(FASTEST_SPREAD)]
    slow = [make_proxy(latency_ms=500.0 + i) for i in range(10)]
    unmeasured = make_proxy(latency_ms=None)
    sel = selector(*slow, unmeasured, *quick, strategy="fastest")
    seen = {sel.pick().id for _ in range(300)}
    assert seen == {p.id for p in quick}


def test_fastest_follows_latency_changes():
    """A proxy that became the fastest is chosen once the selector learns it."""
    ps = [make_proxy(latency_ms=100.0 + i) for i in range(FASTEST_SPREAD + 1)]
    sel = selector(*ps, strategy="fastest")
    outsider = ps[-1]
    assert outsider.id not in {sel.pick().id for _ in range(100)}
    outsider.latency_ms = 1.0
    sel.update(outsider)
    assert outsider.id in {sel.pick().id for _ in range(200)}


def test_fastest_falls_back_when_the_best_are_excluded():
    """If all the quickest are excluded, another match is still picked."""
    quick = [make_proxy(latency_ms=1.0) for _ in range(FASTEST_SPREAD)]
    slow = make_proxy(latency_ms=900.0)
    sel = selector(*quick, slow, strategy="fastest")
    assert sel.pick(exclude={p.id for p in quick}) is slow


# -- passive health --------------------------------------------------------------------------------


def test_failures_bench_a_proxy_until_a_passing_check():
    """failure_limit consecutive failures bench a proxy; only update() with a passing state lifts it."""
    a, b = make_proxy(), make_proxy()
    benched: list[int] = []
    sel = selector(a, b, failure_limit=3)
    sel.on_bench = lambda p: benched.append(p.id)
    sel.report(a, False)
    sel.report(a, False)
    assert a.id in {sel.pick().id for _ in range(4)}, "two failures are not enough"
    sel.report(a, False)
    assert benched == [a.id] and a.id in sel.benched
    assert {sel.pick().id for _ in range(10)} == {b.id}
    assert sel.active_count == 1
    sel.report(a, True)  # a stray success seen by the gateway does not lift the bench
    assert {sel.pick().id for _ in range(10)} == {b.id}
    a.consecutive_failures = 2  # a failing check keeps it out
    a.status = ProxyStatus.DEAD
    sel.update(a)
    assert {sel.pick().id for _ in range(10)} == {b.id}
    a.consecutive_failures, a.status = 0, ProxyStatus.ACTIVE  # a passing check
    sel.update(a)
    assert a.id not in sel.benched
    assert {sel.pick().id for _ in range(10)} == {a.id, b.id}


def test_a_success_resets_the_failure_run():
    """Failures must be consecutive: a success in between restarts the count."""
    a = make_proxy()
    sel = selector(a, failure_limit=2)
    for _ in range(5):
        sel.report(a, False)
        sel.report(a, True)
    assert sel.pick() is a and not sel.benched


def test_benching_fires_once():
    """Further failures of a benched proxy do not bench it again."""
    a = make_proxy()
    sel = selector(a, failure_limit=1)
    fired: list[int] = []
    sel.on_bench = lambda p: fired.append(p.id)
    for _ in range(5):
        sel.report(a, False)
    assert fired == [a.id]


def test_failures_for_one_target_never_bench_but_ask_for_one_recheck():
    """A thousand failures about one dead target bench nothing; they ask for an active re-check, at
    most once per SUSPECT_RECHECK_EVERY."""
    a, b = make_proxy(), make_proxy()
    clock = Clock()
    sel = selector(a, b, failure_limit=3, clock=clock)
    suspects: list[int] = []
    sel.on_suspect = lambda p: suspects.append(p.id)
    for _ in range(1000):
        sel.report(a, False, target="127.0.0.1:1")
    assert not sel.benched and sel.active_count == 2
    assert suspects == [a.id]
    clock.now += SUSPECT_RECHECK_EVERY
    sel.report(a, False, target="127.0.0.1:1")
    assert suspects == [a.id, a.id]


def test_failures_for_distinct_targets_in_a_row_bench():
    """failure_limit distinct failing targets in a row bench the upstream; a success ends the run."""
    a = make_proxy()
    sel = selector(a, failure_limit=3)
    benched: list[int] = []
    sel.on_bench = lambda p: benched.append(p.id)
    for target in ("x:1", "y:1", "x:1"):
        sel.report(a, False, target=target)
    sel.report(a, True)
    for target in ("y:1", "z:1"):
        sel.report(a, False, target=target)
    assert not benched, "two distinct targets since the last success are not enough"
    sel.report(a, False, target="x:1")
    assert benched == [a.id] and sel.active_count == 0


def test_target_failures_and_own_failures_are_counted_apart():
    """Target failures do not add to the upstream's own run and the other way round."""
    a = make_proxy()
    sel = selector(a, failure_limit=2)
    sel.report(a, False)
    sel.report(a, False, target="x:1")
    assert not sel.benched
    sel.report(a, False)
    assert sel.benched == {a.id}


def test_report_on_removed_proxy_is_harmless():
    """A late report about a proxy removed from the pool benches nothing and raises nothing."""
    a = make_proxy()
    sel = selector(a, failure_limit=1)
    sel.remove(a.id)
    sel.report(a, False)
    assert not sel.benched and len(sel) == 0


def test_on_change_fires_for_view_changes():
    """The listener (pool_low, metrics) hears loads, updates, benches and removals."""
    a = make_proxy()
    sel = Selector(failure_limit=1)
    changes: list[int] = []
    sel.on_change = lambda: changes.append(sel.active_count)
    sel.load([a])
    sel.report(a, False)
    a.consecutive_failures = 0
    sel.update(a)
    sel.remove(a.id)
    assert changes == [1, 0, 1, 0]


# -- sticky sessions -------------------------------------------------------------------------------


def test_session_sticks_to_its_upstream():
    """A session id keeps the same upstream across requests while other requests rotate."""
    ps = [make_proxy() for _ in range(4)]
    sel = selector(*ps, strategy="round_robin")
    first = sel.pick(Route(session="s1"))
    for _ in range(10):
        assert sel.pick(Route()) is not None  # unrelated traffic rotates
        assert sel.pick(Route(session="s1")) is first
    assert sel.session_upstream("s1") == first.id


def test_sessions_spread_over_the_matches():
    """Different session ids are independent: forty sessions over four upstreams use all four."""
    sel = selector(*(make_proxy() for _ in range(4)), strategy="round_robin")
    assert len({sel.pick(Route(session=f"s{i}")).id for i in range(40)}) == 4


def test_replicas_agree_on_sessions_and_move_together():
    """Two selectors (two replicas) that loaded the same pool in other orders pick the same upstream
    for every session, with no shared state; when that upstream dies both move to the same next one."""
    ps = [make_proxy(country="DE") for _ in range(8)]
    one = selector(*ps, strategy="round_robin")
    two = selector(*reversed(ps), strategy="random")
    two.pick(Route())  # unrelated traffic on one replica changes nothing
    sessions = [f"user{i}" for i in range(30)]
    first = {s: one.pick(Route(country="DE", session=s)).id for s in sessions}
    assert {s: two.pick(Route(country="DE", session=s)).id for s in sessions} == first
    dead = one.get(first["user0"])
    dead.status, dead.consecutive_failures = ProxyStatus.DEAD, 1
    one.update(dead)
    two.update(dead)
    moved_one = one.pick(Route(country="DE", session="user0"))
    moved_two = two.pick(Route(country="DE", session="user0"))
    assert moved_one is moved_two and moved_one.id != dead.id


def test_session_moves_when_its_upstream_dies_and_sticks_there():
    """Dead upstream: the session moves to another match and stays on the new one."""
    ps = [make_proxy(country="DE") for _ in range(3)]
    sel = selector(*ps, make_proxy(country="US"))
    route = Route(country="DE", session="x1")
    first = sel.pick(route)
    first.status, first.consecutive_failures = ProxyStatus.DEAD, 1
    sel.update(first)
    second = sel.pick(route)
    assert second is not None and second is not first and second.country == "DE"
    for _ in range(5):
        assert sel.pick(route) is second


def test_session_moves_when_its_upstream_is_benched():
    """Passive failures count as dying for a session too."""
    a, b = make_proxy(), make_proxy()
    sel = selector(a, b, failure_limit=1)
    first = sel.pick(Route(session="s"))
    sel.report(first, False)
    other = sel.pick(Route(session="s"))
    assert other is not first
    assert sel.pick(Route(session="s")) is other


def test_session_moves_on_retry_exclusion():
    """On a failed attempt the retry excludes the sticky upstream; the session follows the new one."""
    a, b = make_proxy(), make_proxy()
    sel = selector(a, b)
    first = sel.pick(Route(session="s"))
    retry = sel.pick(Route(session="s"), exclude={first.id})
    assert retry is not first
    assert sel.pick(Route(session="s")) is retry


def test_session_expires_after_ttl_since_last_use():
    """session_ttl counts from the last use: used often it lives on; idle past the ttl it is forgotten."""
    clock = Clock()
    ps = [make_proxy() for _ in range(5)]
    sel = selector(*ps, session_ttl=60.0, clock=clock, strategy="round_robin")
    first = sel.pick(Route(session="s"))
    for _ in range(5):
        clock.now += 50.0  # each use within the ttl of the previous one
        assert sel.pick(Route(session="s")) is first
    clock.now += 61.0
    sel.pick(Route())  # move the round-robin cursor on
    before = sel.session_count
    after = sel.pick(Route(session="s"))
    assert sel.session_upstream("s") == after.id
    assert sel.session_count == before  # forgotten, then chosen afresh: by rendezvous, so the same one
    assert after is first


def test_session_table_is_bounded_oldest_dropped_first():
    """Past max_sessions, the least recently used session is forgotten first."""
    sel = selector(*(make_proxy() for _ in range(3)), max_sessions=3)
    for name in ("a", "b", "c"):
        sel.pick(Route(session=name))
    sel.pick(Route(session="a"))  # "a" used again: "b" is now the oldest
    sel.pick(Route(session="d"))
    assert sel.session_count == 3
    assert sel.session_upstream("b") is None
    assert all(sel.session_upstream(n) is not None for n in ("a", "c", "d"))
    for i in range(100):
        sel.pick(Route(session=f"many{i}"))
    assert sel.session_count == 3


def test_session_with_no_match_is_not_remembered():
    """A session asking for a filter nothing matches gets None and takes no table slot."""
    sel = selector(make_proxy(country="DE"))
    assert sel.pick(Route(country="US", session="s")) is None
    assert sel.session_count == 0


# -- per-site rests (bans) and per-site health -------------------------------------------------------


def site_selector(
    *proxies: Proxy, ban_seconds: float = 300.0, clock: Clock | None = None, sites: dict | None = None, **kwargs
) -> Selector:
    clock = clock or Clock()
    return selector(*proxies, clock=clock, sites=SiteHealth(ban_seconds, clock=clock, **(sites or {})), **kwargs)


def test_ban_rests_a_proxy_for_that_site_only():
    """An upstream banned by one site is avoided there (any host of that site), still used for other
    sites, until the rest ends."""
    clock = Clock()
    a, b = make_proxy(), make_proxy()
    sel = site_selector(a, b, clock=clock)
    sel.ban(a, "www.banned.co.uk")
    assert {sel.pick(host="shop.banned.co.uk").id for _ in range(6)} == {b.id}  # the same site
    assert {sel.pick(host="other.co.uk").id for _ in range(6)} == {a.id, b.id}
    assert {sel.pick().id for _ in range(6)} == {a.id, b.id}
    clock.now += 301.0
    assert {sel.pick(host="banned.co.uk").id for _ in range(6)} == {a.id, b.id}
    assert sel.cooldown_count == 0  # an ended rest is dropped when met


def test_ban_of_every_match_still_picks_a_resting_one():
    """All matches resting for a site: a resting upstream beats a 503, or the direct fallback, which
    would show the gateway's own address to the site that banned the pool."""
    a, b = make_proxy(), make_proxy()
    sel = site_selector(a, b)
    sel.ban(a, "h.example")
    sel.ban(b, "h.example")
    assert {sel.pick(host="h.example").id for _ in range(4)} == {a.id, b.id}
    assert sel.pick(host="h.example", exclude={a.id}) is b  # an excluded one stays excluded
    assert sel.pick(host="h.example", exclude={a.id, b.id}) is None
    assert sel.cooldown_count == 2  # the rest still holds for later requests


def test_ban_moves_a_sticky_session_to_an_upstream_not_resting():
    a, b = make_proxy(), make_proxy()
    sel = site_selector(a, b)
    first = sel.pick(Route(session="s1"), host="h.example")
    sel.ban(first, "h.example")
    moved = sel.pick(Route(session="s1"), host="h.example")
    assert moved is not first
    assert sel.pick(Route(session="s1"), host="h.example") is moved  # and stays there


def test_site_tables_are_bounded():
    """Sites and (site, upstream) pairs are bounded in memory: the ones touched longest ago go first."""
    ps = [make_proxy() for _ in range(2)]
    sel = site_selector(*ps, sites={"max_sites": 10, "max_pairs": 10})
    for i in range(50):
        sel.ban(ps[0], f"host{i}.example")
        sel.served(ps[1], f"host{i}.example", 0.1)
    assert len(sel.sites) == 10 and sel.sites.pair_count == 10
    assert sel.pick(host="host49.example") is ps[1]  # the newest is kept
    assert {sel.pick(host="host0.example").id for _ in range(4)} == {p.id for p in ps}  # the oldest dropped


def test_zero_site_ban_seconds_turns_learning_off():
    """site_ban_seconds = 0: no rests, picks not weighed (the strategy alone), counts still kept."""
    a, b = make_proxy(), make_proxy()
    sel = site_selector(a, b, ban_seconds=0)
    sel.ban(a, "h.example")
    assert sel.cooldown_count == 0
    assert [sel.pick(host="h.example").id for _ in range(4)] == [a.id, b.id, a.id, b.id]
    assert sel.sites.rows()[0].bans == 1


def test_sticky_session_respects_a_site_rest():
    """A soft session's upstream resting for a site is not used for that site."""
    a, b = make_proxy(), make_proxy()
    sel = site_selector(a, b)
    first = sel.pick(Route(session="s"), host="h.example")
    sel.ban(first, "h.example")
    assert sel.pick(Route(session="s"), host="h.example") is not first


def test_site_is_the_registrable_domain_and_an_address_its_own():
    assert site_of("www.shop.example.co.uk") == "example.co.uk"
    assert site_of("A.B.github.io") == "b.github.io"  # a private suffix of the list
    assert site_of("127.0.0.1") == "127.0.0.1" and site_of("[::1]") == "::1"
    assert site_of("localhost") == "localhost"


def test_a_site_failing_through_every_upstream_benches_nobody():
    """Failures at one site through SITE_FAULT_RUN distinct upstreams are the site's: no bench, no
    re-check asked; an upstream failing at several sites is benched (its own fault)."""
    ps = [make_proxy() for _ in range(4)]
    sel = site_selector(*ps, failure_limit=3)
    suspects: list[int] = []
    sel.on_suspect = lambda p: suspects.append(p.id)
    for _ in range(5):
        for p in ps:
            sel.report(p, False, target="down.example:443")
    assert not sel.benched
    assert len(suspects) == SITE_FAULT_RUN - 1  # only before the site was seen failing for everyone
    bad = ps[0]
    for site in ("a.example", "b.example", "c.example"):
        sel.report(bad, False, target=f"www.{site}:80")
    assert sel.benched == {bad.id}


def test_two_choices_prefer_the_upstream_that_succeeds_at_a_site():
    """Power of two choices: an upstream that keeps failing at a site loses most picks for it to one
    that succeeds there, without any scan; other sites are unaffected."""
    ps = [make_proxy() for _ in range(2)]
    sel = site_selector(*ps, ban_seconds=300.0)
    good, bad = ps
    for _ in range(5):
        sel.served(good, "s.example", 0.05)
        sel.report(bad, False, target="s.example:80")
    picks = Counter(sel.pick(host="s.example").id for _ in range(200))
    assert picks[good.id] > 150, picks
    elsewhere = Counter(sel.pick(host="t.example").id for _ in range(200))
    assert elsewhere == Counter({good.id: 100, bad.id: 100})


# -- counts ----------------------------------------------------------------------------------------


def test_counts_by_status_and_protocol_follow_changes():
    """counts() gives (status, protocol) -> n for the proxies gauge, kept exact through changes."""
    a = make_proxy(protocol=ProxyProtocol.HTTP)
    b = make_proxy(protocol=ProxyProtocol.SOCKS5, status=ProxyStatus.NEW)
    c = make_proxy(protocol=ProxyProtocol.SOCKS5, status=ProxyStatus.DEAD)
    sel = selector(a, b, c)
    assert sel.counts() == {("active", "http"): 1, ("new", "socks5"): 1, ("dead", "socks5"): 1}
    b.status = ProxyStatus.ACTIVE
    sel.update(b)
    sel.update(b)  # learning the same state twice counts it once
    assert sel.counts() == {("active", "http"): 1, ("active", "socks5"): 1, ("dead", "socks5"): 1}
    sel.remove(c.id)
    sel.remove(c.id)  # removing twice is harmless
    assert sel.counts() == {("active", "http"): 1, ("active", "socks5"): 1}
    assert len(sel) == 2 and sel.get(c.id) is None


def test_benched_proxy_is_still_counted_as_active_but_not_selectable():
    """The gauge shows the checked status; active_count shows what a request can use now."""
    a, b = make_proxy(), make_proxy()
    sel = selector(a, b, failure_limit=1)
    sel.report(a, False)
    assert sel.counts() == {("active", "http"): 2}
    assert sel.active_count == 1


# -- the view is refreshed from the store ----------------------------------------------------------


def test_reload_with_fresh_objects_replaces_the_indexed_ones():
    """load()/update() with new Proxy objects for known ids: picks return the new objects, a dead one leaves."""
    sel = selector(make_proxy(id=1), make_proxy(id=2), strategy="round_robin")
    fresh = [make_proxy(id=1), make_proxy(id=2)]
    sel.load(fresh)
    assert {id(sel.pick()) for _ in range(4)} == {id(p) for p in fresh}
    sel.update(make_proxy(id=2, status=ProxyStatus.DEAD))
    assert {sel.pick().id for _ in range(4)} == {1}


# -- strict sessions and per-session TTLs -----------------------------------------------------------


def test_strict_session_never_moves_soft_one_does():
    """Its upstream failed (excluded) or died: a soft session moves, a strict one gets nothing (its 502)."""
    ps = [make_proxy() for _ in range(3)]
    sel = selector(*ps)
    strict, soft = Route(session="a", strict=True), Route(session="b")
    first_strict, first_soft = sel.pick(strict), sel.pick(soft)
    assert sel.pick(strict, exclude={first_strict.id}) is None
    moved = sel.pick(soft, exclude={first_soft.id})
    assert moved is not None and moved is not first_soft
    dead = first_strict
    dead.status, dead.consecutive_failures = ProxyStatus.DEAD, 1
    sel.update(dead)
    assert sel.pick(strict) is None
    assert sel.session_upstream("a") == dead.id  # still its one upstream


def test_strict_session_ignores_a_rest_for_the_host():
    """A strict session keeps its upstream even where that upstream rests for the site."""
    ps = [make_proxy() for _ in range(3)]
    sel = selector(*ps)
    route = Route(session="a", strict=True)
    first = sel.pick(route, host="site.test")
    sel.ban(first, "site.test")
    assert sel.pick(route, host="site.test") is first


def test_session_ttl_per_session():
    """sesstime: a session with its own TTL is forgotten after it, others after the default."""
    clock = Clock()
    ps = [make_proxy() for _ in range(3)]
    sel = selector(*ps, clock=clock, session_ttl=600.0)
    short, default = Route(session="short", session_ttl=60.0), Route(session="long")
    sel.pick(short)
    sel.pick(default)
    clock.now += 59
    strict_short = Route(session="short", strict=True, session_ttl=60.0)
    assert sel.pick(strict_short, exclude={sel.session_upstream("short")}) is None  # still known: no move
    clock.now += 61  # 61 s since "short" was last used: forgotten, a strict pick may start afresh
    assert sel.pick(strict_short, exclude={sel.session_upstream("short")}) is not None
    assert sel.pick(Route(session="long", strict=True), exclude={sel.session_upstream("long")}) is None


# -- distinct exits ----------------------------------------------------------------------------------


def exits(*addresses: str | None) -> list[Proxy]:
    ps = [make_proxy() for _ in addresses]
    for proxy, address in zip(ps, addresses, strict=True):
        proxy.exit_ip = address
    return ps


def test_proxies_sharing_an_exit_never_serve_a_site_back_to_back():
    """Two proxies behind one exit count as one: picks for a site alternate exits, while picks without
    a site (or for another site) rotate as before."""
    ps = exits("203.0.113.5", "203.0.113.5", "198.51.100.7")
    sel = selector(*ps)
    seen = [sel.pick(host="shop.example").exit_ip for _ in range(30)]
    assert all(a != b for a, b in pairwise(seen)), seen
    assert {p.id for p in (sel.pick(host="shop.example") for _ in range(30))} == {p.id for p in ps}


@pytest.mark.parametrize(
    ("mode", "addresses", "distinct"),
    [
        ("subnet", ["203.0.113.5", "203.0.113.9", "198.51.100.7"], True),  # one /24 is one exit
        ("ip", ["203.0.113.5", "203.0.113.9", "198.51.100.7"], False),  # three exits: round robin
        ("subnet", ["2001:db8:1:1::1", "2001:db8:1:2::1", "2001:db8:2::1"], True),  # one /48
        ("off", ["203.0.113.5", "203.0.113.5", "198.51.100.7"], False),
    ],
)
def test_distinct_exit_modes(mode, addresses, distinct):
    ps = exits(*addresses)
    sel = selector(*ps, distinct_exit=mode)
    seen = [sel.pick(host="shop.example") for _ in range(12)]
    key = (lambda p: p.id) if not distinct else (lambda p: ps.index(p) < 2)
    back_to_back = any(key(a) == key(b) for a, b in pairwise(seen))
    if distinct:
        assert not back_to_back
    elif mode == "off":
        assert [p.id for p in seen[:3]] == [p.id for p in ps]  # plain round robin: the shared exit twice
    else:
        assert not back_to_back and {p.id for p in seen} == {p.id for p in ps}


def test_distinct_exit_window_frees_an_exit_after_n_picks():
    """An exit is avoided for the window's picks of that site; a window of 1 only forbids repeats."""
    ps = exits("203.0.113.5", "198.51.100.7", "192.0.2.1", "192.0.2.2")
    sel = selector(*ps, distinct_exit="ip", distinct_window=3, strategy="random")
    seen = [sel.pick(host="shop.example").id for _ in range(40)]
    for i in range(len(seen) - 2):
        assert len(set(seen[i : i + 3])) == 3, seen  # no exit twice within any three picks


def test_distinct_exits_yield_to_an_upstream_failing_at_the_site():
    """Avoiding a repeated exit never sends a site to an upstream that clearly failed there."""
    good, bad = exits("203.0.113.5", "198.51.100.7")
    sel = selector(good, bad)
    for _ in range(5):
        sel.served(good, "s.example", 0.05)
        sel.report(bad, False, target="s.example:80")
    assert Counter(sel.pick(host="s.example").id for _ in range(100))[good.id] > 75


def test_an_untried_site_is_not_sent_first_to_an_upstream_known_to_be_slow():
    """At a site no request has met yet, an upstream that is slow everywhere else (or, never used, slow
    at its check) is weighed like a slow record there: the two-choices pick sends most first requests to
    the fast one, where an untried pair counting as good would send them half and half."""
    fast, slow, never_used = make_proxy(latency_ms=200), make_proxy(latency_ms=300), make_proxy(latency_ms=3000)
    sel = selector(fast, slow)
    for i in range(5):  # both answered elsewhere: fast in 0.2 s, slow in 3 s
        sel.served(fast, f"seen{i}.example", 0.2)
        sel.served(slow, f"seen{i}.example", 3.0)
    firsts = Counter(sel.pick(host=f"new{i}.example").id for i in range(200))
    assert firsts[slow.id] < 70, firsts  # (about 50 of 200 with a seeded rng; 100 before)
    sel = selector(make_proxy(latency_ms=200), never_used)
    firsts = Counter(sel.pick(host=f"new{i}.example").id for i in range(200))
    assert firsts[never_used.id] < 70, firsts


def test_a_ban_rests_the_proxies_sharing_the_exit_address_until_one_moves():
    ps = exits("203.0.113.5", "203.0.113.5", "198.51.100.7")
    clock = Clock()
    sel = selector(*ps, clock=clock, distinct_exit="off")
    sel.ban(ps[0], "shop.example")
    resting = [sel.sites.resting("shop.example", p.id, clock()) for p in ps]
    assert resting == [True, True, False]
    assert not sel.sites.resting("other.example", ps[1].id, clock())
    ps[1].exit_ip = "198.51.100.9"  # a re-check found it leaving elsewhere now
    sel.update(ps[1])
    sel.remove(ps[2].id)
    sel.ban(ps[0], "news.example")
    assert [sel.sites.resting("news.example", p.id, clock()) for p in ps] == [True, False, False]
    assert sel._behind == {"203.0.113.5": {ps[0].id}, "198.51.100.9": {ps[1].id}}


def test_where_most_upstreams_rest_a_slow_one_still_meets_a_second_choice():
    """At a site that rests most of the pool (a rate limit), the two-choices pick draws again when its
    random second choice rests there: the slow upstream, whose hedges keep losing, does not keep
    being sent first (one draw found the one usable fast upstream a tenth of the time)."""
    ps = [make_proxy() for _ in range(10)]
    slow, fast = ps[0], ps[1]
    sel = selector(*ps)
    for p in ps[2:]:
        sel.ban(p, "limited.example")
    sel.served(fast, "limited.example", 0.2)
    sel.served(slow, "limited.example", 0.2)
    sel.slow(slow, "limited.example", 3.0)  # lost a hedge after 3 s
    firsts = Counter(sel.pick(host="limited.example").id for _ in range(200))
    assert set(firsts) == {slow.id, fast.id}
    assert firsts[slow.id] < 70, firsts  # (about 45 of 200 with a seeded rng; 85 with one draw)


def test_when_every_match_rests_for_a_site_picks_still_vary_the_exit():
    """A rate-limited site has rested the whole pool: the fallback to resting upstreams still keeps to
    distinct exits, so the exit three proxies share does not carry three turns in five."""
    ps = exits("203.0.113.5", "203.0.113.5", "203.0.113.5", "198.51.100.7", "198.51.100.8")
    sel = selector(*ps)
    for p in (ps[0], ps[3], ps[4]):  # (the first rests its exit's three)
        sel.ban(p, "limited.example")
    seen = [sel.pick(host="limited.example").exit_ip for _ in range(30)]
    assert all(a != b for a, b in pairwise(seen)), seen
    assert seen.count("203.0.113.5") <= 10, seen
