"""Plugin discovery: create_plugin(settings) factories in builtin and contrib directories.

A bad contrib module is recorded by name and skipped; it never stops start-up.  A parser name
conflict is the one deliberate stop, naming both modules.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from config import Settings
from plugins import PluginConflictError, PluginRegistry
from plugins.discovery import discover_plugins, load_all_plugins

PARSER = """
from plugins import DiscoveredProxy, SourceParser


class {cls}:
    name = "{name}"

    def supports(self, url: str) -> bool:
        return url.endswith(".{name}")

    async def parse(self, raw: bytes, source) -> list[DiscoveredProxy]:
        return [DiscoveredProxy(ip=line.split(":")[0], port=int(line.split(":")[1]))
                for line in raw.decode().split()]

    def default_schedule(self) -> str | None:
        return "*/10 * * * *"
"""

CHECKER = """
from plugins import CheckResult


class {cls}:
    name = "{name}"
    stage = {stage}
    priority = 0
    timeout = 1.0

    async def check(self, proxy, context) -> CheckResult:
        return CheckResult(True, "fine")

    def should_skip(self, proxy) -> bool:
        return False
"""

NOTIFIER = """
class {cls}:
    name = "{name}"
    subscribes_to = ["proxy.*"]

    async def notify(self, event) -> None:
        pass

    async def health_check(self) -> bool:
        return True
