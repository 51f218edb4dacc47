"""PluginRegistry: what a valid plugin is, parser name conflicts, lookups and the checker order."""

from __future__ import annotations

import pytest

from plugins import CheckResult, Event, PluginConflictError, PluginRegistry, PluginValidationError
from plugins.protocols import Notifier, ProxyChecker, SourceParser
from plugins.registry import PluginInfo, UnknownParserError, kind_of


class Parser:
    def __init__(self, name: str = "demo", suffix: str = ".demo") -> None:
        self.name = name
        self.suffix = suffix

    def supports(self, url: str) -> bool:
        return url.endswith(self.suffix)

    async def parse(self, raw, source):
        return []

    def default_schedule(self) -> str | None:
        return None


class Checker:
    def __init__(self, name: str = "chk", stage: int = 1, priority: int = 0, timeout: float = 1.0) -> None:
        self.name, self.stage, self.priority, self.timeout = name, stage, priority, timeout

    async def check(self, proxy, context) -> CheckResult:
        return CheckResult(True, "ok")

    def should_skip(self, proxy) -> bool:
        return False


class Note:
    def __init__(self, name: str = "note", subscribes_to=("*",)) -> None:
        self.name = name
        self.subscribes_to = list(subscribes_to) if isinstance(subscribes_to, tuple) else subscribes_to

    async def notify(self, event: Event) -> None:
        return None

    async def health_check(self) -> bool:
        return True


# -- registration by kind --------------------------------------------------------------------------


def test_register_routes_each_kind():
    """register() files parsers, checkers and notifiers by the protocol they satisfy."""
    reg = PluginRegistry()
    p, c, n = Parser(), Checker(), Note()
    for plugin in (p, c, n):
        reg.register(plugin, f"mod.{plugin.name}")
    assert reg.parsers == {"demo": p}
    assert reg.checkers == [c]
    assert reg.notifiers == [n]
    assert (kind_of(p), kind_of(c), kind_of(n)) == (SourceParser, ProxyChecker, Notifier)
    assert reg.module_of(c) == "mod.chk"


def test_object_matching_no_protocol_is_refused():
    """Something that is no plugin: PluginValidationError naming the protocols."""
    with pytest.raises(PluginValidationError, match="matches no plugin protocol"):
        PluginRegistry().register(object())


def test_parser_registered_directly():
    """The seed's register_parser / get_parser pair."""
    reg = PluginRegistry()
    p = Parser("plain2")
    reg.register_parser(p, "contrib/plain2.py")
    assert reg.get_parser("plain2") is p


# -- validation ------------------------------------------------------------------------------------


class SyncParse(Parser):
    def parse(self, raw, source):  # type: ignore[override]
        return []


class NotCallableSupports(Parser):
    supports = True  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("plugin", "register", "message"),
    [
        (SyncParse(), "register_parser", "parse must be an async method"),
        (NotCallableSupports(), "register_parser", "supports must be a method"),
        (Parser(name=""), "register_parser", "name must be a non-empty string"),
        (Parser(name=7), "register_parser", "name must be a non-empty string"),  # type: ignore[arg-type]
        (Checker(stage="1"), "register_checker", "stage and priority must be integers"),  # type: ignore[arg-type]
        (Checker(priority=1.5), "register_checker", "stage and priority must be integers"),  # type: ignore[arg-type]
        (Checker(timeout=0), "register_checker", "timeout must be a positive number"),
        (Checker(timeout="5"), "register_checker", "timeout must be a positive number"),  # type: ignore[arg-type]
        (Note(subscribes_to="proxy.*"), "register_notifier", "subscribes_to must be a list of glob strings"),
        (Note(subscribes_to=["ok", 3]), "register_notifier", "subscribes_to must be a list of glob strings"),
    ],
)
def test_invalid_shapes_are_refused_with_the_reason(plugin, register, message):
    """A plugin of the wrong shape: PluginValidationError with the class and the reason."""
    with pytest.raises(PluginValidationError) as info:
        getattr(PluginRegistry(), register)(plugin)
    assert message in str(info.value)
    assert type(plugin).__name__ in str(info.value)


def test_missing_members_are_all_listed():
    """Every missing member is named in one message."""

    class Half:
        name = "half"

    with pytest.raises(PluginValidationError) as info:
        PluginRegistry().register_parser(Half())  # type: ignore[arg-type]
    text = str(info.value)
    assert "missing supports" in text and "missing parse" in text and "missing default_schedule" in text


@pytest.mark.parametrize("subs", [None, 5])
def test_non_iterable_subscriptions_are_a_validation_error(subs):
    """subscribes_to = None is a plugin mistake, reported like any other (not a TypeError)."""
    with pytest.raises(PluginValidationError):
        PluginRegistry().register(Note(subscribes_to=subs))


