"""``proxy-pool``: the command line (parsing and error mapping in ``main``, the work in ``commands``)."""

from gateway.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
