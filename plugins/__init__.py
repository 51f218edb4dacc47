"""The one import surface for plugin authors.

    from plugins import SourceParser, ProxyChecker, Notifier, CheckContext, CheckResult, DiscoveredProxy, Event

Built-in plugins import only from here and from ``config``, exactly like a contrib plugin.
"""

from plugins.judge_page import JUDGE_PAGE, JUDGE_PAGE_SHA256
from plugins.protocols import CheckContext, CheckResult, Notifier, ProxyChecker, SourceParser, TlsEndpoint
from plugins.registry import PluginConflictError, PluginRegistry, PluginValidationError
from pool.models import (
    AnonymityLevel,
    DiscoveredProxy,
    Event,
    Proxy,
    ProxyProtocol,
    ProxySource,
    ProxyStatus,
    UpstreamURL,
)

__all__ = [
    "JUDGE_PAGE",
    "JUDGE_PAGE_SHA256",
    "AnonymityLevel",
    "CheckContext",
    "CheckResult",
    "DiscoveredProxy",
    "Event",
    "Notifier",
    "PluginConflictError",
    "PluginRegistry",
    "PluginValidationError",
    "Proxy",
    "ProxyChecker",
    "ProxyProtocol",
    "ProxySource",
    "ProxyStatus",
    "SourceParser",
    "TlsEndpoint",
    "UpstreamURL",
]
