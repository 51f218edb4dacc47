"""``proxy-pool users list | add NAME [--credits N] | credit NAME AMOUNT | password NAME``.

Works on the database directly, so it runs with or without a serving gateway; a gateway that
serves the same database picks the change up within ``credits.flush_interval``.  Bad input raises
pool errors, which the CLI prints as one line with exit code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import json

from config import Settings
from gateway.cli.common import emit, open_store
from pool.accounts import add_credits, create_user, reset_password

__all__ = ["users_command"]


async def users_command(args: argparse.Namespace, settings: Settings) -> int:
    async with open_store(settings) as store:
        if args.action == "list":
            rows = [{"id": u.id, "name": u.name, "credits": u.balance} for u in await store.list_users()]
            emit(rows, ("id", "name", "credits"), args.format)
            return 0
        if args.action == "add":
            new = await create_user(store, args.name, args.credits)
            if args.format == "json":
                print(
                    json.dumps(
                        {
                            "id": new.record.id,
                            "name": new.record.name,
                            "password": new.password,
                            "credits": new.record.balance,
                        }
                    )
                )
            else:
                print(f"added user {new.record.name} with {new.record.balance} credits")
                print(f"password: {new.password}")
                print("(shown only this once; proxy URL: http://NAME:PASSWORD@HOST:PORT)")
            return 0
        if args.action == "password":
            password = await reset_password(store, args.name)
            if args.format == "json":
                print(json.dumps({"name": args.name, "password": password}))
            else:
                print(f"new password for {args.name}: {password}")
                print("(shown only this once; the old one no longer works)")
            return 0
        # credit
        balance = await add_credits(store, args.name, args.amount)
        print(f"{args.name}: {balance} credits")
        return 0