"""


def write(root: Path, relative: str, source: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def parser_module(name: str, cls: str = "P", factory: str | None = None) -> str:
    return PARSER.format(cls=cls, name=name) + (
        factory or f"\n\ndef create_plugin(settings):\n    return {cls}()\n"
    )


@pytest.fixture
def contrib(tmp_path: Path) -> Path:
    root = tmp_path / "contrib"
    root.mkdir()
    return root


@pytest.fixture
def settings(contrib: Path) -> Settings:
    return Settings(plugins={"contrib_dir": str(contrib)})


def errors_by_module(registry: PluginRegistry) -> dict[str, str]:
    return {info.module: info.error or "" for info in registry.errors}


# -- what works ------------------------------------------------------------------------------------


async def test_good_contrib_parser_is_registered_and_works(contrib, settings):
    """A contrib module with create_plugin returning a parser: registered under its file, usable."""
    path = write(contrib, "my_parser.py", parser_module("mine"))
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    parser = reg.get_parser("mine")
    assert reg.module_of(parser) == str(path)
    assert reg.get_parser_for_url("https://x.test/list.mine") is parser
    found = await parser.parse(b"1.2.3.4:80 5.6.7.8:3128", None)
    assert [(d.ip, d.port) for d in found] == [("1.2.3.4", 80), ("5.6.7.8", 3128)]
    assert reg.errors == []


async def test_package_plugin_with_relative_import(contrib, settings):
    """A folder with __init__.py is one plugin; it may import its own submodules relatively."""
    write(contrib, "pkg_plugin/helpers.py", CHECKER.format(cls="PkgChecker", name="pkg_check", stage=3))
    write(
        contrib,
        "pkg_plugin/__init__.py",
        "from .helpers import PkgChecker\n\ndef create_plugin(settings):\n    return PkgChecker()\n",
    )
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert [c.name for c in reg.checkers] == ["pkg_check"]
    assert reg.module_of(reg.checkers[0]).endswith("__init__.py")
    assert reg.errors == []


async def test_factory_returning_a_list_registers_each(contrib, settings):
    """create_plugin may return several plugins of different kinds."""
    source = (
        PARSER.format(cls="P", name="multi")
        + CHECKER.format(cls="C", name="multi_check", stage=2)
        + NOTIFIER.format(cls="N", name="multi_note")
        + "\n\ndef create_plugin(settings):\n    return [P(), C(), N()]\n"
    )
    write(contrib, "multi.py", source)
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert list(reg.parsers) == ["multi"]
    assert [c.name for c in reg.checkers] == ["multi_check"]
    assert [n.name for n in reg.notifiers] == ["multi_note"]


async def test_factory_returning_none_opts_out_silently(contrib, settings):
    """None means 'not configured': nothing registered, no error."""
    write(
        contrib,
        "off.py",
        NOTIFIER.format(cls="N", name="off") + "\n\ndef create_plugin(settings):\n    return None\n",
    )
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert reg.notifiers == [] and reg.errors == []
    # `proxy-pool plugins` still shows it, as not configured
    assert [(i.kind, i.name) for i in reg.describe()] == [("off", "off")]


async def test_factory_receives_the_settings(contrib, tmp_path):
    """create_plugin(settings) gets the Settings given to discovery (to read its config or opt out)."""
    write(
        contrib,
        "configured.py",
        NOTIFIER.format(cls="N", name="configured")
        + textwrap.dedent("""

        def create_plugin(settings):
            if settings.notifiers.webhook is None:
                return None
            plugin = N()
            plugin.name = "hook:" + settings.notifiers.webhook.url
            return plugin
        """),
    )
    off, on = PluginRegistry(), PluginRegistry()
    await discover_plugins(contrib, off, Settings())
    await discover_plugins(contrib, on, Settings(notifiers={"webhook": {"url": "http://127.0.0.1:9/h"}}))
    assert off.notifiers == []
    assert [n.name for n in on.notifiers] == ["hook:http://127.0.0.1:9/h"]


async def test_helpers_private_files_and_grouping_folders(contrib, settings):
    """No create_plugin: ignored; _private and dot files skipped; a folder without __init__ groups modules."""
    write(contrib, "helper_only.py", "VALUE = 1\n")
    write(contrib, "_private.py", "raise RuntimeError('must not be imported')\n")
    write(contrib, ".hidden.py", "raise RuntimeError('must not be imported')\n")
    write(contrib, "group/inner.py", parser_module("inner"))
    write(contrib, "notes.txt", "not python")
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert list(reg.parsers) == ["inner"]
    assert reg.errors == []


async def test_missing_directory_is_nothing(tmp_path, settings):
    """A contrib directory that does not exist registers nothing and does not fail."""
    reg = PluginRegistry()
    await discover_plugins(tmp_path / "nowhere", reg, settings)
    assert reg.describe() == []


async def test_two_contrib_dirs_with_the_same_file_names_do_not_collide(tmp_path, settings):
    """Each contrib directory gets its own module namespace."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a, "plug.py", parser_module("from_a"))
    write(b, "plug.py", parser_module("from_b"))
    reg = PluginRegistry()
    await discover_plugins(a, reg, settings)
    await discover_plugins(b, reg, settings)
    assert sorted(reg.parsers) == ["from_a", "from_b"]


# -- what is recorded and skipped ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def broken(:\n", "import failed: SyntaxError"),
        ("import no_such_module_for_proxy_pool_tests\n", "import failed: ModuleNotFoundError"),
        ("raise RuntimeError('module-level boom')\n", "import failed: RuntimeError: module-level boom"),
        ("import sys\nsys.exit(3)\n", "import failed: SystemExit: 3"),
        ("raise KeyboardInterrupt\n", "import failed: KeyboardInterrupt"),
        ("def create_plugin(settings):\n    raise SystemExit(4)\n", "create_plugin failed: SystemExit: 4"),
        (
            "def create_plugin(settings):\n    raise ValueError('factory boom')\n",
            "create_plugin failed: ValueError: factory boom",
        ),
        (
            "class Thing:\n    pass\n\ndef create_plugin(settings):\n    return Thing()\n",
            "matches no plugin protocol",
        ),
        ("def create_plugin(settings):\n    return 42\n", "matches no plugin protocol"),
        ("create_plugin = 'not a function'\n", "create_plugin is not callable"),
        (
            PARSER.format(cls="P", name="") + "\n\ndef create_plugin(settings):\n    return P()\n",
            "name must be a non-empty string",
        ),
    ],
)
async def test_bad_module_is_recorded_by_name_and_skipped(contrib, settings, source, expected):
    """Import failure, raising factory, non-plugin or invalid plugin: recorded with its error; others still load."""
    bad = write(contrib, "a_bad.py", source)
    write(contrib, "z_good.py", parser_module("good"))
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert list(reg.parsers) == ["good"]
    errors = errors_by_module(reg)
    assert list(errors) == [str(bad)]
    assert expected in errors[str(bad)]
    (info,) = [row for row in reg.describe() if row.kind == "error"]
    assert info.module == str(bad)


