"""Book pages are discovered from npcrepro/chapters/*/page.toml: every list of pages derives from that one scan."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npcrepro import book, chapters, pages, papers, plan, recipes, summary
from npcrepro.errors import DataError, ParameterError

ROOT = Path(__file__).resolve().parent.parent
GOOD = 'title = "t"\norder = 5\npart = "Appendix"\nkind = "page"\n'


def test_every_list_of_pages_derives_from_the_scan():
    found = pages.pages()
    assert list(book.CHAPTERS) == list(found) and book.CHAPTERS["li2018"] == found["li2018"].title
    assert set(found) == {p.name for p in (ROOT / "npcrepro" / "chapters").iterdir() if (p / "page.toml").is_file()}
    assert papers.PAPERS == summary.PAPERS == pages.papers() == ("li2018", "xue2020", "luo2020", "guo2021", "chen2020")
    assert set(plan.TRAINING_CHAPTERS) == set(chapters.MODULES) == set(papers.PAPERS) | {"template", "leaderboard"}
    assert set(recipes.CHAPTERS) == set(found)  # every page's parameters cell is generated from its recipe
    assert book.WIDE == {"leaderboard"} and book.READERS == {"intro", "reproducibility"}
    assert book.DEPENDS["explorer"] == ("leaderboard", *papers.PAPERS) and book.DEPENDS["intro"] == "*"
    assert all(papers.TEXT_FILES[k].endswith(".txt") for k in papers.PAPERS)
    assert [found[k].order for k in found] == sorted(found[k].order for k in found)


def test_the_committed_table_of_contents_is_the_generated_one():
    assert (ROOT / "_toc.yml").read_text(encoding="utf-8") == book.toc_text("cpu"), (
        "run `python -c 'from npcrepro import book; book.toc_for(\"cpu\")'`")


@pytest.mark.parametrize("text, message", [
    ('title = "t"\norder = 5\npart = "Appendix"\n', "missing kind"),
    (GOOD + "colour = 1\n", "unknown fields colour"),
    (GOOD.replace("order = 5", 'order = "5"'), "wrong type for order"),
    (GOOD + "wide = 1\n", "wrong type for wide"),
    (GOOD.replace('"page"', '"poster"'), "kind 'poster' is not one of"),
    (GOOD.replace('"Appendix"', '"Annex"'), "part 'Annex' is not one of"),
    (GOOD.replace('"page"', '"paper"'), "names its full text"),
    (GOOD + 'depends = "all"\n', 'depends is a list of pages or "*"'),
    (GOOD + 'depends = ["intro", 3]\n', 'depends is a list of pages or "*"'),
    (GOOD + 'depends = ["nosuch"]\n', "depends on 'nosuch'"),
    (GOOD + 'depends = ["kind:poster"]\n', "depends on 'kind:poster'"),
    (GOOD + 'cell = "generated"\n', "unknown fields cell"),
    ("title = \n", "not a readable page.toml"),
])
def test_a_bad_page_toml_is_one_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "page.toml").write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="odd/page.toml") as err:
        pages.pages(tmp_path)
    assert message in str(err.value)


def test_depends_on_a_kind_names_every_page_of_it(tmp_path):
    for key, kind, order in (("a", "paper", 1), ("b", "paper", 2), ("c", "chapter", 3)):
        (tmp_path / key).mkdir()
        (tmp_path / key / "page.toml").write_text(
            GOOD.replace('"page"', f'"{kind}"').replace("order = 5", f"order = {order}") + 'text = "x.txt"\n')
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "page.toml").write_text(GOOD + 'depends = ["c", "kind:paper", "a"]\n')
    assert pages.pages(tmp_path)["v"].depends == ("c", "a", "b")


def test_data_modules_are_the_imported_modules_and_unknown_ones_are_refused():
    import importlib

    imported = importlib.import_module("npcrepro.chapters.xue2020.recipe")  # (not `import a.b as`: a test
    # before this one may have re-imported npcrepro.chapters without its sub-packages as attributes)

    assert pages.data_module("xue2020", "recipe") is imported is recipes.load("xue2020")
    assert papers.get("li2018").KEY == "li2018"
    with pytest.raises(ParameterError, match="page 'data' has no paper"):
        pages.data_module("data", "paper")
    with pytest.raises(ParameterError, match="unknown page 'nosuch'"):
        pages.get("nosuch")


_TOY = "toy2030"
_CHECKS = textwrap.dedent(f"""
    import subprocess, sys
    from pathlib import Path
    import npcrepro
    assert Path(npcrepro.__file__).parent == Path.cwd() / "npcrepro", npcrepro.__file__

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "npcrepro", *args], capture_output=True, text=True)
        assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-2000:])
        return out.stdout

    assert "n_cases" in cli("params", "{_TOY}")
    assert "{_TOY}: dry run at smoke passed" in cli("run", "{_TOY}", "--profile", "smoke", "--dry-run",
                                                      "-p", "out_dir", "runs")
    assert "`{_TOY}`" in cli("plan", "{_TOY}", "--profile", "smoke", "--runs", "runs")
    from npcrepro import book, summary
    assert "{_TOY}" in list(summary.intro_table("runs")["paper"])
    toc = book.toc_text("cpu")
    assert "      - file: book/runs/cpu/chen2020\\n      - file: book/runs/cpu/{_TOY}\\n" in toc, toc
    assert book.CHAPTERS["{_TOY}"] == "{_TOY}: a sixth paper"
    print("found everywhere")
