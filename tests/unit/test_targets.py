"""The canonical target host (gateway.proxy.targets): every form an upstream reads as an address is that address."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gateway.proxy.errors import BadRequest
from gateway.proxy.targets import canonical_host, parse_ipv4

# The forms of issue 12 (finding 1), each read as 127.0.0.1 or 0.0.0.0 by the software behind an upstream.
ISSUE_FORMS = {
    "2130706433": "127.0.0.1",
    "0x7f000001": "127.0.0.1",
    "127.1": "127.0.0.1",
    "0177.0.0.1": "127.0.0.1",
    "127.000.000.001": "127.0.0.1",
    "0": "0.0.0.0",
    "[::ffff:127.0.0.1]": "127.0.0.1",
    "::ffff:127.0.0.1": "127.0.0.1",
    "::ffff:7f00:1": "127.0.0.1",
    "127.0.0.%31": "127.0.0.1",
    "127.0.0.1.": "127.0.0.1",
    "0x7F.0.0.1": "127.0.0.1",
    "0x7f.1": "127.0.0.1",
    "017700000001": "127.0.0.1",
    "::7f00:1": "127.0.0.1",  # IPv4-compatible
    "64:ff9b::7f00:1": "127.0.0.1",  # NAT64 well-known prefix
    "１２７.０.０.１": "127.0.0.1",  # full-width digits (UTS 46 maps them)
    "127。0。0。1": "127.0.0.1",  # ideographic full stop
    "%31%32%37.0.0.1": "127.0.0.1",
}


@pytest.mark.parametrize(("host", "address"), sorted(ISSUE_FORMS.items()))
def test_numeric_forms_are_their_address(host, address):
    """Each numeric form of the issue is read as the address the upstream would dial."""
    assert canonical_host(host) == address


@pytest.mark.parametrize(
    ("host", "canonical"),
    [
        ("example.com", "example.com"),
        ("Example.COM", "example.com"),
        ("ｌｏｃａｌｈｏｓｔ", "localhost"),
        ("LOCALHOST.", "localhost."),
        ("bücher.example", "xn--bcher-kva.example"),
        ("exa%6Dple.com", "example.com"),
        ("a_b.example", "a_b.example"),
        ("0xg", "0xg"),  # not a hex number: a name
        ("::1", "::1"),
        ("::", "::"),
        ("2001:DB8::1", "2001:db8::1"),
        ("93.184.216.34", "93.184.216.34"),
        ("1.256", "1.0.1.0"),
    ],
)
def test_names_and_literals_canonical(host, canonical):
    """Names are lower-case ASCII (IDNA), literals compressed; already canonical hosts stay as they are."""
    assert canonical_host(host) == canonical


@pytest.mark.parametrize(
    "host",
    ["", "1.2.3.4.5", "999.1.1.1", "127.0.0.256", "4294967296", "08.1", "foo.1", "abc.0x1", "a..b", "%ff",
     "fe80::1%eth0", "[::g]", "a b", "exa%2fmple.com", "ex%00ample", "x" * 64 + ".example", "a." * 130 + "b",
     "ex!ample.com", "%2e"],
)
def test_neither_name_nor_address_is_400(host):
    """A host that is no DNS name and no IP literal is refused with 400 naming it."""
    with pytest.raises(BadRequest) as caught:
        canonical_host(host)
    assert caught.value.status == 400


# properties ------------------------------------------------------------------------------------------
def _part(value: int, style: str, upper: bool) -> str:
    if style == "hex":
        text = f"0x{value:x}"
        return text.upper() if upper else text
    if style == "oct":
        return f"0{value:o}"
    return str(value)


@st.composite
def ipv4_spellings(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Address]:
    """An IPv4 address written in 1 to 4 parts, each decimal, hex or octal, maybe with a trailing dot
    and percent-encoded characters: every way inet_aton / WHATWG accept."""
    address = draw(st.ip_addresses(v=4))
    value = int(address)
    count = draw(st.integers(1, 4))
    octets = [(value >> s) & 0xFF for s in (24, 16, 8, 0)]
    values = octets[: count - 1] + [value & (0xFFFFFFFF >> (8 * (count - 1)))]
    parts = [_part(v, draw(st.sampled_from(["dec", "hex", "oct"])), draw(st.booleans())) for v in values]
    text = ".".join(parts) + draw(st.sampled_from(["", "."]))
    encoded = "".join(f"%{ord(c):02X}" if draw(st.integers(0, 5)) == 0 else c for c in text)
    return encoded, address


@given(ipv4_spellings())
@example(("2130706433", ipaddress.IPv4Address("127.0.0.1")))
def test_every_ipv4_spelling_is_its_address(spelled):
    """Whatever the spelling, the canonical host is the dotted quad of the address (so a loopback
    address is never taken for a name)."""
    text, address = spelled
    assert canonical_host(text) == str(address)


@given(st.ip_addresses(v=4), st.sampled_from(["::ffff:{}", "::ffff:{hex}", "[::ffff:{}]", "::{hex}", "64:ff9b::{}"]))
def test_ipv4_in_ipv6_clothing_is_the_ipv4_address(address, form):
    """IPv4-mapped, IPv4-compatible and NAT64 IPv6 literals are their IPv4 address."""
    value = int(address)
    assume(not (form == "::{hex}" and value <= 1))  # :: and ::1 are IPv6's own
    hexed = f"{value >> 16:x}:{value & 0xFFFF:x}"
    assert canonical_host(form.format(address, hex=hexed)) == str(address)


HOSTISH = st.text(alphabet="0123456789abcdefxX.%:[]-_gklmz", min_size=1, max_size=24)


def _inet_aton(text: str) -> str | None:
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        return None


@settings(max_examples=500)
@given(HOSTISH)
@example("0x")
@example("0x.0x.0")
@example("127.1.")
def test_never_a_name_that_inet_aton_reads_as_an_address(host):
    """Safety: a host accepted as a name is one neither inet_aton nor ipaddress reads as an address;
    and a host inet_aton reads as an address is canonically that address."""
    try:
        result = canonical_host(host)
    except BadRequest:
        assert _inet_aton(host) is None, host
        return
    aton = _inet_aton(host)
    if aton is not None:
        assert result == aton
    try:
        literal = ipaddress.ip_address(result)
    except ValueError:
        assert _inet_aton(result) is None and _inet_aton(result.rstrip(".")) is None
        assert parse_ipv4(result) is None
    else:
        assert str(literal) == result


@settings(max_examples=300)
@given(st.one_of(HOSTISH, st.from_regex(r"[a-zA-Z0-9-]{1,10}(\.[a-zA-Z0-9-]{1,10}){0,3}\.?", fullmatch=True),
                 st.ip_addresses().map(str)))
def test_canonical_form_is_a_fixed_point(host):
    """Round trip: the canonical form of a canonical form is itself."""
    try:
        once = canonical_host(host)
    except BadRequest:
        return
    assert canonical_host(once) == once


@given(st.ip_addresses(v=6))
def test_ipv6_literals_keep_or_unwrap(address):
    """An IPv6 literal is its compressed form, or the IPv4 address it carries; loopback stays loopback."""
    result = ipaddress.ip_address(canonical_host(str(address)))
    mapped = address.ipv4_mapped
    if mapped is not None:
        assert result == mapped
    elif result.version == 6:
        assert result == address
    if address.is_loopback or (mapped is not None and mapped.is_loopback):
        assert result.is_loopback