async def test_list_with_one_bad_item_keeps_the_good_ones(contrib, settings):
    """A returned list with a non-plugin in it: the good plugins register, the bad item is recorded."""
    write(
        contrib,
        "mixed.py",
        CHECKER.format(cls="C", name="fine", stage=1)
        + "\n\ndef create_plugin(settings):\n    return [C(), object()]\n",
    )
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert [c.name for c in reg.checkers] == ["fine"]
    assert len(reg.errors) == 1 and "matches no plugin protocol" in (reg.errors[0].error or "")


async def test_failed_module_can_be_fixed_and_rediscovered(contrib, settings):
    """A module that failed to import leaves no half-loaded module behind."""
    path = write(contrib, "flaky.py", "raise RuntimeError('first try')\n")
    first = PluginRegistry()
    await discover_plugins(contrib, first, settings)
    assert len(first.errors) == 1
    path.write_text(parser_module("flaky"), encoding="utf-8")
    second = PluginRegistry()
    await discover_plugins(contrib, second, settings)
    assert list(second.parsers) == ["flaky"] and second.errors == []


async def test_notifier_with_unusable_subscriptions_is_skipped_not_fatal(contrib, settings):
    """A contrib notifier with subscribes_to = None is recorded and skipped; discovery goes on."""
    write(
        contrib,
        "a_note.py",
        NOTIFIER.format(cls="N", name="bad_subs").replace('["proxy.*"]', "None")
        + "\n\ndef create_plugin(settings):\n    return N()\n",
    )
    write(contrib, "z_good.py", parser_module("good"))
    reg = PluginRegistry()
    await discover_plugins(contrib, reg, settings)
    assert list(reg.parsers) == ["good"] and len(reg.errors) == 1


# -- conflicts -------------------------------------------------------------------------------------


async def test_two_contrib_parsers_with_one_name_conflict(contrib, settings):
    """Two contrib parsers named alike: PluginConflictError naming both files."""
    first = write(contrib, "one.py", parser_module("dup"))
    second = write(contrib, "two.py", parser_module("dup"))
    with pytest.raises(PluginConflictError) as info:
        await discover_plugins(contrib, PluginRegistry(), settings)
    assert str(first) in str(info.value) and str(second) in str(info.value)


async def test_contrib_parser_shadowing_a_builtin_conflicts(contrib, settings):
    """A contrib parser named 'plaintext' conflicts with the built-in, both modules named."""
    mine = write(contrib, "plain.py", parser_module("plaintext"))
    with pytest.raises(PluginConflictError) as info:
        await load_all_plugins(settings)
    assert "plugins.builtin.parsers.plaintext" in str(info.value)
    assert str(mine) in str(info.value)


# -- built-ins -------------------------------------------------------------------------------------


async def test_builtins_load_cleanly_and_contrib_adds_to_them(contrib, settings):
    """load_all_plugins: the built-in parsers and checkers without errors, then the contrib ones."""
    write(contrib, "extra.py", parser_module("extra"))
    reg = await load_all_plugins(settings)
    assert reg.errors == []
    assert {"plaintext", "html_table", "json_api", "extra"} <= set(reg.parsers)
    assert reg.module_of(reg.get_parser("plaintext")) == "plugins.builtin.parsers.plaintext"
    names = [c.name for c in reg.checkers]
    assert "tcp_connect" in names
    stages = [c.stage for c in reg.checkers]
    assert stages == sorted(stages)
    assert reg.notifiers == []  # smtp and webhook are off without their sections
