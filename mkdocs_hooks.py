"""MkDocs hooks (``hooks:`` in mkdocs.yml): the configuration reference is generated at build time.

``docs/operate/configuration.md`` carries the marker ``<!-- CONFIGURATION-REFERENCE -->``; this hook
replaces it with the tables that ``config.reference.render_reference`` builds from the settings model,
so a key added to ``config/settings.py`` is in the site without anyone regenerating a file.
"""

from __future__ import annotations

from typing import Any

MARKER = "<!-- CONFIGURATION-REFERENCE -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    from config.reference import render_reference  # the installed (or editable) package

    return markdown.replace(MARKER, render_reference(heading_level=3))
