"""The admin app: middleware (errors, the token) and the route table; served by ``AppRunner``/``TCPSite`` in our loop."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.admin.common import OPEN_PATHS, POOL, error
from gateway.admin.pac import add_pac_routes
from gateway.admin.routes import add_pool_routes
from gateway.admin.users import add_user_routes
from pool.errors import DuplicateError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from gateway.app import ProxyPool

__all__ = ["make_app", "start_admin"]


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    token = request.app[POOL].settings.admin.token
    if token is not None and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return web.json_response(
                {"error": "missing or wrong bearer token"}, status=401, headers={"WWW-Authenticate": "Bearer"}
            )
    try:
        return await handler(request)
    except NotFoundError as exc:
        return error(404, str(exc))
    except DuplicateError as exc:
        return error(409, str(exc))
    except (InvalidInputError, ValueError) as exc:
        return error(400, str(exc))


def make_app(pool: ProxyPool) -> web.Application:
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=1 << 20)
    app[POOL] = pool
    add_pool_routes(app)
    add_user_routes(app)
    add_pac_routes(app)
    extra = getattr(pool, "admin_routes", None)
    if extra is not None:
        extra(app)
    return app


async def start_admin(pool: ProxyPool, host: str, port: int) -> tuple[web.AppRunner, tuple[str, int]]:
    runner = web.AppRunner(make_app(pool), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    sockname = runner.addresses[0]
    return runner, (sockname[0], sockname[1])
