"""Admin API for gateway users and credits: ``GET, POST /api/users``, ``POST /api/users/{name}/credits``
(a negative amount debits, never below 0), ``POST /api/users/{name}/password``, ``PATCH /api/users/{name}``
(enabled, per-user limits) and ``DELETE /api/users/{name}``.

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
    """A top-up, or with a negative amount a debit: ``{"credits", "debited"}`` (less than asked when
    the rest was spent meanwhile, see ``pool.accounts``)."""
    accounts = _accounts(request)
    body = await json_object(request)
    amount = _integer(body, "amount")
    name = request.match_info["name"]
    if amount < 0:
        debited, balance = await accounts.debit(name, -amount)
        return web.json_response({"credits": balance, "debited": debited})
    balance = await accounts.credit(name, amount)
    return web.json_response({"credits": balance})


async def update_user(request: web.Request) -> web.Response:
    """``{"enabled", "max_connections", "max_requests_per_second"}``, any of them; null lifts a limit."""
    accounts = _accounts(request)
    body = await json_object(request)
    unknown = set(body) - {"enabled", "max_connections", "max_requests_per_second"}
    if unknown:
        raise InvalidInputError(f"unknown field(s): {', '.join(sorted(unknown))}")
    if "enabled" in body and not isinstance(body["enabled"], bool):
        raise InvalidInputError(f"enabled must be true or false, got {body['enabled']!r}")
    enabled = body.pop("enabled", None)
    view = await accounts.update(request.match_info["name"], enabled=enabled, **body)
    return web.json_response(view.public_dict())


async def delete_user(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await _accounts(request).remove(name)
    return web.json_response({"deleted": name})


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
    app.router.add_patch("/api/users/{name}", update_user)
    app.router.add_delete("/api/users/{name}", delete_user)
