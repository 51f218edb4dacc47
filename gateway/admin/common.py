"""What every admin route shares: the typed app key, JSON errors, and strict parameter readers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from pool.errors import InvalidInputError

if TYPE_CHECKING:
    pass

__all__ = ["MAX_PAGE", "POOL", "country_param", "enum_param", "error", "int_param", "json_object"]

POOL = web.AppKey("pool", "ProxyPool")
MAX_PAGE = 1000


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def enum_param(request: web.Request, name: str, enum: type[Any]) -> Any:
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        return enum(value.lower())
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InvalidInputError(f"{name}={value!r}: expected one of {allowed}") from None


def int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    value = request.query.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError:
        raise InvalidInputError(f"{name}={value!r}: expected an integer") from None
    if not lo <= number <= hi:
        raise InvalidInputError(f"{name}={number}: expected {lo}..{hi}")
    return number


def country_param(request: web.Request) -> str | None:
    value = request.query.get("country")
    if value in (None, ""):
        return None
    if len(value) != 2 or not value.isalpha():
        raise InvalidInputError(f"country={value!r}: expected a two-letter ISO code")
    return value.upper()


async def json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidInputError("request body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidInputError("request body must be a JSON object")
    return body


