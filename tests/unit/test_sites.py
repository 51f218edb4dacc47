"""pool.sites: the site of a host (offline), per-site figures, hedging's p90, bounds."""

from __future__ import annotations

import socket

import pytest

from pool import sites as sites_module
from pool.sites import SiteHealth, site_of


def test_the_suffix_list_never_touches_the_network(monkeypatch):
    """Parsing the bundled Public Suffix List and looking names up opens no socket and resolves nothing."""

    def refuse(*args, **kwargs):
        raise AssertionError("the suffix list tried the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(sites_module, "_psl", None)
    monkeypatch.setattr(sites_module, "_sites", type(sites_module._sites)())
    assert site_of("deep.www.bbc.co.uk") == "bbc.co.uk"
    assert site_of("user.github.io") == "user.github.io"  # a private suffix: each user is a site
    assert site_of("x.y.z.unknowntld") == "z.unknowntld"  # the default rule: one label before the TLD


@pytest.mark.parametrize(("host", "site"), [("WWW.Example.COM", "example.com"), ("example.com.", "example.com"),
                                            ("10.1.2.3", "10.1.2.3"), ("[2001:db8::1]", "2001:db8::1")])
def test_site_of_normalises(host, site):
    assert site_of(host) == site


def test_rows_percentiles_and_p90():
    now = [100.0]
    table = SiteHealth(60.0, clock=lambda: now[0])
    for i in range(1, 11):
        table.served("a.example", 1, i / 10)
    table.banned("a.example", 2)
    table.failed("a.example", 3)
    (row,) = table.rows()
    assert (row.site, row.requests, row.bans, row.resting) == ("a.example", 12, 1, 1)
    assert row.success_rate == round(10 / 12, 4) and row.p50 == 0.5 and row.p95 == 1.0
    assert table.p90("a.example") == 0.9 and table.p90("b.example") is None
    now[0] += 61
    assert table.rows()[0].resting == 0  # the rest ended


def test_a_lost_hedge_teaches_the_site_that_upstream_is_slow():
    table = SiteHealth()
    table.served("a.example", 1, 0.05)
    table.served("a.example", 2, 0.05)
    table.slow("a.example", 1, 3.0)
    assert table.better("a.example", 1, 2) and not table.better("a.example", 2, 1)


def test_one_lost_hedge_at_the_hedge_delay_marks_a_usually_fast_upstream_as_beaten():
    """The loser is recorded at no less than its elapsed time (a hedge at 0.5 s won at 0.75 s), not
    blended towards its old record: one loss is enough for the picks to prefer a 0.25 s upstream, and
    its next real answers bring it back."""
    table = SiteHealth()
    for _ in range(3):
        table.served("a.example", 1, 0.25)
        table.served("a.example", 2, 0.25)
    table.slow("a.example", 1, 0.75)
    assert table.pair("a.example", 1).seconds >= 0.75
    assert table.better("a.example", 1, 2)  # the second, 2, clearly did better than 1
    table.slow("a.example", 1, 0.6)  # a shorter loss never lowers what is known
    assert table.pair("a.example", 1).seconds >= 0.75
    for _ in range(5):
        table.served("a.example", 1, 0.25)
    assert not table.better("a.example", 1, 2)


def test_an_upstream_whose_hedges_lose_never_beats_one_whose_ban_was_seen_on_successes_alone():
    """A lost hedge is a failure to answer in time: the loser's success record drops as for a failure.
    Its own answers are never read (a late 429 is never seen), so otherwise it would keep a perfect
    record and the two-choices pick would move requests from an upstream banned once onto it."""
    table = SiteHealth()
    table.served("a.example", 1, 0.25)
    table.served("a.example", 2, 0.25)
    table.banned("a.example", 2)  # a 429 seen through 2
    for _ in range(2):
        table.slow("a.example", 1, 0.75)  # 1 lost two hedges: whatever the site said was never read
    assert not table.better("a.example", 2, 1)
    assert table.pair("a.example", 1).ok < table.pair("a.example", 2).ok
