"""``/proxy.pac`` and ``/wpad.dat``: a proxy auto-config file that sends browsers through the gateway.

Everything goes through ``PROXY`` (HTTP) then ``SOCKS5`` at the gateway's advertised address
(``gateway.public_address``, else the listen address; an unspecified listen address such as
``0.0.0.0`` becomes the host the browser fetched the PAC file from), except plain host names,
``localhost`` and ``*.localhost``, and literal addresses in loopback, link-local and private networks.
Names are never resolved by the script (``dnsResolve`` would leak every host to the local DNS and
stall the browser), so a name that resolves to a private address still goes through the gateway.
The file carries no secret, so the route needs no token.
"""

from __future__ import annotations

import ipaddress
import json

from aiohttp import web

from config import parse_host_port
from gateway.admin.common import POOL

__all__ = ["PAC_TYPE", "add_pac_routes", "pac_script"]

PAC_TYPE = "application/x-ns-proxy-autoconfig"

# IPv4 networks kept direct: loopback, RFC 1918 private, link-local, CGNAT shared space, "this network"
DIRECT_V4 = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8")

_TEMPLATE = """// proxy-pool: everything through the gateway except local and private destinations
function FindProxyForURL(url, host) {
  host = host.toLowerCase();
  if (host.charAt(0) === "[") host = host.substring(1, host.length - 1);
  if (isPlainHostName(host) || host === "localhost" || dnsDomainIs(host, ".localhost")) return "DIRECT";
  if (/^\\d+\\.\\d+\\.\\d+\\.\\d+$/.test(host)) {
    var nets = %(v4)s;
    for (var i = 0; i < nets.length; i++) {
      if (isInNet(host, nets[i][0], nets[i][1])) return "DIRECT";
    }
  } else if (host.indexOf(":") >= 0) {
    if (host === "::1" || host === "::") return "DIRECT";
    // fc00::/7 unique local, fe80::/10 link-local: a first group of four digits starting so
    if (/^(f[cd][0-9a-f]{2}|fe[89ab][0-9a-f]):/.test(host)) return "DIRECT";
  }
  return %(answer)s;
}
"""


def pac_script(host: str, port: int) -> str:
    """The PAC text for a gateway reachable at ``host:port`` (HTTP and SOCKS5 on that one port)."""
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    v4 = [[str(n.network_address), str(n.netmask)] for n in map(ipaddress.ip_network, DIRECT_V4)]
    return _TEMPLATE % {
        "v4": json.dumps(v4),
        "answer": json.dumps(f"PROXY {netloc}; SOCKS5 {netloc}"),
    }


def advertised(request: web.Request) -> tuple[str, int]:
    """Where browsers reach the gateway: ``public_address``, else the bound listen address; an
    unspecified listen host becomes the host this request came to (the machine the browser knows)."""
    pool = request.app[POOL]
    configured = pool.settings.gateway.public_address
    if configured:
        return parse_host_port(configured)
    host, port = pool.gateway_address or pool.settings.gateway.host_port
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        unspecified = False
    if unspecified:
        asked = request.url.host or "127.0.0.1"
        host = asked
    return host, port


async def proxy_pac(request: web.Request) -> web.Response:
    host, port = advertised(request)
    return web.Response(
        text=pac_script(host, port), content_type=PAC_TYPE, headers={"Cache-Control": "max-age=300"}
    )


def add_pac_routes(app: web.Application) -> None:
    app.router.add_get("/proxy.pac", proxy_pac)
    app.router.add_get("/wpad.dat", proxy_pac)
