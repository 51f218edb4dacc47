"""A contrib notifier: append every event as one JSON line to a file beside the database.

Copy this file into the contrib directory and restart: ``proxy-pool plugins`` lists a notifier named
``jsonl``; events go to ``DB.events.jsonl`` (``proxy-pool.db.events.jsonl`` by default), one
``{"type", "payload", "at"}`` object a line, the same shape the webhook posts.

- ``notify`` is called off the request path and never slows the gateway, but it shares the event loop:
  the file is written in a worker thread.
- ``health_check`` runs every ``notifiers.health_interval`` seconds; False shows the notifier as down
  in ``/api/stats`` and as ``proxy_pool_notifier_up 0``.
- With replicas on PostgreSQL there is no database file to sit beside, so ``create_plugin`` returns
  None: the plugin stays off.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from config import Settings
from plugins import Event

__all__ = ["JsonLinesNotifier", "create_plugin"]


class JsonLinesNotifier:
    """Matches the ``Notifier`` protocol by shape; it inherits nothing."""

    name = "jsonl"

    def __init__(self, path: Path, subscribes_to: list[str] | None = None) -> None:
        self.path = path
        self.subscribes_to = subscribes_to or ["*"]  # globs: "proxy.*", "source.failed", ...

    def _append(self, line: str) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def notify(self, event: Event) -> None:
        await asyncio.to_thread(self._append, json.dumps(event.to_dict(), sort_keys=True))

    async def health_check(self) -> bool:
        return os.access(self.path.parent, os.W_OK)


def create_plugin(settings: Settings) -> JsonLinesNotifier | None:
    if settings.storage.shared:
        return None
    return JsonLinesNotifier(Path(settings.storage.path + ".events.jsonl"))
