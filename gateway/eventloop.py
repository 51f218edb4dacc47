"""The event loop ``proxy-pool serve`` runs on: uvloop where it is installed (a dependency wherever a
wheel exists: CPython on Linux and macOS), else asyncio's own, which stays the tested fallback (the test
suite runs on asyncio; tests/integration/test_event_loops.py runs gateway round trips on uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["loop_name", "run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on uvloop when it can be imported, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def loop_name() -> str:
    """``uvloop`` or ``asyncio``: the loop running now (for logs and benches)."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]
