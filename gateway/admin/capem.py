"""``/ca.pem``: the interception CA's certificate (``gateway.intercept_listen``), for clients to trust.

A public certificate, so the route needs no token (like ``/proxy.pac``); never the key: the bytes served
are the parsed certificate re-serialised (``gateway.proxy.certs.CertificateAuthority.pem``).
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from gateway.admin.common import POOL, error

__all__ = ["CA_PATH", "add_ca_routes"]

CA_PATH = "/ca.pem"


class HasCA(Protocol):
    intercept_ca_pem: bytes | None  # None: interception is off


async def ca_pem(request: web.Request) -> web.Response:
    pool: HasCA = request.app[POOL]
    pem = getattr(pool, "intercept_ca_pem", None)
    if not pem:
        return error(404, "HTTPS interception is off (gateway.intercept_listen is not set): no CA to trust")
    return web.Response(
        body=pem,
        content_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="proxy-pool-ca.pem"', "Cache-Control": "no-cache"},
    )


def add_ca_routes(app: web.Application) -> None:
    app.router.add_get(CA_PATH, ca_pem)
