"""What plugins did wrong at run time: errors per plugin, disabled checkers, the call running now.

Every call into a plugin goes through ``guard``/``aguard`` (mitmproxy's ``safecall``): an exception
is that plugin's error, logged once with its traceback per (plugin, hook, exception type), counted
(``plugin_errors_total{plugin}`` through ``on_error``), and the caller gets a fallback value.  A
checker that raised on each of its first ``PROBATION`` proxies is disabled: it is a bug of the
checker, not a verdict on the proxies.  ``running(task)`` tells the loop watchdog which plugin call
a task is in, so a plugin that blocks the event loop is named.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["PROBATION", "PluginHealth"]

log = logging.getLogger("proxy_pool.plugins")

PROBATION = 20  # a checker that raised on each of its first PROBATION proxies is disabled

T = TypeVar("T")


class PluginHealth:
    def __init__(self) -> None:
        self.errors: dict[str, int] = {}
        self.last_error: dict[str, str] = {}
        self.disabled: dict[str, str] = {}  # checker name -> why
        self.on_error: Callable[[str], None] | None = None
        self._logged: set[tuple[str, str, str]] = set()
        self._probation: dict[str, list[int]] = {}  # checker name -> [runs, raised]
        self._calls: dict[asyncio.Task[object] | None, list[str]] = {}

    # errors -------------------------------------------------------------------------------
    def failed(self, plugin: str, hook: str, exc: BaseException) -> None:
        """One exception out of ``plugin.hook``: count it, log it the first time it is seen."""
        self._count(plugin, f"{hook} raised {type(exc).__name__}: {exc}"[:300])
        key = (plugin, hook, type(exc).__name__)
        if key not in self._logged:
            self._logged.add(key)
            log.error(
                "plugin %s: %s raised %s (counted in plugin_errors_total; not logged again)",
                plugin,
                hook,
                type(exc).__name__,
                exc_info=exc,
            )

    def blocked(self, plugin: str, hook: str, seconds: float) -> None:
        """``plugin.hook`` held the event loop for ``seconds`` (the watchdog saw it)."""
        self._count(plugin, f"{hook} blocked the event loop for {seconds:.1f} s")

    def _count(self, plugin: str, what: str) -> None:
        self.errors[plugin] = self.errors.get(plugin, 0) + 1
        self.last_error[plugin] = what
        if self.on_error is not None:
            try:
                self.on_error(plugin)
            except Exception:  # a broken observer must not break the caller
                log.exception("plugin error observer failed")

    def guard(self, plugin: str, hook: str, call: Callable[[], T], fallback: T) -> T:
        """``call()`` inside the guard: its result, or ``fallback`` when it raised."""
        with self.calling(plugin, hook):
            try:
                return call()
            except Exception as exc:
                self.failed(plugin, hook, exc)
                return fallback

    async def aguard(self, plugin: str, hook: str, call: Callable[[], Awaitable[T]], fallback: T) -> T:
        with self.calling(plugin, hook):
            try:
                return await call()
            except Exception as exc:
                self.failed(plugin, hook, exc)
                return fallback

    # checkers on probation ----------------------------------------------------------------
    def checker_ran(self, checker: str, raised: BaseException | None) -> None:
        """One check finished; disables a checker whose first ``PROBATION`` runs all raised."""
        runs = self._probation.get(checker)
        if runs is None:
            runs = self._probation[checker] = [0, 0]
        if runs[0] >= PROBATION:
            return
        runs[0] += 1
        if raised is not None:
            runs[1] += 1
        if runs[0] == PROBATION and runs[1] == PROBATION and checker not in self.disabled:
            why = f"disabled: raised on its first {PROBATION} proxies ({type(raised).__name__}: {raised})"[:300]
            self.disabled[checker] = why
            log.error("checker %s %s; the other checkers go on without it", checker, why)

    # which plugin call a task is in (for the loop watchdog) -------------------------------
    def calling(self, plugin: str, hook: str) -> _Calling:
        """A context manager: inside it, the current task is in ``plugin.hook`` (a class, not a
        generator: the pipeline enters one per check and per should_skip)."""
        return _Calling(self._calls, f"{plugin}.{hook}")

    def running(self, task: asyncio.Task[object] | None) -> str | None:
        """``plugin.hook`` that ``task`` is inside, innermost first; None when it is in none."""
        stack = self._calls.get(task)
        return stack[-1] if stack else None

    def summary(self) -> dict[str, object]:
        """For ``/api/stats`` and ``proxy-pool plugins``."""
        return {"errors": dict(self.errors), "last_error": dict(self.last_error), "disabled": dict(self.disabled)}


class _Calling:
    __slots__ = ("_calls", "_name", "_task")

    def __init__(self, calls: dict[asyncio.Task[object] | None, list[str]], name: str) -> None:
        self._calls = calls
        self._name = name
        self._task: asyncio.Task[object] | None = None

    def __enter__(self) -> None:
        try:
            self._task = asyncio.current_task()
        except RuntimeError:  # no running loop (a synchronous caller)
            self._task = None
        stack = self._calls.get(self._task)
        if stack is None:
            stack = self._calls[self._task] = []
        stack.append(self._name)

    def __exit__(self, *exc: object) -> None:
        stack = self._calls[self._task]
        stack.pop()
        if not stack:
            del self._calls[self._task]
