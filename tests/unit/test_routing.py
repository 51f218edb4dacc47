"""Routing parameters: `[NAME][-country-CC][-session-ID][-protocol-P][-anonymity-A]` and X-Proxy-Pool-* headers."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy import http1
from gateway.proxy.errors import BadRequest
from gateway.proxy.routing import (
    ALIASES,
    PARAMS,
    Credentials,
    RouteError,
    parse_proxy_authorization,
    parse_route,
    route_for,
    split_username,
    user_name,
)
from pool.models import AnonymityLevel, ProxyProtocol
from pool.selector import Route

ROUTING_WORDS = frozenset(PARAMS) | frozenset(ALIASES) | {"zone"}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def head(*headers: str, target: str = "http://origin.test/path") -> http1.RequestHead:
    lines = "".join(f"{h}\r\n" for h in headers)
    return http1.parse_request_head(f"GET {target} HTTP/1.1\r\nHost: origin.test\r\n{lines}\r\n".encode())


# -- the username ----------------------------------------------------------------------------------


def test_contract_example_with_user_name():
    """alice-country-de-session-x1: user alice, German exit, sticky session x1."""
    name, route = route_for("alice-country-de-session-x1", {}, with_name=True)
    assert name == "alice"
    assert route == Route(country="DE", session="x1")


def test_all_parameters_in_any_order():
    """Each parameter once, in any order; values normalised (country upper, enums lower)."""
    name, route = route_for(
        "bob-anonymity-ELITE-protocol-SOCKS5-session-s.1_a-country-us", {}, with_name=True
    )
    assert name == "bob"
    assert route == Route(
        protocol=ProxyProtocol.SOCKS5, country="US", anonymity=AnonymityLevel.ELITE, session="s.1_a"
    )


def test_auth_none_parameters_alone():
    """With auth = none the username is the parameters alone (curl -x http://country-de:x@...)."""
    name, route = route_for("country-de", {}, with_name=False)
    assert name is None and route == Route(country="DE")


def test_auth_none_tolerates_and_ignores_a_leading_name():
    """Clients often send some user name; with auth = none it is ignored."""
    assert route_for("anyone-protocol-http", {}, with_name=False)[1] == Route(protocol=ProxyProtocol.HTTP)
    assert route_for("anyone", {}, with_name=False)[1] == Route()


def test_no_username_means_any_route():
    """No Proxy-Authorization at all: no name, no filter."""
    assert route_for(None, {}, with_name=False) == (None, Route())
    assert route_for("", {}, with_name=False) == (None, Route())


def test_user_name_alone():
    """A plain user name asks for nothing in particular."""
    assert route_for("alice", {}, with_name=True) == ("alice", Route())


@pytest.mark.parametrize(
    ("username", "with_name", "part"),
    [
        ("alice-city-berlin", True, "'city'"),
        ("alice-country", True, "'country'"),
        ("alice-country-de-country-fr", True, "'country'"),
        ("alice-country-de-", True, "''"),
        ("country-de", True, "'country'"),
        ("", True, "empty"),
        ("x-bogus-1", False, "'bogus'"),
        ("country--session-a", False, "'country'"),
    ],
)
def test_malformed_username_names_the_part(username, with_name, part):
    """Unknown, valueless or repeated parameters: a 400 naming the bad part."""
    with pytest.raises(RouteError) as info:
        split_username(username, with_name=with_name)
    assert info.value.status == 400
    assert part in info.value.message
    assert isinstance(info.value, BadRequest)


@pytest.mark.parametrize(
    ("params", "part"),
    [
        ({"country": "deu"}, "country='deu'"),
        ({"country": "d1"}, "country='d1'"),
        ({"country": ""}, "country=''"),
        ({"session": "a" * 65}, "session="),
        ({"session": "a/b"}, "session='a/b'"),
        ({"protocol": "ftp"}, "protocol='ftp'"),
        ({"anonymity": "secret"}, "anonymity='secret'"),
    ],
)
def test_malformed_value_names_the_part(params, part):
    """A value of the wrong shape: 400 with the parameter and value named."""
    with pytest.raises(RouteError) as info:
        parse_route(params)
    assert info.value.status == 400 and part in info.value.message


@given(
    name=st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z").filter(lambda n: n not in ROUTING_WORDS),
    country=st.none() | st.from_regex(r"\A[A-Za-z]{2}\Z"),
    session=st.none() | st.from_regex(r"\A[A-Za-z0-9_.]{1,64}\Z"),
    protocol=st.none() | st.sampled_from(list(ProxyProtocol)),
    anonymity=st.none() | st.sampled_from(list(AnonymityLevel)),
    order=st.permutations(["country", "session", "protocol", "anonymity"]),
)
def test_username_roundtrip(name, country, session, protocol, anonymity, order):
    """Property: any valid parameter set, in any order, written into a username, reads back as the route."""
    values = {"country": country, "session": session, "protocol": protocol, "anonymity": anonymity}
    parts = [name] + [f"{k}-{values[k]}" for k in order if values[k] is not None]
    got_name, route = route_for("-".join(parts), {}, with_name=True)
    assert got_name == name
    assert route == Route(
        protocol=protocol, country=country.upper() if country else None, anonymity=anonymity, session=session
    )


@given(st.text(max_size=60))
def test_any_username_parses_or_is_a_route_error(username):
    """Fuzz: whatever the username, the answer is a route or a RouteError (a 400), never a crash."""
    for with_name in (True, False):
        try:
            route_for(username, {}, with_name=with_name)
        except RouteError as exc:
            assert exc.status == 400 and "\n" not in exc.message


# -- sessions and vendors' spellings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("username", "name", "route"),
    [
        ("customer-alice-cc-DE-sessid-x1-sesstime-10", "alice", Route(country="DE", session="x1", session_ttl=600.0)),
        (
            "user-alice-country-de-session-x1-sessionduration-30",
            "alice",
            Route(country="DE", session="x1", session_ttl=1800.0),
        ),
        ("brd-customer-hl_1234-zone-dc1-country-de-session-x1", "hl_1234", Route(country="DE", session="x1")),
        ("brd-customer-hl_1234-country-us", "hl_1234", Route(country="US")),
        ("alice-session-x1-sessmode-strict-sesstime-1440", "alice", Route(session="x1", strict=True, session_ttl=86400.0)),
        ("alice-session-x1-sessmode-SOFT", "alice", Route(session="x1")),
        ("user-country-de", "user", Route(country="DE")),  # a prefix only when a name follows it
        ("customer", "customer", Route()),
    ],
)
def test_vendor_spellings_route_like_ours(username, name, route):
    """Oxylabs, Decodo and Bright Data usernames give the route ours would; the user is the name they carry."""
    assert route_for(username, {}, with_name=True) == (name, route)
    assert user_name(username) == name
    assert route_for(username, {}, with_name=False) == (None, route)


