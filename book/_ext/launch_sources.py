"""Sphinx extension: launch buttons (Binder, Colab) open a chapter's source notebook.

The book renders the executed copies under ``book/runs/<profile>/``, which are build outputs and not
in the repository, so sphinx-book-theme's launch links (built from the page's own path) would point
at files that do not exist on GitHub. This extension runs after the theme has added its buttons
(``html-page-context``, priority 502) and rewrites ``book/runs/<profile>/<name>.ipynb`` in their URLs
to ``notebooks/<name>.ipynb``, the source notebook, whose first (hidden) cell installs npcrepro where
it is missing. Pages that are not executed chapters keep the theme's links.
"""
from __future__ import annotations

import re
from typing import Any

_RUNS = re.compile(r"book/runs/[A-Za-z0-9_-]+/([A-Za-z0-9_-]+\.ipynb)")


def source_url(url: str) -> str:
    """``url`` with an executed chapter's path replaced by its source notebook's."""
    return _RUNS.sub(r"notebooks/\1", url)


def _rewrite(node: Any) -> None:
    if isinstance(node, dict):
        url = node.get("url")
        if isinstance(url, str) and url.startswith("https://"):  # launch links, not the downloads
            node["url"] = source_url(url)
        for value in node.values():
            _rewrite(value)
    elif isinstance(node, list):
        for item in node:
            _rewrite(item)


def _on_page(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    if pagename.startswith("book/runs/"):
        _rewrite(context.get("header_buttons", []))


def setup(app):
    app.connect("html-page-context", _on_page, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
