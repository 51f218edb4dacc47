"""``proxy-pool``: the command line.  Parsing and error mapping here; the work in ``gateway.cli.commands``.

Exit codes: 0 done, 1 a runtime failure, 2 a usage or configuration mistake (one line on stderr,
never a traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from config import ConfigError
from pool.errors import PoolError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="F", help="TOML settings file (default: ./proxy-pool.toml if present)")
    parser.add_argument(
        "--db", metavar="PATH_OR_URL", help="SQLite file or postgresql://user@host:port/db (default: storage.path)"
    )
    parser.add_argument("--log-format", choices=("text", "json"), help="log line format")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level")


def _format(parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("table", "json")) -> None:
    parser.add_argument("--format", choices=choices, default="table", help="output format")


def _version() -> str:
    try:
        return importlib.metadata.version("proxy-pool")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _workers(text: str) -> int:
    """``--workers N`` or ``--workers auto`` (the cores this process may run on)."""
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="proxy-pool", description="Self-hosted rotating proxy gateway with its own validated pool.")
    parser.add_argument("--version", action="version", version=f"proxy-pool {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway, the admin API, the scraper and the checker")
    _common(serve)
    serve.add_argument("--listen", metavar="H:P", help="gateway address (default 127.0.0.1:8899)")
    serve.add_argument("--admin-listen", metavar="H:P", help="admin API address (default 127.0.0.1:8898)")
    serve.add_argument(
        "--proxies", metavar="F_OR_URL", action="append", default=[], help="a proxy list to serve from (repeatable)"
    )
    serve.add_argument("--no-default-sources", action="store_true", help="do not scrape the built-in public lists")
    serve.add_argument(
        "--workers", type=_workers, default=1, metavar="N",
        help="N processes sharing the listening sockets ('auto': one per core)",
    )
    serve.add_argument("--replica-name", metavar="NAME", help="this replica's name (default: host name and port)")
    serve.add_argument("--worker-of", metavar="N", type=int, help=argparse.SUPPRESS)  # set by --workers for its children
    serve.add_argument("--pool-lock", metavar="FD", type=int, help=argparse.SUPPRESS)  # the supervisor's serve lock

    check = sub.add_parser("check", help="run the checker pipeline once on some proxies")
    _common(check)
    check.add_argument("proxies", nargs="*", metavar="PROXY_URL")
    check.add_argument("--file", metavar="F", help="a file with one proxy URL a line")
    check.add_argument("--judge", metavar="URL", action="append", help="judge URL (repeatable)")
    _format(check)

    proxies = sub.add_parser("proxies", help="list the pool from the database")
    _common(proxies)
    proxies.add_argument("--status", choices=("new", "active", "dead"))
    proxies.add_argument("--protocol", choices=("http", "https", "socks4", "socks5"))
    proxies.add_argument("--country", metavar="CC")
    proxies.add_argument("--anonymity", choices=("transparent", "anonymous", "elite"))
    _format(proxies, ("table", "json", "txt"))
    psub = proxies.add_subparsers(dest="action", required=False, parser_class=_Parser, metavar="ACTION")
    p_recheck = psub.add_parser("recheck", help="re-check proxies now (ids, --status S or --all)")
    _common(p_recheck)
    p_recheck.add_argument("ids", type=int, nargs="*", metavar="ID")
    p_recheck.add_argument("--status", dest="recheck_status", choices=("new", "active", "dead"))
    p_recheck.add_argument("--all", action="store_true", help="every proxy in the pool")
    _format(p_recheck)
    p_remove = psub.add_parser("remove", help="remove proxies from the pool and the database")
    _common(p_remove)
    p_remove.add_argument("ids", type=int, nargs="+", metavar="ID")

    sources = sub.add_parser("sources", help="manage proxy sources")
    ssub = sources.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    s_list = ssub.add_parser("list", help="list sources and their last results")
    _common(s_list)
    _format(s_list)
    s_add = ssub.add_parser("add", help="add a source")
    _common(s_add)
    s_add.add_argument("url", metavar="URL")
    s_add.add_argument("--parser", metavar="NAME")
    s_add.add_argument("--schedule", metavar="CRON")
    s_add.add_argument("--protocol", metavar="P", help="protocol of bare host:port entries (default http)")
    s_remove = ssub.add_parser("remove", help="remove a source")
    _common(s_remove)
    s_remove.add_argument("id", type=int, metavar="ID")
    s_remove.add_argument("--keep-proxies", action="store_true", help="keep the proxies only this source listed")
    s_scrape = ssub.add_parser("scrape", help="scrape now (all sources, or one)")
    _common(s_scrape)
    s_scrape.add_argument("id", type=int, nargs="?", metavar="ID")
    _format(s_scrape)

    users = sub.add_parser("users", help="manage gateway users and credits")
    usub = users.add_subparsers(dest="action", required=True, parser_class=_Parser, metavar="ACTION")
    u_list = usub.add_parser("list", help="list users and balances")
    _common(u_list)
    _format(u_list)
    u_add = usub.add_parser("add", help="add a user; prints the password once")
    _common(u_add)
    u_add.add_argument("name", metavar="NAME")
    u_add.add_argument("--credits", type=int, default=0, metavar="N")
    _format(u_add)
    u_credit = usub.add_parser("credit", help="add credits to a user")
    _common(u_credit)
    u_credit.add_argument("name", metavar="NAME")
    u_credit.add_argument("amount", metavar="AMOUNT")
    u_debit = usub.add_parser("debit", help="take credits off a user (never below 0)")
    _common(u_debit)
    u_debit.add_argument("name", metavar="NAME")
    u_debit.add_argument("amount", metavar="AMOUNT")
    for action, what in (
        ("disable", "refuse a user's requests (407) until enabled again"),
        ("enable", "let a disabled user in again"),
        ("remove", "remove a user (the name becomes free; the ledger is kept)"),
    ):
        u_state = usub.add_parser(action, help=what)
        _common(u_state)
        u_state.add_argument("name", metavar="NAME")
    u_limit = usub.add_parser("limit", help="set a user's per-gateway limits (a number, or 'none')")
    _common(u_limit)
    u_limit.add_argument("name", metavar="NAME")
    u_limit.add_argument("--max-connections", metavar="N")
    u_limit.add_argument("--max-requests-per-second", "--max-rps", dest="max_requests_per_second", metavar="R")
    u_password = usub.add_parser("password", help="give a user a new generated password; prints it once")
    _common(u_password)
    u_password.add_argument("name", metavar="NAME")
    _format(u_password)

    token = sub.add_parser("admin-token", help="print the admin API token (configured, else the generated one)")
    _common(token)

    ca = sub.add_parser("ca", help="print the HTTPS interception CA certificate (PEM; never its key)")
    _common(ca)

    plugins = sub.add_parser("plugins", help="list discovered plugins")
    _common(plugins)
    _format(plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # serve --workers passes it on
    import gateway.cli.commands as commands  # lazily: parsing --help needs none of the services

    try:
        if args.command == "serve":
            return commands.serve(args)
        if args.command == "admin-token":
            return commands.admin_token(args)
        if args.command == "ca":
            return commands.ca(args)
        return asyncio.run(commands.run(args))
    except (ConfigError, PoolError) as exc:
        print(f"proxy-pool: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except commands.CommandFailed as exc:
        print(f"proxy-pool: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