# -- conflicts -------------------------------------------------------------------------------------


def test_two_parsers_with_one_name_conflict_naming_both_modules():
    """The second parser named 'plaintext' is a PluginConflictError naming both modules."""
    reg = PluginRegistry()
    reg.register(Parser("plaintext"), "plugins.builtin.parsers.plaintext")
    with pytest.raises(PluginConflictError) as info:
        reg.register(Parser("plaintext"), "/srv/contrib/my_plain.py")
    text = str(info.value)
    assert "'plaintext'" in text
    assert "plugins.builtin.parsers.plaintext" in text and "/srv/contrib/my_plain.py" in text
    assert len(reg.parsers) == 1


def test_checkers_and_notifiers_are_additive():
    """Checkers and notifiers with the same name are allowed (unusual, not a conflict)."""
    reg = PluginRegistry()
    reg.register(Checker("same"))
    reg.register(Checker("same"))
    reg.register(Note("same"))
    reg.register(Note("same"))
    assert len(reg.checkers) == 2 and len(reg.notifiers) == 2


# -- lookups ---------------------------------------------------------------------------------------


def test_checker_pipeline_is_sorted_by_stage_then_priority():
    """Lower stages first, lower priority first within a stage, whatever the registration order."""
    reg = PluginRegistry()
    for name, stage, priority in [("c", 3, 0), ("b2", 2, 5), ("a", 1, 0), ("b1", 2, 1), ("a0", 1, -1)]:
        reg.register(Checker(name, stage, priority))
    assert [c.name for c in reg.get_checker_pipeline()] == ["a0", "a", "b1", "b2", "c"]


def test_unknown_parser_lists_the_known_ones():
    """get_parser of an unknown name: UnknownParserError (a LookupError) listing what exists."""
    reg = PluginRegistry()
    reg.register(Parser("json_api"))
    reg.register(Parser("html_table"))
    with pytest.raises(UnknownParserError, match=r"unknown parser 'xml' \(known: html_table, json_api\)"):
        reg.get_parser("xml")
    with pytest.raises(LookupError):
        PluginRegistry().get_parser("x")


def test_parser_for_url_first_supporting_one_wins_and_broken_supports_is_skipped():
    """get_parser_for_url asks supports() in registration order; a raising supports() is skipped."""

    class Broken(Parser):
        def supports(self, url: str) -> bool:
            raise RuntimeError("boom")

    reg = PluginRegistry()
    broken, txt, txt2, js = (
        Broken("broken", ""),
        Parser("txt", ".txt"),
        Parser("txt2", ".txt"),
        Parser("js", ".json"),
    )
    for p in (broken, txt, txt2, js):
        reg.register(p)
    assert reg.get_parser_for_url("https://x.test/list.txt") is txt
    assert reg.get_parser_for_url("https://x.test/api.json") is js
    assert reg.get_parser_for_url("https://x.test/page.html") is None


def test_describe_lists_plugins_and_errors():
    """describe() feeds `proxy-pool plugins`: kind, name, module, stage/priority, and recorded errors."""
    reg = PluginRegistry()
    reg.register(Parser("p"), "m.p")
    reg.register(Checker("c", 2, 7), "m.c")
    reg.register(Note("n"), "m.n")
    reg.errors.append(PluginInfo("error", "-", "contrib/bad.py", error="import failed"))
    assert reg.describe() == [
        PluginInfo("parser", "p", "m.p"),
        PluginInfo("checker", "c", "m.c", 2, 7),
        PluginInfo("notifier", "n", "m.n"),
        PluginInfo("error", "-", "contrib/bad.py", error="import failed"),
    ]


def test_lookup_views_are_copies():
    """The registry's lists cannot be changed from outside."""
    reg = PluginRegistry()
    reg.register(Checker())
    reg.checkers.clear()
    reg.parsers["x"] = Parser("x")
    assert len(reg.checkers) == 1 and reg.parsers == {}


async def test_registered_notifier_receives_emitted_events():
    """register_notifier wires the notifier to the event bus; emit delivers to it."""
    got: list[Event] = []

    class Recorder(Note):
        async def notify(self, event: Event) -> None:
            got.append(event)

    reg = PluginRegistry()
    reg.register(Recorder(subscribes_to=("source.*",)))
    await reg.emit(Event("source.failed", {"source_id": 1}))
    reg.emit_event("proxy.pool_low", active_count=0, threshold=5)
    await reg.events.drain(timeout=5)
    assert [e.type for e in got] == ["source.failed"]
