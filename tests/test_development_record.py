"""The chapters' development records: the measurements behind the recipes' reasons, kept apart from
the prose (npcrepro.recipes.development) and shown by every chapter as such (npcrepro.viz.development)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from npcrepro import recipes
from npcrepro.errors import DataError
from npcrepro.viz import development

ROOT = Path(__file__).resolve().parent.parent
WITH_RECORD = [c for c in recipes.CHAPTERS if recipes.development_path(c).is_file()]


def test_every_record_file_belongs_to_a_chapter_with_a_recipe():
    folders = {p.parent.name for p in (ROOT / "npcrepro" / "chapters").glob("*/development.json")}
    assert folders and folders <= set(recipes.CHAPTERS), folders - set(recipes.CHAPTERS)


@pytest.mark.parametrize("chapter", recipes.CHAPTERS)
def test_records_are_complete(chapter):
    record = recipes.development(chapter)
    for r in record["records"]:
        assert re.fullmatch(r"[0-9a-f]{7,40}", r["commit"]) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["date"])
        assert r["cohort"] and r["machine"], r
        assert r["measurements"] and all(re.search(r"\d", m) for m in r["measurements"]), r


@pytest.mark.parametrize("chapter", WITH_RECORD)
def test_records_name_commits_of_this_repository(chapter):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git history here")
    for r in recipes.development(chapter)["records"]:
        done = subprocess.run(["git", "cat-file", "-e", f"{r['commit']}^{{commit}}"], cwd=ROOT,
                              capture_output=True)
        assert done.returncode == 0, f"{chapter}: commit {r['commit']} is not in this repository"


@pytest.mark.parametrize("chapter", recipes.CHAPTERS)
def test_a_reason_that_points_at_the_record_has_one(chapter):
    """A recipe text that sends the reader to the development record has a record for its entry."""
    mod = recipes.load(chapter)
    recorded = {(r["field"], r["key"]) for r in recipes.development(chapter)["records"]}
    for field in ("CHOICES", "DEVIATIONS", "EXCEPTIONS"):
        for key, text in getattr(mod, field).items():
            if "development record" in text:
                assert (field, key) in recorded, f"{chapter} {field}[{key!r}] cites a record it lacks"


@pytest.mark.parametrize("chapter", WITH_RECORD)
def test_every_chapter_shows_its_record_through_the_shared_table(chapter):
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert f'development.table("{chapter}")' in code


def test_the_table_says_where_its_numbers_come_from():
    t = development.table("xue2020")
    record = recipes.development("xue2020")
    assert list(t.frame.columns) == list(development.COLUMNS) and len(t.frame) == len(record["records"])
    assert "come from development runs" in t.caption and "not from the run on this page" in t.caption
    assert "seed 0" in t.caption and all(r["commit"] in t.caption for r in record["records"])
    assert t.frame.iloc[0]["recipe entry"] == "deviation: lr"
    html = t._repr_html_()
    assert "not from the run on this page" in html and "0.047" in html
    none = development.table("intro")
    assert none.frame.empty and "none" in str(none)


def test_a_malformed_record_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "development_path", lambda chapter: tmp_path / f"{chapter}.json")
    good = {"field": "CHOICES", "key": "loss", "commit": "abc1234", "date": "2026-01-01",
            "measurements": ["0.5 / 0.6"]}
    path = tmp_path / "template.json"
    path.write_text(json.dumps({"chapter": "template", "cohort": "c", "machine": "m", "records": [good]}))
    assert recipes.development("template")["records"][0]["cohort"] == "c"
    for bad in ({**good, "key": "no such choice"}, {**good, "field": "PAPER"}, {**good, "when": "x"},
                {k: v for k, v in good.items() if k != "commit"}):
        path.write_text(json.dumps({"chapter": "template", "records": [bad]}))
        with pytest.raises(DataError, match="template.json"):
            recipes.development("template")
    path.write_text("{")
    with pytest.raises(DataError, match="template.json"):
        recipes.development("template")


def test_an_executed_chapter_depends_on_its_development_record(tmp_path):
    """The book re-executes a chapter when its record changes (the package digest covers the records)."""
    from npcrepro import book

    rec = tmp_path / "npcrepro" / "recipes" / "development"
    rec.mkdir(parents=True)
    (tmp_path / "npcrepro" / "__init__.py").write_text("")
    (rec / "template.json").write_text('{"chapter": "template", "records": []}')
    before = book._package_digest(tmp_path)
    (rec / "template.json").write_text('{"chapter": "template", "records": [], "cohort": "x"}')
    assert book._package_digest(tmp_path) != before