@pytest.mark.parametrize(
    ("username", "part"),
    [
        ("alice-session-x-sessmode-loose", "sessmode"),
        ("alice-session-x-sesstime-0", "sesstime"),
        ("alice-session-x-sesstime-1441", "sesstime"),
        ("alice-session-x-sesstime-1e3", "sesstime"),
        ("alice-session-x-sesstime-٣", "sesstime"),  # a digit, but not an ASCII one
        ("alice-sesstime-10", "session"),
        ("alice-sessmode-strict", "session"),
        ("brd-customer-id-zone", "zone"),
        ("alice-cc-de-country-fr", "country"),  # the same parameter twice under two names
        ("alice-zone-z", "zone"),  # a zone only in Bright Data's spelling
    ],
)
def test_malformed_session_and_vendor_parts_name_the_part(username, part):
    with pytest.raises(RouteError) as info:
        route_for(username, {}, with_name=True)
    assert part in info.value.message


def test_session_headers_and_vendor_header_names():
    """X-Proxy-Pool-Sessmode / -Sesstime, and the vendors' names as headers too (X-Proxy-Pool-Cc)."""
    got = route_for(None, {"sessid": "a", "sessmode": "strict", "sesstime": "5", "cc": "jp"}, with_name=False)
    assert got == (None, Route(country="JP", session="a", strict=True, session_ttl=300.0))


_VENDOR_KEYS = {"country": ("country", "cc"), "session": ("session", "sessid"), "sesstime": ("sesstime", "sessionduration")}


