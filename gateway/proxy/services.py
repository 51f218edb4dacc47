"""What every step of a request reaches for, built once by the server (the composition of the data plane)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from config import Settings
from config.settings import GatewaySettings
from gateway.proxy.accounting import Accounting
from gateway.proxy.admission import Admitter
from gateway.proxy.dialing import Dialer
from pool.selector import Selector

__all__ = ["Services"]


@dataclass(eq=False)
class Services:
    settings: Settings
    gw: GatewaySettings
    loop: asyncio.AbstractEventLoop
    selector: Selector
    admitter: Admitter
    dialer: Dialer
    accounting: Accounting
    spawn: Callable[[Coroutine[Any, Any, None], str], object]
    closing: bool = False
