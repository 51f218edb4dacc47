"""The configuration reference, generated from the settings model so it cannot drift.

Every key of :class:`config.Settings` becomes a row: its TOML name, the environment variable that sets
it, its type, its default and what it does.  What it does is the comment above the key in
``config/proxy-pool.example.toml`` (a test makes that file document every key), else the field's
``description``.  The docs site renders this at build time (``mkdocs_hooks.py``), so a new key
appears in the reference the moment it exists in the model.
"""

from __future__ import annotations

import enum
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from config.settings import ENV_PREFIX, Settings

__all__ = ["EXAMPLE", "reference_keys", "render_reference"]

EXAMPLE = Path(__file__).with_name("proxy-pool.example.toml")

_KEY = re.compile(r"^#?\s?(?P<key>[a-z_][a-z0-9_]*) = ")
_HEADER = re.compile(r"^#?\s?\[\[?(?P<name>[a-z_][a-z0-9_.]*)\]\]?\s*$")


def _example_comments(path: Path = EXAMPLE) -> dict[str, str]:
    """``section.key`` (or ``key`` at the top level) -> the comment lines just above it in the example."""
    comments: dict[str, str] = {}
    section = ""
    pending: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.rstrip()
        header = _HEADER.match(line)
        if header:
            section = header.group("name")
            pending = []
            continue
        key = _KEY.match(line)
        if key:
            name = f"{section}.{key.group('key')}" if section else key.group("key")
            if pending:
                comments.setdefault(name, " ".join(pending))
            pending = []
        elif line.startswith("#"):
            pending.append(line.lstrip("#").strip())
        else:
            pending = []
    return comments


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        name = " \\| ".join(_type_name(a) for a in parts)
        return name + (" (optional)" if len(parts) < len(typing.get_args(annotation)) else "")
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"list of {_type_name(item)}"
    if annotation is SecretStr:
        return "secret string"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " \\| ".join(json.dumps(m.value) for m in annotation)
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, enum.Enum):
        value = value.value
    return "`" + json.dumps(value).replace("|", "\\|") + "`"


def _constraints(info: FieldInfo) -> str:
    words = []
    for meta in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            bound = getattr(meta, attr, None)
            if bound is not None:
                words.append(f"{sign} {bound}")
    return ", ".join(words)


def _sections(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, type[BaseModel], bool]]:
    """(section name, model, is a list of tables) for every nested model, in declaration order."""
    found: list[tuple[str, type[BaseModel], bool]] = []
    for name, info in model.model_fields.items():
        for nested in _models_in(info.annotation):
            full = f"{prefix}{name}"
            is_list = typing.get_origin(info.annotation) is list
            found.append((full, nested, is_list))
            found.extend(_sections(nested, full + "."))
    return found


def reference_keys() -> list[str]:
    """Every leaf key as ``section.key`` (top-level keys bare): what the reference must name."""
    keys = [n for n, i in Settings.model_fields.items() if not _models_in(i.annotation)]
    for section, model, _ in _sections():
        keys += [f"{section}.{n}" for n, i in model.model_fields.items() if not _models_in(i.annotation)]
    return keys


def _env_name(section: str, key: str, is_list: bool) -> str:
    if is_list:
        return "(TOML only)"
    parts = [*section.split("."), key] if section else [key]
    return "`" + ENV_PREFIX + "__".join(p.upper() for p in parts) + "`"


def _rows(section: str, model: type[BaseModel], is_list: bool, comments: dict[str, str]) -> list[str]:
    rows = ["| key | type | default | environment | what it does |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if _models_in(info.annotation):
            continue
        full = f"{section}.{name}" if section else name
        what = comments.get(full) or info.description or ""
        bounds = _constraints(info)
        if bounds:
            what = f"{what} ({bounds})" if what else f"({bounds})"
        what = what.replace("|", "\\|")
        rows.append(
            f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | "
            f"{_env_name(section, name, is_list)} | {what} |"
        )
    return rows


def render_reference(heading_level: int = 2) -> str:
    """The reference as Markdown: one table per section, headed by the section's TOML header."""
    comments = _example_comments()
    hashes = "#" * heading_level
    out = [f"{hashes} Top level", "", *_rows("", Settings, False, comments), ""]
    for section, model, is_list in _sections():
        header = f"[[{section}]]" if is_list else f"[{section}]"
        out += [f"{hashes} `{header}`", ""]
        doc = (model.__doc__ or "").strip()
        if doc and not doc.startswith(model.__name__ + "("):
            out += [doc, ""]
        out += [*_rows(section, model, is_list, comments), ""]
    return "\n".join(out)
