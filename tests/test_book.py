"""The whole book builds offline from executed smoke chapters, and every page in the TOC exists."""
from __future__ import annotations

import re

import pytest
import yaml

from npcrepro import book


def _toc_files(root):
    toc = yaml.safe_load((root / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


@pytest.mark.slow
def test_book_builds_with_every_page(book_copy, run_notebook):
    for name in book.execution_order(book.CHAPTERS):
        nb = run_notebook(name)  # cached if a chapter test already ran it
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}"
    index = book.build_html("smoke", root=book_copy, log=lambda *_: None)
    assert index.exists()
    html = book_copy / "_build" / "html"
    for f in _toc_files(book_copy):
        page = html / (f.replace("book/runs/cpu/", "book/runs/smoke/") + ".html")
        assert page.exists(), f"missing page {page}"
    # Chapters that draw figures carry them as images in the HTML.
    for name in ("data",):
        text = (html / "book" / "runs" / "smoke" / f"{name}.html").read_text(encoding="utf-8")
        assert len(re.findall(r"<img [^>]*src=", text)) >= 2, f"{name}: no figures in HTML"


def test_toc_points_at_the_cpu_runs_and_existing_pages():
    from npcrepro.paths import repo_root

    root = repo_root()
    for f in _toc_files(root):
        if f.startswith("book/runs/cpu/"):
            name = f.rsplit("/", 1)[1]
            assert name in book.CHAPTERS and (root / "notebooks" / f"{name}.ipynb").exists()
        else:
            assert (root / f"{f}.md").exists(), f
