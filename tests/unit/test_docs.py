"""The documentation cannot drift: the site builds strictly, and what README.md and docs/ name exists.

- ``mkdocs build --strict`` succeeds (a broken link or anchor between pages fails it), and the built
  configuration page names every key of the settings model (generated at build time by mkdocs_hooks.py);
- every relative link and ``#anchor`` in README.md, the root pages and docs/**/*.md resolves;
- every ``proxy-pool ...`` command the docs show exists (``--help`` exits 0, in-process);
- every module path and dotted module name the docs show exists;
- every metric family the program exposes is documented.

The snippets marked runnable are run against a real gateway by tests/integration/test_docs_examples.py.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import re
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

from config.reference import reference_keys
from gateway.cli.main import build_parser
from gateway.metrics import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "SECURITY.md",
        *DOCS.rglob("*.md"),
    ]
)

FENCE = re.compile(
    r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)\s*$",
    re.M | re.S,
)
INLINE_CODE = re.compile(r"(`+)(?P<code>.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$", re.M)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text outside fenced code blocks (links in code are not links)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def _code(text: str) -> list[tuple[str, str]]:
    """(kind, code): ``inline`` spans of prose and fenced blocks with their info string."""
    found = [(m.group("info").strip().split(" ")[0] or "text", m.group("body")) for m in FENCE.finditer(text)]
    found += [("inline", m.group("code")) for m in INLINE_CODE.finditer(_prose(text))]
    return found


def _slugs(heading: str) -> set[str]:
    """The anchors a heading gets, on GitHub and in MkDocs (Python-Markdown's toc)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "")
    github = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    mkdocs = re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", folded).strip().lower())
    return {github, mkdocs}


@cache
def _anchors(path: Path) -> frozenset[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for m in HEADING.finditer(text):
        anchors |= _slugs(m.group("text"))
    anchors |= set(re.findall(r"""<a\s+(?:id|name)=["']([^"']+)["']""", text))
    if path == DOCS / "operate" / "configuration.md":
        anchors |= {"reference"}  # the generated tables' headings are added at build time
    return frozenset(anchors)


def test_the_site_builds_strictly_with_every_configuration_key(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    page = (site / "operate" / "configuration" / "index.html").read_text(encoding="utf-8")
    assert "CONFIGURATION-REFERENCE" not in page, "the hook did not replace the marker"
    missing = [key for key in reference_keys() if f"<code>{key.rsplit('.', 1)[-1]}</code>" not in page]
    assert not missing, f"keys missing from the built reference: {missing}"
    section_headers = {key.rsplit(".", 1)[0] for key in reference_keys() if "." in key}
    assert all(f"[{s}]" in page for s in section_headers), "a section header is missing from the reference"


def test_every_relative_link_and_anchor_resolves() -> None:
    broken: list[str] = []
    for page in PAGES:
        for m in LINK.finditer(_prose(page.read_text(encoding="utf-8"))):
            target = m.group("target").strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
                continue
            if dest.is_dir():
                broken.append(f"{_rel(page)}: {target} (a directory: link a file)")
                continue
            if anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no heading with that anchor)")
    assert not broken, "\n".join(broken)


COMMAND = re.compile(r"(?<![\w./-])proxy-pool((?: [a-z][a-z0-9-]*)+)")
SHELLS = {"sh", "bash", "shell", "console", "inline"}


def _commands() -> dict[tuple[str, ...], str]:
    """Every ``proxy-pool WORDS`` in shell code of the docs: the words -> where it was first seen."""
    found: dict[tuple[str, ...], str] = {}
    for page in PAGES:
        for kind, code in _code(page.read_text(encoding="utf-8")):
            if kind not in SHELLS:
                continue
            for line in code.splitlines():
                if kind == "console" and not line.startswith("$ "):
                    continue  # output, not a command
                for m in COMMAND.finditer(line):
                    words = tuple(m.group(1).split())
                    if words and words[0] == "proxy-pool":  # `docker compose exec proxy-pool proxy-pool ...`
                        continue
                    found.setdefault(words, _rel(page))
    return found


def test_every_command_the_docs_show_exists() -> None:
    commands = _commands()
    assert ("serve",) in commands and ("users", "add", "alice") in commands  # the scan finds them
    failed: list[str] = []
    for words, page in sorted(commands.items()):
        parser = build_parser()
        out = io.StringIO()
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(out),
            pytest.raises(SystemExit) as exited,
        ):
            parser.parse_args([*words, "--help"])
        if exited.value.code != 0:
            failed.append(f"{page}: proxy-pool {' '.join(words)}: {out.getvalue().strip().splitlines()[-1:]}")
    assert not failed, "\n".join(failed)


PATH = re.compile(r"(?<![\w/.-])(?:gateway|pool|plugins|config|tests|bench|docs|\.ci)/[\w./-]*[\w/]")
DOTTED = re.compile(r"^(?:gateway|pool|plugins|config)(?:\.[A-Za-z_]\w*)+$")


def _named_paths() -> dict[str, str]:
    found: dict[str, str] = {}
    for page in PAGES:
        if page.name == "CHANGELOG.md":
            continue  # history names files that are gone, on purpose
        for kind, code in _code(page.read_text(encoding="utf-8")):
            if kind not in ("inline", "text", "sh", "console", "toml", "python", "yaml"):
                continue
            for m in PATH.finditer(code):
                found.setdefault(m.group(0), _rel(page))
            if kind == "inline" and DOTTED.match(code.strip()):
                found.setdefault(code.strip(), _rel(page))
    return found


SETTING_KEYS = frozenset(reference_keys())


def _dotted_exists(name: str) -> bool:
    """``pool.tasks.spawn``: the longest importable module prefix, then attributes."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_module_path_the_docs_name_exists() -> None:
    named = _named_paths()
    assert "gateway/proxy/client.py" in named  # the scan finds the architecture's map
    # paths a user makes (the contrib directory's own files), not files of this repository
    made_by_the_user = {"plugins/contrib/csv_export.py", "docs/dashboard.png"}
    missing = []
    for name, page in sorted(named.items()):
        if name in made_by_the_user or "*" in name:
            continue
        if "/" in name:
            exists = (ROOT / name).exists()
        else:  # `gateway.listen` is a setting, `gateway.proxy.services` a module
            exists = name in SETTING_KEYS or _dotted_exists(name)
        if not exists:
            missing.append(f"{page}: {name}")
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def test_every_metric_family_is_documented() -> None:
    page = (DOCS / "operate" / "metrics-alerts.md").read_text(encoding="utf-8")
    missing = [family for family in FAMILIES if f"`{family}`" not in page]
    assert not missing, f"metric families missing from docs/operate/metrics-alerts.md: {missing}"


def test_one_version_in_pyproject_the_cli_and_the_changelog() -> None:
    """pyproject.toml is the one source: ``proxy-pool --version`` reads the installed metadata, and the
    changelog has a section for it."""
    import importlib.metadata
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert importlib.metadata.version("proxy-pool") == version, "reinstall: the installed metadata is stale"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert out.getvalue().strip() == f"proxy-pool {version}"
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_readme_stays_a_start_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    first_blocks = [code for kind, code in _code(readme) if kind == "sh"][:2]
    assert first_blocks == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install . && proxy-pool serve\n",
        "pip install -e '.[test]' && python -m pytest -q\n",
    ]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert first_blocks[1] in ci, ".ci/run must run exactly the README's test command"
