"""The admin app: middleware (the guard: token, Host, CSRF; errors) and the route table; served by ``AppRunner``/``TCPSite`` in our loop."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.admin.capem import add_ca_routes
from gateway.admin.common import POOL, error
from gateway.admin.dashboard import add_dashboard_routes
from gateway.admin.guard import THROTTLE, TOKEN, guard_middleware
from gateway.admin.pac import add_pac_routes
from gateway.admin.routes import add_pool_routes
from gateway.admin.throttle import TokenThrottle
from gateway.admin.users import add_user_routes
from pool.errors import DuplicateError, InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from gateway.app import ProxyPool

__all__ = ["make_app", "start_admin"]


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFoundError as exc:
        return error(404, str(exc))
    except DuplicateError as exc:
        return error(409, str(exc))
    except (InvalidInputError, ValueError) as exc:
        return error(400, str(exc))


def make_app(pool: ProxyPool, token: str) -> web.Application:
    """The admin app; ``token`` is the bearer token every ``/api/*`` request must carry."""
    app = web.Application(middlewares=[guard_middleware, _errors], client_max_size=1 << 20)
    app[POOL] = pool
    app[TOKEN] = token
    app[THROTTLE] = TokenThrottle()
    add_pool_routes(app)
    add_user_routes(app)
    add_pac_routes(app)
    add_ca_routes(app)
    add_dashboard_routes(app)
    extra = getattr(pool, "admin_routes", None)
    if extra is not None:
        extra(app)
    return app


async def start_admin(
    pool: ProxyPool, host: str, port: int, token: str
) -> tuple[web.AppRunner, tuple[str, int]]:
    runner = web.AppRunner(make_app(pool, token), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=pool.reuse_port or None)
    await site.start()
    sockname = runner.addresses[0]
    return runner, (sockname[0], sockname[1])
