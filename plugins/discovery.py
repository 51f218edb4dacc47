"""Find plugins: every module's ``create_plugin(settings)`` under a directory.

A module that fails to import, raises in its factory (``SystemExit`` and ``KeyboardInterrupt``
included: a plugin must not end the process), or returns something that is no plugin is recorded in
``registry.errors``, logged with its traceback, and skipped: one bad contrib file never stops the gateway.  A parser
name conflict is the exception: it raises ``PluginConflictError``, because silently picking one of
two parsers would scrape with the wrong one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from config.trust import check_trusted
from plugins.registry import PluginConflictError, PluginError, PluginInfo, PluginRegistry

if TYPE_CHECKING:
    from config import Settings

__all__ = ["BUILTIN_DIR", "discover_plugins", "load_all_plugins"]

log = logging.getLogger("proxy_pool.plugins")

BUILTIN_DIR = Path(__file__).parent / "builtin"


def _walk(directory: Path, prefix: str) -> list[tuple[Path, str]]:
    """``(file, module name)`` of each candidate: ``*.py`` files and packages, in name order.

    A folder with an ``__init__.py`` is one plugin (a package); a folder without one only
    groups modules.  Names starting with ``_`` or ``.`` are private and skipped.
    """
    found: list[tuple[Path, str]] = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(("_", ".")):
            continue
        if entry.is_file() and entry.suffix == ".py":
            found.append((entry, f"{prefix}.{entry.stem}"))
        elif entry.is_dir():
            init = entry / "__init__.py"
            if init.is_file() and not prefix.startswith("plugins.builtin"):
                found.append((init, f"{prefix}.{entry.name}"))
            else:
                found.extend(_walk(entry, f"{prefix}.{entry.name}"))
    return found


def _contrib_prefix(root: Path) -> str:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return f"proxy_pool_contrib_{digest}"


def _import(path: Path, name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    if name.startswith("plugins.builtin."):
        return importlib.import_module(name)
    is_package = path.name == "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)] if is_package else None
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


async def discover_plugins(plugins_dir: Path, registry: PluginRegistry, settings: Settings) -> None:
    """Register every plugin found under ``plugins_dir``."""
    root = plugins_dir
    if not root.is_dir():
        return
    builtin = root.resolve() == BUILTIN_DIR.resolve()
    prefix = "plugins.builtin" if builtin else _contrib_prefix(root)
    for path, name in _walk(root, prefix):
        label = name if builtin else str(path)
        try:
            module = _import(path, name)
        except _PLUGIN_FAULTS as exc:
            _record(registry, label, f"import failed: {type(exc).__name__}: {exc}", exc)
            continue
        factory = getattr(module, "create_plugin", None)
        if factory is None:
            continue
        if not callable(factory):
            _record(registry, label, "create_plugin is not callable")
            continue
        try:
            produced = factory(settings)
        except _PLUGIN_FAULTS as exc:
            _record(registry, label, f"create_plugin failed: {type(exc).__name__}: {exc}", exc)
            continue
        if produced is None:
            registry.opted_out.append(PluginInfo("off", name.rsplit(".", 1)[-1], label))
            continue
        plugins = produced if isinstance(produced, (list, tuple)) else [produced]
        for plugin in plugins:
            try:
                registry.register(plugin, label)
            except PluginConflictError:
                raise
            except PluginError as exc:
                _record(registry, label, str(exc))
            except Exception as exc:  # e.g. a property that raises while its shape is checked
                _record(registry, label, f"invalid plugin: {type(exc).__name__}: {exc}", exc)


# what a plugin module may raise at import or in its factory; CancelledError and GeneratorExit are
# not a module's to raise, everything else is that module's error
_PLUGIN_FAULTS = (Exception, SystemExit, KeyboardInterrupt)


def _record(registry: PluginRegistry, module: str, error: str, exc: BaseException | None = None) -> None:
    log.warning("plugin %s skipped: %s", module, error, exc_info=exc)
    registry.errors.append(PluginInfo("error", "-", module, error=error[:300]))


def _check_contrib(root: Path) -> None:
    """The contrib directory and every module it would import are ours (``config.trust``), else
    ``ConfigError``: code another user can write would run as the gateway."""
    if not root.is_dir():
        return
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        check_trusted(Path(directory), "contrib plugin directory")
        for name in files:
            if name.endswith(".py"):
                check_trusted(Path(directory) / name, "contrib plugin")


async def load_all_plugins(settings: Settings, registry: PluginRegistry | None = None) -> PluginRegistry:
    """Built-ins first, then the contrib directory."""
    registry = registry or PluginRegistry()
    await discover_plugins(BUILTIN_DIR, registry, settings)
    contrib = Path(settings.plugins.contrib_dir)
    if contrib.resolve() != BUILTIN_DIR.resolve():
        _check_contrib(contrib)
        await discover_plugins(contrib, registry, settings)
    return registry