""")


@pytest.mark.slow
def test_a_sixth_paper_is_one_folder(tmp_path):
    """A copy of the package with one folder added (the template's code, li2018's paper data renamed, a
    page.toml): the CLI's params, run --dry-run and plan, the summary and the table of contents all find
    it, and no other file of the package is edited."""
    shutil.copytree(ROOT / "npcrepro", tmp_path / "npcrepro", ignore=shutil.ignore_patterns("__pycache__"))
    before = {p: p.read_bytes() for p in (tmp_path / "npcrepro").rglob("*") if p.is_file()}
    toy = tmp_path / "npcrepro" / "chapters" / _TOY
    shutil.copytree(ROOT / "npcrepro" / "chapters" / "template", toy,
                    ignore=shutil.ignore_patterns("__pycache__", "development.json", "page.toml"))
    for f in toy.glob("*.py"):
        f.write_text(f.read_text(encoding="utf-8").replace("template", _TOY), encoding="utf-8")
    paper = (ROOT / "npcrepro" / "chapters" / "li2018" / "paper.py").read_text(encoding="utf-8")
    (toy / "paper.py").write_text(paper.replace('KEY = "li2018"', f'KEY = "{_TOY}"'), encoding="utf-8")
    (toy / "page.toml").write_text(f'title = "{_TOY}: a sixth paper"\norder = 85\npart = "The five papers"\n'
                                   f'kind = "paper"\nminutes = 1\ntext = "{_TOY}.txt"\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "NPCREPRO_CACHE": str(tmp_path / "_cache")}
    out = subprocess.run([sys.executable, "-c", _CHECKS], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "found everywhere" in out.stdout, out.stderr[-3000:]
    after = {p: p.read_bytes() for p in (tmp_path / "npcrepro").rglob("*")
             if p.is_file() and toy not in p.parents and "__pycache__" not in p.parts}
    assert after == before


def test_contributing_counts_the_lines_of_xue2020_as_they_are():
    """CONTRIBUTING's "Adding a sixth paper" table gives each file of one chapter with its line count;
    the counts stay within 10 % of the files'."""
    import re

    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `([^`]+)`(?:, `([^`]+)`)? \| (\d+)(?:, (\d+))? \|", text, flags=re.M)
    assert len(rows) >= 8, rows
    for first, second, n1, n2 in rows:
        for name, n in ((first, n1), (second, n2)):
            if not name:
                continue
            path = next(p for p in (ROOT / name, ROOT / "npcrepro" / "chapters" / "xue2020" / name) if p.is_file())
            actual = len(path.read_text(encoding="utf-8").splitlines())
            assert abs(actual - int(n)) <= 0.1 * actual, f"CONTRIBUTING.md: {name} has {actual} lines, not {n}"


def test_a_training_chapter_opens_on_its_text_with_its_set_up_collapsed():
    """Issue 51: the imports and the parameters cell show as "Show code" toggles and the parameter
    table as a collapsed cell, so that a page opens on its title and introduction."""
    for name in pages.training():
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
        cells = [c for c in nb["cells"] if "remove-cell" not in c["metadata"].get("tags", [])]
        assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# "), name
        tags = [c["metadata"].get("tags", []) for c in cells]
        i = next(k for k, t in enumerate(tags) if "parameters" in t)
        assert "hide-input" in tags[i - 1] and "import" in "".join(cells[i - 1]["source"]), name
        assert "hide-input" in tags[i] and "hide-cell" in tags[i + 1], name
        assert "notebook_params(" in "".join(cells[i + 1]["source"]), name


def test_no_page_shows_its_parameters_cell_open():
    """Every page's parameters cell (and the imports cell before it) is collapsed or removed."""
    shut = {"hide-input", "hide-cell", "remove-cell", "remove-input"}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        i = next(k for k, c in enumerate(cells) if "parameters" in c["metadata"].get("tags", []))
        assert shut & set(cells[i]["metadata"]["tags"]), path.name
        before = cells[i - 1]
        if before["cell_type"] == "code" and "import " in "".join(before["source"]):
            assert shut & set(before["metadata"].get("tags", [])), path.name
