"""Per-site health: what requests met at each site through each upstream, in memory, bounded.

A *site* is the target's registrable domain (``www.shop.example.co.uk`` -> ``example.co.uk``) by the
Public Suffix List, read from the copy bundled with ``publicsuffixlist`` (offline: nothing here ever
fetches a list); an IP address is its own site, and so is a name with no registrable part
(``localhost``).

For each (site, upstream) pair the table keeps an EWMA of success and of the time to an answer's head,
and a rest: an upstream a site banned is not picked for that site until the rest ends
(``gateway.site_ban_seconds``), while other sites still use it.  Per site it keeps counts, recent head
times (the p50/p95 of ``/api/sites``, and the p90 hedging waits for), and the run of distinct upstreams
that failed there since its last success: when that run covers ``SITE_FAULT_RUN`` upstreams the site is
failing for everyone, and its failures are its own (they count against no upstream).

Both tables are LRU-ordered and bounded (``max_sites``, ``max_pairs``): the pair or site touched longest
ago goes first, so a scraper crawling a million domains costs a bounded amount of memory.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

__all__ = ["SITE_FAULT_RUN", "WEAK_OK", "WEAK_SECONDS", "PairHealth", "SiteHealth", "SiteStats", "beats", "site_of"]

SITE_FAULT_RUN = 3  # distinct upstreams failing in a row at one site: the site's own fault
EWMA = 0.3  # weight of the newest outcome
_KEEP = 1 - EWMA
SAMPLES = 64  # head times kept per site for its percentiles
P90_EVERY = 8  # answers between two computations of a site's p90
_HOST_CACHE = 65_536  # host -> site lookups remembered

_psl: PublicSuffixList | None = None
_sites: OrderedDict[str, str] = OrderedDict()


def _suffixes() -> PublicSuffixList:
    """The list, parsed once per process (about 50 ms): from the copy bundled with the package, never
    fetched (its constructor reads a file beside its module and nothing else)."""
    global _psl
    if _psl is None:
        _psl = PublicSuffixList()
    return _psl


def site_of(host: str) -> str:
    """The registrable domain of ``host`` (lower case), or the host itself for an IP address or a name
    with no registrable part.  Cached (bounded): the hot path pays a dict lookup."""
    site = _sites.get(host)
    if site is not None:
        return site
    name = host.lower().rstrip(".").strip("[]")
    try:
        ipaddress.ip_address(name)
        site = name
    except ValueError:
        site = _suffixes().privatesuffix(name) or name
    _sites[host] = site
    if len(_sites) > _HOST_CACHE:
        _sites.popitem(last=False)
    return site


MARGIN_OK = 0.2  # success EWMAs this far apart are clearly different
MARGIN_SECONDS = 0.2  # head times at least this far apart (and twice as long) are clearly different
WEAK_OK = 1 - MARGIN_OK  # a record at least this good, and...
WEAK_SECONDS = MARGIN_SECONDS  # ...at most this slow, cannot be clearly beaten: no need to look further


def beats(b: PairHealth | None, a: PairHealth | None) -> bool:
    """Whether the upstream with record ``b`` clearly did better at a site than the one with ``a``
    (more successes, or answers in less than half the time); a tie keeps ``a``."""
    if b is None:
        return a is not None and a.ok < 0.5  # an untried upstream beats one that keeps failing here
    if a is None:
        return False
    if b.ok - a.ok > MARGIN_OK:
        return True
    if a.ok - b.ok > MARGIN_OK:
        return False
    return (
        a.seconds is not None
        and b.seconds is not None
        and a.seconds > 2 * b.seconds
        and a.seconds - b.seconds > MARGIN_SECONDS
    )


class PairHealth:
    """One upstream at one site."""

    __slots__ = ("ok", "rest_until", "seconds")

    def __init__(self) -> None:
        self.ok = 1.0  # EWMA of success (1 = every request answered without a ban)
        self.seconds: float | None = None  # EWMA of the time to the answer's head
        self.rest_until = 0.0


class SiteStats:
    """One site: counts, recent head times, and who failed there since its last success."""

    __slots__ = (
        "bans", "covered", "exits", "failures", "fresh", "next", "p90", "picks", "requests", "rests", "run",
        "samples", "successes",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.successes = 0
        self.bans = 0
        self.failures = 0
        self.samples = array("d")  # the latest SAMPLES head times, a ring (8 bytes each)
        self.next = 0  # where the next one goes once the ring is full
        self.p90: float | None = None  # cached (``SiteHealth.p90``)
        self.fresh = 0  # samples since it was computed
        self.run: set[int] = set()  # upstreams failing here since the last success
        self.rests: dict[int, float] = {}  # upstream id -> end of its rest here (for /api/sites)
        self.picks = 0  # picks for this site (distinct exits count their age in picks)
        self.exits: dict[str, int] = {}  # exit key -> the pick that last used it, least recent first
        # (bucket, its version, exits) when every exit of that bucket was last seen in ``exits``
        self.covered: tuple[object, int, dict[str, int]] | None = None

    def sample(self, seconds: float) -> None:
        samples = self.samples
        if len(samples) < SAMPLES:
            samples.append(seconds)
        else:
            samples[self.next] = seconds
            self.next = (self.next + 1) % SAMPLES

    def exit_age(self, key: str) -> int | None:
        """Picks for this site since ``key`` last served it (0: the latest), None: never (or forgotten)."""
        last = self.exits.get(key)
        return None if last is None else self.picks - last

    def saw_exit(self, key: str, window: int) -> None:
        """A pick for this site went out through exit ``key``; exits older than ``window`` are forgotten
        now and then (the table stays within twice the window)."""
        self.picks += 1
        self.exits.pop(key, None)  # re-inserted last: the dict stays in order of use
        self.exits[key] = self.picks
        if len(self.exits) > 2 * window:
            self.forget_exits(window)

    def forget_exits(self, window: int) -> None:
        """Exits that served this site more than ``window`` picks ago are forgotten (order kept)."""
        oldest = self.picks - window
        self.exits = {k: at for k, at in self.exits.items() if at > oldest}

    def percentile(self, q: float) -> float | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True, slots=True)
class SiteRow:
    """A site as ``/api/sites`` shows it."""

    site: str
    requests: int
    bans: int
    resting: int
    success_rate: float | None
    p50: float | None
    p95: float | None


class SiteHealth:
    """The per-site table.  ``ban_seconds = 0`` turns learning off: no rests and no weighing of picks
    (counts and head times are still kept, for ``/api/sites`` and hedging)."""

    def __init__(
        self,
        ban_seconds: float = 600.0,
        *,
        max_sites: int = 5_000,
        max_pairs: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ban_seconds = ban_seconds
        self.learning = ban_seconds > 0
        self.max_sites = max_sites
        self.max_pairs = max_pairs
        self._clock = clock
        self._pairs: OrderedDict[tuple[str, int], PairHealth] = OrderedDict()
        self._sites: OrderedDict[str, SiteStats] = OrderedDict()
        # upstream id -> its head times at every site (an EWMA): what an untried (site, upstream) pair is
        # expected to do (``prior``); bounded like the pairs
        self._upstreams: dict[int, PairHealth] = {}
        self.resting_count = 0  # rests recorded and not yet found expired (an upper bound)
        _suffixes()  # parsed now, at start-up, not on the first request's time

    # the tables ------------------------------------------------------------------------------
    def site(self, site: str) -> SiteStats:
        stats = self._sites.get(site)
        if stats is None:
            stats = self._sites[site] = SiteStats()
            if len(self._sites) > self.max_sites:
                self._sites.popitem(last=False)
        else:
            self._sites.move_to_end(site)
        return stats

    def known(self, site: str) -> SiteStats | None:
        return self._sites.get(site)

    def pair(self, site: str, proxy_id: int) -> PairHealth | None:
        return self._pairs.get((site, proxy_id))

    def _pair(self, site: str, proxy_id: int) -> PairHealth:
        key = (site, proxy_id)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = PairHealth()
            if len(self._pairs) > self.max_pairs:
                _, old = self._pairs.popitem(last=False)
                if old.rest_until:
                    self.resting_count = max(0, self.resting_count - 1)
        else:
            self._pairs.move_to_end(key)
        return pair

    def __len__(self) -> int:
        return len(self._sites)

    @property
    def pair_count(self) -> int:
        return len(self._pairs)

    # what requests met -------------------------------------------------------------------------
    def resting(self, site: str, proxy_id: int, now: float) -> bool:
        """Whether ``proxy_id`` rests for ``site`` now (a ban); an ended rest is cleared when met."""
        pair = self._pairs.get((site, proxy_id))
        if pair is None or not pair.rest_until:
            return False
        if pair.rest_until > now:
            return True
        pair.rest_until = 0.0
        self.resting_count = max(0, self.resting_count - 1)
        return False

    def served(self, site: str, proxy_id: int, seconds: float | None) -> None:
        """A request to ``site`` through ``proxy_id`` got its answer's head after ``seconds``.  Runs once
        per request: the table look-ups and the ring are written out here."""
        sites = self._sites
        stats = sites.get(site)
        if stats is None:
            stats = self.site(site)
        else:
            sites.move_to_end(site)
        stats.requests += 1
        stats.successes += 1
        if stats.run:
            stats.run.clear()
        key = (site, proxy_id)
        pairs = self._pairs
        pair = pairs.get(key)
        if pair is None:
            pair = self._pair(site, proxy_id)
        else:
            pairs.move_to_end(key)
        pair.ok = pair.ok * _KEEP + EWMA
        if seconds is not None:
            samples = stats.samples
            if len(samples) < SAMPLES:
                samples.append(seconds)
            else:
                samples[stats.next] = seconds
                stats.next = (stats.next + 1) % SAMPLES
            stats.fresh += 1
            old = pair.seconds
            pair.seconds = seconds if old is None else old * _KEEP + seconds * EWMA
            whole = self._upstreams.get(proxy_id)
            if whole is None:
                whole = self._upstream(proxy_id)
            old = whole.seconds
            whole.seconds = seconds if old is None else old * _KEEP + seconds * EWMA

    def slow(self, site: str, proxy_id: int, seconds: float) -> None:
        """``proxy_id`` had not answered at ``site`` after ``seconds`` (it lost a hedge): a failure to answer
        in time.  Its head time is at least that, so the record jumps to it at once (a blend would keep a
        slow upstream looking nearly as good as the rest, and picked first, since the hedge hides its real
        2-5 s); answers blend it back."""
        for pair in (self._pair(site, proxy_id), self._upstream(proxy_id)):
            pair.seconds = seconds if pair.seconds is None else max(pair.seconds, seconds)
        # and it counts as a failure there: what the site answered through it is never read (a late ban or
        # 429 is never seen), so its success record would otherwise stay perfect and beat, on successes
        # alone, every upstream whose bans were seen (the two-choices pick would send the site to it)
        self._pairs[(site, proxy_id)].ok *= 1 - EWMA

    def _upstream(self, proxy_id: int) -> PairHealth:
        whole = self._upstreams.get(proxy_id)
        if whole is None:
            whole = self._upstreams[proxy_id] = PairHealth()
            if len(self._upstreams) > self.max_pairs:
                del self._upstreams[next(iter(self._upstreams))]
        return whole

    def prior(self, proxy_id: int, latency_ms: float | None) -> PairHealth | None:
        """What an untried (site, upstream) pair is expected to do: the upstream's head times at the
        other sites, else its checked latency (``latency_ms``), else nothing known (None).  Never a ban or
        a failure: those are a site's own."""
        whole = self._upstreams.get(proxy_id)
        if whole is not None and whole.seconds is not None:
            return whole
        if latency_ms is None:
            return None
        guess = PairHealth()  # (not kept: the next check's latency is used as it comes)
        guess.seconds = latency_ms / 1000
        return guess

    def banned(self, site: str, proxy_id: int) -> None:
        """``site`` banned ``proxy_id`` (a status or a ban rule): it rests there for ``ban_seconds``."""
        stats = self.site(site)
        stats.requests += 1
        stats.bans += 1
        if len(stats.run) < SITE_FAULT_RUN:  # (a set of at most that many ids)
            stats.run.add(proxy_id)
        self.rest(site, proxy_id, stats)

    def rest(self, site: str, proxy_id: int, stats: SiteStats | None = None) -> None:
        """``proxy_id`` rests for ``site`` for ``ban_seconds`` (a ban of its own, or of the exit address
        it shares with a banned one); its success EWMA there drops as for a failure."""
        if stats is None:
            stats = self.site(site)
        pair = self._pair(site, proxy_id)
        pair.ok *= 1 - EWMA
        if self.learning:
            if not pair.rest_until:
                self.resting_count += 1
            now = self._clock()
            pair.rest_until = now + self.ban_seconds
            if len(stats.rests) >= 64:  # ended rests go now and then: bounded by the upstreams resting
                stats.rests = {pid: until for pid, until in stats.rests.items() if until > now}
            stats.rests[proxy_id] = pair.rest_until

    def failed(self, site: str, proxy_id: int) -> bool:
        """A request to ``site`` through ``proxy_id`` failed (refused, reset, timed out).  True when the
        failure is the upstream's to answer for; False when the site is failing through every upstream
        (``SITE_FAULT_RUN`` distinct ones in a row): then it is the site's own, and benches nobody."""
        stats = self.site(site)
        stats.requests += 1
        stats.failures += 1
        if len(stats.run) < SITE_FAULT_RUN:  # (a set of at most that many ids)
            stats.run.add(proxy_id)
        if len(stats.run) >= SITE_FAULT_RUN:
            return False  # the site's own: no mark against this upstream here either
        pair = self._pair(site, proxy_id)
        pair.ok *= 1 - EWMA
        return True

    def better(self, site: str, first: int, second: int) -> bool:
        """Power of two choices: whether ``second`` clearly did better at ``site`` than ``first``."""
        return beats(self._pairs.get((site, second)), self._pairs.get((site, first)))

    def p90(self, site: str) -> float | None:
        """The site's recent p90 head time (hedging's wait), recomputed every ``P90_EVERY`` answers."""
        stats = self._sites.get(site)
        if stats is None or not stats.samples:
            return None
        if stats.p90 is None or stats.fresh >= P90_EVERY:
            stats.p90 = stats.percentile(0.9)
            stats.fresh = 0
        return stats.p90

    def rows(self, limit: int = 500) -> list[SiteRow]:
        """The busiest sites (by requests), for ``/api/sites``; O(sites log sites), off the hot path."""
        now = self._clock()
        busiest = heapq.nlargest(limit, self._sites.items(), key=lambda item: item[1].requests)
        return [
            SiteRow(
                site=site,
                requests=stats.requests,
                bans=stats.bans,
                resting=sum(1 for until in stats.rests.values() if until > now),
                success_rate=round(stats.successes / stats.requests, 4) if stats.requests else None,
                p50=stats.percentile(0.5),
                p95=stats.percentile(0.95),
            )
            for site, stats in busiest
        ]