@given(
    name=st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z").filter(lambda n: n not in ROUTING_WORDS and n != "brd"),
    prefix=st.sampled_from(["", "customer-", "user-", "brd-customer-"]),
    zone=st.none() | st.from_regex(r"\A[a-z0-9_]{1,8}\Z"),
    country=st.none() | st.from_regex(r"\A[A-Za-z]{2}\Z"),
    session=st.none() | st.from_regex(r"\A[A-Za-z0-9_.]{1,64}\Z"),
    strict=st.none() | st.booleans(),
    minutes=st.none() | st.integers(1, 1440),
    spelling=st.lists(st.integers(0, 1), min_size=3, max_size=3),
    order=st.permutations(["country", "session", "sessmode", "sesstime"]),
)
def test_vendor_username_roundtrip(name, prefix, zone, country, session, strict, minutes, spelling, order):
    """Property: any of the spellings (ours, Oxylabs, Decodo, Bright Data), any order, reads back as one route."""
    if session is None:
        strict = minutes = None
    values = {
        "country": country,
        "session": session,
        "sessmode": None if strict is None else ("strict" if strict else "soft"),
        "sesstime": None if minutes is None else str(minutes),
    }
    names = {key: _VENDOR_KEYS.get(key, (key,))[choice % len(_VENDOR_KEYS.get(key, (key,)))] for key, choice in zip(
        ("country", "session", "sesstime"), spelling, strict=True
    )}
    names["sessmode"] = "sessmode"
    parts = [prefix + name] + ([f"zone-{zone}"] if zone and prefix == "brd-customer-" else [])
    parts += [f"{names[k]}-{values[k]}" for k in order if values[k] is not None]
    got_name, route = route_for("-".join(parts), {}, with_name=True)
    assert got_name == name == user_name("-".join(parts))
    assert route == Route(
        country=country.upper() if country else None,
        session=session,
        strict=bool(strict),
        session_ttl=None if minutes is None else minutes * 60.0,
    )


# -- headers ---------------------------------------------------------------------------------------


def test_headers_alone_give_the_route():
    """X-Proxy-Pool-* headers carry the same parameters as the username."""
    h = head(
        "X-Proxy-Pool-Country: fr",
        "X-Proxy-Pool-Session: abc",
        "x-proxy-pool-protocol: socks4",
        "X-PROXY-POOL-ANONYMITY: anonymous",
    )
    assert h.pool_params == {
        "country": "fr",
        "session": "abc",
        "protocol": "socks4",
        "anonymity": "anonymous",
    }
    _, route = route_for(None, h.pool_params, with_name=False)
    assert route == Route(
        protocol=ProxyProtocol.SOCKS4, country="FR", anonymity=AnonymityLevel.ANONYMOUS, session="abc"
    )


def test_header_wins_over_the_username():
    """The same parameter in both places: the header wins; the others combine."""
    h = head("X-Proxy-Pool-Country: us")
    name, route = route_for("alice-country-de-session-s1", h.pool_params, with_name=True)
    assert name == "alice" and route == Route(country="US", session="s1")


def test_unknown_header_names_itself():
    """X-Proxy-Pool-City is not a parameter: 400 naming the header."""
    h = head("X-Proxy-Pool-City: paris")
    with pytest.raises(RouteError) as info:
        route_for(None, h.pool_params, with_name=False)
    assert "X-Proxy-Pool-City" in info.value.message


def test_malformed_header_value_names_the_part():
    """A bad header value is reported like a bad username part."""
    h = head("X-Proxy-Pool-Protocol: gopher")
    with pytest.raises(RouteError, match="protocol='gopher'"):
        route_for(None, h.pool_params, with_name=False)


def test_routing_headers_are_not_forwarded():
    """X-Proxy-Pool-* and Proxy-Authorization never reach the upstream; other headers do."""
    h = head(
        "X-Proxy-Pool-Country: de",
        "x-proxy-pool-session: s",
        f"Proxy-Authorization: {basic('alice-country-de', 'pw')}",
        "Accept: text/html",
    )
    forwarded = http1.forward_request_head(h, absolute=True).decode("latin-1").lower()
    assert "x-proxy-pool" not in forwarded
    assert "proxy-authorization" not in forwarded
    assert "accept: text/html" in forwarded


# -- Proxy-Authorization ---------------------------------------------------------------------------


def test_basic_credentials_decode():
    """Basic user:pass; the password may contain colons."""
    assert parse_proxy_authorization(basic("alice-country-de", "pa:ss")) == Credentials(
        "alice-country-de", "pa:ss"
    )
    assert parse_proxy_authorization("basic " + base64.b64encode(b"u:p").decode()) == Credentials("u", "p")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ],
)
def test_unusable_proxy_authorization_is_none(value):
    """Absent, not Basic, not base64, no colon, not UTF-8: no credentials (the server answers 407 if needed)."""
    assert parse_proxy_authorization(value) is None


def test_route_key_and_describe_for_503():
    """The route's bucket key is normalised; describe() is what the 503 body names."""
    route = Route(country="de", protocol=ProxyProtocol.HTTP)
    assert route.key == ("http", "DE", None)
    assert route.describe() == "protocol=http, country=de"
