"""Admin API for gateway users and credits: ``GET, POST /api/users``, ``POST /api/users/{name}/credits``,
``POST /api/users/{name}/password``.

Everything goes through the running ``Accounts``, so a new user or a top-up is live on the gateway
as soon as the answer is sent.  A generated password (a new user's, or a replacement) is in that one answer and nowhere else.
Errors are pool errors, mapped to JSON 400/404/409 by the admin middleware.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.admin.common import POOL, json_object
from pool.accounts import Accounts
from pool.errors import InvalidInputError

__all__ = ["add_user_routes"]


def _accounts(request: web.Request) -> Accounts:
    accounts = request.app[POOL].accounts
    if accounts is None:  # only before start-up finished
        raise web.HTTPServiceUnavailable(text="accounts not loaded yet")
    return accounts  # type: ignore[no-any-return]


def _integer(body: dict[str, Any], key: str, default: int | None = None) -> int:
    """JSON numbers only: ``"5"``, ``5.0`` and ``true`` are refused (the range is checked by Accounts)."""
    value = body.get(key, default)
    if value is None:
        raise InvalidInputError(f"{key} is required (an integer)")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(f"{key} must be an integer, got {value!r}")
    return value


async def list_users(request: web.Request) -> web.Response:
    return web.json_response({"users": [u.public_dict() for u in _accounts(request).users()]})


async def create_user(request: web.Request) -> web.Response:
    accounts = _accounts(request)
    body = await json_object(request)
    name = body.get("name")
    if not isinstance(name, str):
        raise InvalidInputError("name is required (a string)")
    new = await accounts.add_user(name, _integer(body, "credits", 0))
    answer = {"id": new.record.id, "name": new.record.name, "password": new.password}
    return web.json_response({**answer, "credits": accounts.balance(name)}, status=201)


async def credit_user(request: web.Request) -> web.Response:
    accounts = _accounts(request)
    body = await json_object(request)
    balance = await accounts.credit(request.match_info["name"], _integer(body, "amount"))
    return web.json_response({"credits": balance})


async def new_password(request: web.Request) -> web.Response:
    """A new generated password for a user; the old one stops working at once."""
    name = request.match_info["name"]
    password = await _accounts(request).set_password(name)
    return web.json_response({"name": name, "password": password})


def add_user_routes(app: web.Application) -> None:
    app.router.add_get("/api/users", list_users)
    app.router.add_post("/api/users", create_user)
    app.router.add_post("/api/users/{name}/credits", credit_user)
    app.router.add_post("/api/users/{name}/password", new_password)
