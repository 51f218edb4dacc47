"""``proxy-pool users list | add | credit | debit | password | disable | enable | remove | limit``.

Beside a ``serve`` of the same SQLite file (``gateway.cli.serving``), every action goes through that
gateway's admin API with the admin token: the change is in force there when the command returns, and
the balances printed are the ones the gateway has (spends not yet written included; a debit comes out
of its lease, which holds every credit).  Otherwise (no serve, or PostgreSQL, whose replicas hear every
write by NOTIFY) the command works on the database: a debit there takes unleased credits and recalls
the replicas' leases (``pool.accounts.debit_credits``).  Input is checked here first: bad input raises
pool errors, which the CLI prints as one line with exit code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Protocol
from urllib.parse import quote

from config import Settings
from gateway.cli.common import emit, open_store
from gateway.cli.serving import AdminClient, running_admin
from pool.accounts import (
    add_credits,
    create_user,
    debit_credits,
    iso_time,
    parse_amount,
    parse_limits,
    reset_password,
    validate_name,
)
from pool.dbfiles import ServeLock, ServeLockHeld, local_database
from pool.errors import InvalidInputError
from pool.store import Store, UsageRow, UserRecord

__all__ = ["COLUMNS", "users_command"]

COLUMNS = ("id", "name", "credits", "enabled", "requests", "tunnels", "bytes_up", "bytes_down", "last_seen")
_NONE = ("none", "off", "unlimited")


class _Users(Protocol):
    async def list(self) -> list[dict[str, Any]]: ...
    async def add(self, name: str, credits: int) -> dict[str, Any]: ...
    async def credit(self, name: str, amount: int) -> int: ...
    async def debit(self, name: str, amount: int) -> tuple[int, int]: ...
    async def password(self, name: str) -> str: ...
    async def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]: ...
    async def remove(self, name: str) -> None: ...


def _row(user: UserRecord, used: UsageRow | None) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "credits": user.balance,
        "enabled": user.enabled,
        "max_connections": user.max_connections,
        "max_requests_per_second": user.max_requests_per_second,
        "requests": used.requests if used else 0,
        "tunnels": used.tunnels if used else 0,
        "bytes_up": used.bytes_up if used else 0,
        "bytes_down": used.bytes_down if used else 0,
        "last_seen": iso_time(used.last_seen if used else None),
    }


class _Database:
    """No gateway serving: the database itself (a debit takes unleased credits, see ``debit_credits``)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def list(self) -> list[dict[str, Any]]:
        usage = await self.store.usage()
        return [_row(u, usage.get(u.id)) for u in await self.store.list_users()]

    async def add(self, name: str, credits: int) -> dict[str, Any]:
        new = await create_user(self.store, name, credits)
        return {"id": new.record.id, "name": new.record.name, "password": new.password, "credits": new.record.balance}

    async def credit(self, name: str, amount: int) -> int:
        return await add_credits(self.store, name, amount)

    async def debit(self, name: str, amount: int) -> tuple[int, int]:
        await self._reclaim_dead_lease()
        return await debit_credits(self.store, name, amount, wait=self.settings.credits.lease_wait)

    async def _reclaim_dead_lease(self) -> None:
        """A SQLite file nobody serves: what a crashed serve left leased is the users' again (as that
        serve's next start would make it), so a debit can take it.  Under the serve lock, so no serve
        starts meanwhile."""
        database = local_database(self.settings.storage)
        if database is None or self.store.shared:
            return
        lock = ServeLock(database.absolute())
        try:
            lock.acquire()
        except ServeLockHeld:
            return  # a serve is starting: the credits are its lease
        try:
            await self.store.settle_stale_leases(None, forfeit=False)
        finally:
            lock.release()

    async def password(self, name: str) -> str:
        return await reset_password(self.store, name)

    async def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        record = await self.store.update_user(name, **changes)
        return _row(record, (await self.store.usage()).get(record.id))

    async def remove(self, name: str) -> None:
        await self.store.remove_user(name)


