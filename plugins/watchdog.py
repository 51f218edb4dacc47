"""A loop-lag watchdog: names the plugin call that holds the event loop (``time.sleep`` in parse()).

A timeout cannot stop code that never yields, and while it runs nothing else does (``/healthz``
included).  A callback on the loop stamps a heartbeat every ``interval``; a thread watches the stamp,
and when it is older than ``threshold`` it asks which task the loop is running and
``PluginHealth.running`` which plugin call that task is in, then logs one warning per stall and
counts it as that plugin's error.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from plugins.health import PluginHealth

__all__ = ["LoopWatchdog"]

log = logging.getLogger("proxy_pool.plugins")


class LoopWatchdog:
    def __init__(self, health: PluginHealth, *, threshold: float = 1.0, interval: float = 0.2) -> None:
        self.health = health
        self.threshold = threshold
        self.interval = interval
        self.stalls = 0
        self._beat = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._beat = time.monotonic()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _tick(self) -> None:
        self._beat = time.monotonic()
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        stalled = False
        while not self._stop.wait(self.interval):
            lag = time.monotonic() - self._beat
            if lag < self.threshold:
                stalled = False
                continue
            if stalled:
                continue
            stalled = True
            self.stalls += 1
            task = asyncio.current_task(loop)  # the task the loop is running: the one that blocks it
            call = self.health.running(task)
            if call is None:
                where = f"task {task.get_name()}" if task is not None else "a callback"
                log.info("event loop blocked for more than %.1f s (%s, no plugin call)", lag, where)
                continue
            plugin, _, hook = call.partition(".")
            log.warning("event loop blocked for more than %.1f s by plugin %s (in %s)", lag, plugin, hook)
            loop.call_soon_threadsafe(self.health.blocked, plugin, hook, lag)
