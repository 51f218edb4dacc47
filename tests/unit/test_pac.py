"""The PAC script, run by node with the standard PAC helper functions: what goes direct, what goes through."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from gateway.admin.pac import pac_script

NODE = shutil.which("node")

# the PAC helpers browsers provide, as in Mozilla's ascii_pac_utils (IPv4 isInNet on literal addresses)
HELPERS = """
function isPlainHostName(h) { return h.indexOf('.') < 0 && h.indexOf(':') < 0; }
function dnsDomainIs(h, d) { return h.length >= d.length && h.substring(h.length - d.length) === d; }
function toInt(ip) { return ip.split('.').reduce(function (a, b) { return a * 256 + Number(b); }, 0); }
function isInNet(ip, net, mask) {
  var m = toInt(mask);
  return (toInt(ip) & m) >>> 0 === (toInt(net) & m) >>> 0;
}
"""

DIRECT = [
    "localhost", "intranet", "app.localhost", "127.0.0.1", "127.9.9.9", "10.1.2.3", "172.16.0.1",
    "172.31.255.255", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "[::1]",
    "fd12:3456::1", "fc00::1", "fe80::1", "[fe80::1]",
]
PROXIED = ["example.com", "8.8.8.8", "172.32.0.1", "192.169.0.1", "11.0.0.1", "2001:db8::1", "fc0::1", "localhost.example"]


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_pac_sends_public_destinations_through_the_gateway_and_local_ones_direct():
    """Loopback, private, link-local literals and local names go DIRECT; everything else PROXY then SOCKS5."""
    script = pac_script("gw.example", 8899)
    program = HELPERS + script + f"\nconsole.log(JSON.stringify({json.dumps(DIRECT + PROXIED)}.map(h => FindProxyForURL('http://' + h + '/', h))));"
    out = subprocess.run([NODE, "-e", program], capture_output=True, text=True, timeout=20, check=True).stdout
    answers = dict(zip(DIRECT + PROXIED, json.loads(out), strict=True))
    assert {h: a for h, a in answers.items() if h in DIRECT and a != "DIRECT"} == {}
    assert {a for h, a in answers.items() if h in PROXIED} == {"PROXY gw.example:8899; SOCKS5 gw.example:8899"}


def test_pac_brackets_an_ipv6_gateway():
    """An IPv6 gateway address is written [addr]:port in the PROXY and SOCKS5 entries."""
    assert '"PROXY [::1]:8899; SOCKS5 [::1]:8899"' in pac_script("::1", 8899)