class _Gateway:
    """A serving gateway's admin API: its answers are its live state."""

    def __init__(self, admin: AdminClient) -> None:
        self.admin = admin

    @staticmethod
    def _user(name: str) -> str:
        return "/api/users/" + quote(name, safe="")

    async def list(self) -> list[dict[str, Any]]:
        return list((await self.admin.call("GET", "/api/users"))["users"])

    async def add(self, name: str, credits: int) -> dict[str, Any]:
        return dict(await self.admin.call("POST", "/api/users", {"name": name, "credits": credits}))

    async def credit(self, name: str, amount: int) -> int:
        return int((await self.admin.call("POST", self._user(name) + "/credits", {"amount": amount}))["credits"])

    async def debit(self, name: str, amount: int) -> tuple[int, int]:
        answer = await self.admin.call("POST", self._user(name) + "/credits", {"amount": -amount})
        return int(answer["debited"]), int(answer["credits"])

    async def password(self, name: str) -> str:
        return str((await self.admin.call("POST", self._user(name) + "/password"))["password"])

    async def update(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.admin.call("PATCH", self._user(name), changes))

    async def remove(self, name: str) -> None:
        await self.admin.call("DELETE", self._user(name))


def _limit(text: str | None) -> object:
    if text is None or text.strip().lower() in _NONE:
        return None
    try:
        return int(text) if text.strip().lstrip("+").isdigit() else float(text)
    except ValueError:
        raise InvalidInputError(f"limit must be a positive number or 'none', got {text!r}") from None


def _checked(args: argparse.Namespace) -> dict[str, Any]:
    """The action's arguments, validated before anything is asked of a gateway or the database."""
    action = args.action
    if action == "list":
        return {}
    name = validate_name(args.name)
    if action == "add":
        return {"name": name, "credits": parse_amount(args.credits, what="credits", allow_zero=True)}
    if action in ("credit", "debit"):
        return {"name": name, "amount": parse_amount(args.amount)}
    if action in ("disable", "enable"):
        return {"name": name, "changes": {"enabled": action == "enable"}}
    if action == "limit":
        wanted: dict[str, object] = {}
        if args.max_connections is not None:
            wanted["max_connections"] = _limit(args.max_connections)
        if args.max_requests_per_second is not None:
            wanted["max_requests_per_second"] = _limit(args.max_requests_per_second)
        if not wanted:
            raise InvalidInputError("give --max-connections and/or --max-requests-per-second (a number or 'none')")
        return {"name": name, "changes": parse_limits(wanted)}
    return {"name": name}


def _limits_line(name: str, row: dict[str, Any]) -> str:
    conns = row.get("max_connections")
    rps = row.get("max_requests_per_second")
    return f"{name}: max_connections {conns or 'none'}, max_requests_per_second {rps or 'none'}"


async def users_command(args: argparse.Namespace, settings: Settings) -> int:
    given = _checked(args)
    url = await running_admin(settings)
    if url is not None:
        async with AdminClient(url, settings) as admin:
            return await _run(args, given, _Gateway(admin))
    async with open_store(settings) as store:
        return await _run(args, given, _Database(store, settings))


async def _run(args: argparse.Namespace, given: dict[str, Any], users: _Users) -> int:
    action = args.action
    if action == "list":
        emit(await users.list(), COLUMNS, args.format)
        return 0
    name = given["name"]
    if action == "add":
        new = await users.add(name, given["credits"])
        if args.format == "json":
            print(json.dumps({k: new[k] for k in ("id", "name", "password", "credits")}))
        else:
            print(f"added user {new['name']} with {new['credits']} credits")
            print(f"password: {new['password']}")
            print("(shown only this once; proxy URL: http://NAME:PASSWORD@HOST:PORT)")
        return 0
    if action == "password":
        password = await users.password(name)
        if args.format == "json":
            print(json.dumps({"name": name, "password": password}))
        else:
            print(f"new password for {name}: {password}")
            print("(shown only this once; the old one no longer works)")
        return 0
    if action == "credit":
        print(f"{name}: {await users.credit(name, given['amount'])} credits")
        return 0
    if action == "debit":
        debited, balance = await users.debit(name, given["amount"])
        print(f"{name}: {balance} credits")
        if debited < given["amount"]:
            print(
                f"proxy-pool: debited {debited} of {given['amount']}: the rest was not there to take "
                "(spent, or still leased to a busy gateway)",
                file=sys.stderr,
            )
        return 0
    if action in ("disable", "enable"):
        await users.update(name, given["changes"])
        print(f"{name}: {action}d")
        return 0
    if action == "limit":
        print(_limits_line(name, await users.update(name, given["changes"])))
        return 0
    await users.remove(name)  # remove
    print(f"removed user {name} (its ledger is kept)")
    return 0
