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
from gateway.proxy.bans import BanRules
from gateway.proxy.dialing import Dialer
from pool.selector import Selector

__all__ = ["HELD_MAX", "Services"]

# bytes held from a client that is not being read for (a pipelined request while the previous answer is
# under way, data sent after a CONNECT or a SOCKS request while the upstream is dialed, a client waiting
# for a slot) before reading from it is paused: one bound for every protocol on the port
HELD_MAX = 1 << 17


@dataclass(eq=False)
class Services:
    settings: Settings
    gw: GatewaySettings
    loop: asyncio.AbstractEventLoop
    selector: Selector
    admitter: Admitter
    dialer: Dialer
    accounting: Accounting
    bans: BanRules  # which answers are bans (retry_on_status, [[gateway.ban_rules]])
    spawn: Callable[[Coroutine[Any, Any, None], str], object]
    closing: bool = False
