"""The one place that decides what a valid plugin is, and where plugins are looked up."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from plugins.health import PluginHealth
from plugins.protocols import Notifier, ProxyChecker, SourceParser
from pool.events import EventBus
from pool.models import Event

__all__ = [
    "PluginConflictError",
    "PluginError",
    "PluginInfo",
    "PluginRegistry",
    "PluginValidationError",
    "UnknownParserError",
]


class PluginError(Exception):
    """Root of the plugin errors."""


class PluginValidationError(PluginError):
    """An object does not have the shape of the protocol it claims."""


class PluginConflictError(PluginError):
    """Two parsers share one name."""


class UnknownParserError(PluginError, LookupError):
    pass


_REQUIRED: dict[type, dict[str, str]] = {
    SourceParser: {"name": "attr", "supports": "method", "parse": "async", "default_schedule": "method"},
    ProxyChecker: {
        "name": "attr",
        "stage": "attr",
        "priority": "attr",
        "timeout": "attr",
        "check": "async",
        "should_skip": "method",
    },
    Notifier: {"name": "attr", "subscribes_to": "attr", "notify": "async", "health_check": "async"},
}


def _validate(plugin: object, kind: type) -> None:
    problems: list[str] = []
    for attr, what in _REQUIRED[kind].items():
        if not hasattr(plugin, attr):
            problems.append(f"missing {attr}")
            continue
        value = getattr(plugin, attr)
        if what == "async" and not inspect.iscoroutinefunction(value):
            problems.append(f"{attr} must be an async method")
        elif what == "method" and not callable(value):
            problems.append(f"{attr} must be a method")
    if not problems:
        name = getattr(plugin, "name")
        if not isinstance(name, str) or not name:
            problems.append("name must be a non-empty string")
        if kind is ProxyChecker:
            if not isinstance(plugin.stage, int) or not isinstance(plugin.priority, int):  # type: ignore[attr-defined]
                problems.append("stage and priority must be integers")
            if not isinstance(plugin.timeout, (int, float)) or plugin.timeout <= 0:  # type: ignore[attr-defined]
                problems.append("timeout must be a positive number")
        if kind is Notifier:
            subs = plugin.subscribes_to  # type: ignore[attr-defined]
            if not isinstance(subs, (list, tuple)) or not all(isinstance(s, str) for s in subs):
                problems.append("subscribes_to must be a list of glob strings")
    if problems:
        raise PluginValidationError(f"{type(plugin).__name__} is not a valid {kind.__name__}: {', '.join(problems)}")


def kind_of(plugin: object) -> type | None:
    """The protocol a plugin satisfies, first match wins (parser, checker, notifier)."""
    for kind in (SourceParser, ProxyChecker, Notifier):
        if isinstance(plugin, kind):
            return kind
    return None


@dataclass(frozen=True)
class PluginInfo:
    kind: str  # "parser" | "checker" | "notifier" | "off" (opted out) | "error"
    name: str
    module: str
    stage: int | None = None
    priority: int | None = None
    error: str | None = None


class PluginRegistry:
    def __init__(self, events: EventBus | None = None) -> None:
        self._parsers: dict[str, SourceParser] = {}
        self._parser_modules: dict[str, str] = {}
        self._checkers: list[ProxyChecker] = []
        self._notifiers: list[Notifier] = []
        self._modules: dict[int, str] = {}
        self.errors: list[PluginInfo] = []
        self.opted_out: list[PluginInfo] = []  # modules whose create_plugin returned None (not configured)
        self.events = events or EventBus()
        self.health = PluginHealth()  # run-time errors of the plugins, disabled checkers

    # registration -------------------------------------------------------------------------
    def register(self, plugin: object, module: str = "") -> None:
        kind = kind_of(plugin)
        if kind is SourceParser:
            self.register_parser(plugin, module)  # type: ignore[arg-type]
        elif kind is ProxyChecker:
            self.register_checker(plugin, module)  # type: ignore[arg-type]
        elif kind is Notifier:
            self.register_notifier(plugin, module)  # type: ignore[arg-type]
        else:
            raise PluginValidationError(
                f"{type(plugin).__name__} matches no plugin protocol (SourceParser, ProxyChecker, Notifier)"
            )

    def register_parser(self, plugin: SourceParser, module: str = "") -> None:
        _validate(plugin, SourceParser)
        if plugin.name in self._parsers:
            raise PluginConflictError(
                f"two parsers are named {plugin.name!r}: {self._parser_modules[plugin.name] or '?'} "
                f"and {module or '?'}"
            )
        self._parsers[plugin.name] = plugin
        self._parser_modules[plugin.name] = module
        self._modules[id(plugin)] = module

    def register_checker(self, plugin: ProxyChecker, module: str = "") -> None:
        _validate(plugin, ProxyChecker)
        self._checkers.append(plugin)
        self._checkers.sort(key=lambda c: (c.stage, c.priority))
        self._modules[id(plugin)] = module

    def register_notifier(self, plugin: Notifier, module: str = "") -> None:
        _validate(plugin, Notifier)
        self._notifiers.append(plugin)
        self.events.add_notifier(plugin)
        self._modules[id(plugin)] = module

    # lookup -------------------------------------------------------------------------------
    @property
    def parsers(self) -> dict[str, SourceParser]:
        return dict(self._parsers)

    @property
    def checkers(self) -> list[ProxyChecker]:
        return list(self._checkers)

    @property
    def notifiers(self) -> list[Notifier]:
        return list(self._notifiers)

    def get_parser(self, name: str) -> SourceParser:
        try:
            return self._parsers[name]
        except KeyError:
            known = ", ".join(sorted(self._parsers)) or "none"
            raise UnknownParserError(f"unknown parser {name!r} (known: {known})") from None

    def get_parser_for_url(self, url: str) -> SourceParser | None:
        for parser in self._parsers.values():
            if self.health.guard(parser.name, "supports", lambda parser=parser: bool(parser.supports(url)), False):
                return parser
        return None

    def get_checker_pipeline(self) -> list[ProxyChecker]:
        """The checkers to run: every registered one but those disabled for raising (see health)."""
        disabled = self.health.disabled
        return [c for c in self._checkers if c.name not in disabled] if disabled else list(self._checkers)

    def module_of(self, plugin: object) -> str:
        return self._modules.get(id(plugin), "")

    def describe(self) -> list[PluginInfo]:
        rows = [PluginInfo("parser", p.name, self.module_of(p)) for p in self._parsers.values()]
        rows += [
            PluginInfo("checker", c.name, self.module_of(c), c.stage, c.priority, self.health.disabled.get(c.name))
            for c in self._checkers
        ]
        rows += [PluginInfo("notifier", n.name, self.module_of(n)) for n in self._notifiers]
        return rows + list(self.opted_out) + list(self.errors)

    # events -------------------------------------------------------------------------------
    async def emit(self, event: Event) -> None:
        """Fire-and-forget: returns at once; slow or failing notifiers never reach the caller."""
        self.events.emit_nowait(event)

    def emit_nowait(self, event: Event) -> None:
        self.events.emit_nowait(event)

    def emit_event(self, type_: str, **payload: Any) -> None:
        self.events.emit_nowait(Event(type_, payload))
