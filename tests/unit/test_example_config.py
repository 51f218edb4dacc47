"""config/proxy-pool.example.toml documents every Settings key with its default, and loads as is."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from config import Settings

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "proxy-pool.example.toml"

KEY_LINE = re.compile(r"^(?P<commented>#\s?)?(?P<key>[a-z_][a-z0-9_]*) = \S")
HEADER_LINE = re.compile(r"^(?:#\s?)?\[\[?(?P<name>[a-z_][a-z0-9_.]*)\]\]?\s*$")

# the contract's section order (CONTRACT.md, Configuration)
CONTRACT_ORDER = [
    "gateway",
    "admin",
    "storage",
    "checker",
    "pool",
    "credits",
    "sources",
    "notifiers.smtp",
    "notifiers.webhook",
    "plugins",
]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside an annotation such as ``list[X]`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found += _models_in(arg)
    return found


def model_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every leaf key of ``model`` as ``section.key`` -> field info, walking nested models."""
    keys: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = _models_in(info.annotation)
        if nested:
            for sub in nested:
                keys.update(model_keys(sub, f"{path}."))
        else:
            keys[path] = info
    return keys


def documented_keys(text: str) -> dict[str, tuple[bool, int]]:
    """``section.key`` -> (commented out?, line index) for every key line, commented or not."""
    keys: dict[str, tuple[bool, int]] = {}
    section = ""
    for index, line in enumerate(text.splitlines()):
        if header := HEADER_LINE.match(line):
            section = header["name"] + "."
        elif key := KEY_LINE.match(line):
            path = section + key["key"]
            assert path not in keys, f"{path} documented twice"
            keys[path] = (key["commented"] is not None, index)
    return keys


def uncomment_all(text: str) -> str:
    """The file with every commented-out key and section header switched on."""
    out = []
    for line in text.splitlines():
        if line.startswith("#") and (KEY_LINE.match(line) or HEADER_LINE.match(line)):
            out.append(line.lstrip("#").lstrip())
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _lookup(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if isinstance(node, list):  # [[sources]]: the first table
            node = node[0]
        node = node[part]
    return node


def _default(info: Any) -> Any:
    return info.get_default(call_default_factory=True)


def test_example_loads_with_settings_load():
    """The example file as shipped is a valid configuration equal to the built-in defaults."""
    settings = Settings.load(EXAMPLE)
    assert settings == Settings()


def test_every_model_key_is_documented():
    """Walking the Settings model recursively, each key appears in the example (commented or not)."""
    documented = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    missing = sorted(set(model_keys(Settings)) - set(documented))
    assert not missing, f"keys missing from {EXAMPLE.name}: {missing}"


def test_no_key_in_the_example_is_unknown():
    """The example documents nothing the model does not have (no stale or misspelt keys)."""
    documented = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    unknown = sorted(set(documented) - set(model_keys(Settings)))
    assert not unknown, f"keys in {EXAMPLE.name} the model does not know: {unknown}"


def test_uncommented_values_equal_the_model_defaults():
    """Each key that is switched on in the example holds exactly the model's default."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    documented = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    fields = model_keys(Settings)
    active = [path for path, (commented, _) in documented.items() if not commented]
    assert active, "the example switches on no key at all"
    for path in active:
        assert _lookup(data, path) == _plain(_default(fields[path])), path


def test_commented_keys_are_the_optional_ones():
    """A key is commented out only when it has no default value or sits in an optional section."""
    documented = documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    fields = model_keys(Settings)
    optional_sections = ("sources.", "notifiers.smtp.", "notifiers.webhook.", "gateway.ban_rules.", "gateway.rules.")
    for path, (commented, _) in documented.items():
        if commented and not path.startswith(optional_sections):
            assert _default(fields[path]) is None, f"{path} has a default but is commented out"


def test_optional_sections_show_their_defaults_when_switched_on():
    """Uncommenting everything gives a loadable file whose optional keys show the model defaults."""
    text = uncomment_all(EXAMPLE.read_text(encoding="utf-8"))
    data = tomllib.loads(text)
    assert {"smtp", "webhook"} <= set(data["notifiers"]) and data["sources"], "optional sections not shown"
    for rule in data["gateway"].get("rules", []):  # a rule's action and its routing keys exclude each other
        Settings.model_validate({"gateway": {"rules": [{"match": rule["match"], "action": rule.pop("action")}]}})
    Settings.model_validate(data)  # every shown example value is valid
    fields = model_keys(Settings)
    for path, info in fields.items():
        default = _default(info)
        if info.is_required() or default is None:
            continue
        assert _lookup(data, path) == _plain(default), path


def test_every_key_has_a_one_line_comment_above_it():
    """Each key line follows a prose comment line that explains it."""
    text = EXAMPLE.read_text(encoding="utf-8")
    lines = text.splitlines()
    for path, (_, index) in documented_keys(text).items():
        above = lines[index - 1] if index else ""
        assert above.startswith("#") and not KEY_LINE.match(above) and not HEADER_LINE.match(above), (
            f"{path} has no comment line above it"
        )
        assert len(above.lstrip("# ").strip()) > 10, f"{path}: comment too short to explain anything"


def test_sections_follow_the_contract_order():
    """Sections appear in the order the contract lists them."""
    headers = [
        m["name"]
        for line in EXAMPLE.read_text(encoding="utf-8").splitlines()
        if (m := HEADER_LINE.match(line))
    ]
    positions = [headers.index(name) for name in CONTRACT_ORDER]
    assert positions == sorted(positions), headers


@pytest.mark.parametrize("broken_key", ["gateway.listen", "checker.concurrency"])
def test_the_walker_notices_a_missing_key(tmp_path, broken_key):
    """Self-check of the test: deleting a documented key from a copy makes it count as missing."""
    _, key = broken_key.split(".")
    text = EXAMPLE.read_text(encoding="utf-8")
    copy = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key} = "))
    assert broken_key not in documented_keys(copy)
    assert broken_key in model_keys(Settings)
