"""One source of truth for parameters: the notebooks' parameters cells are generated from the
registry (npcrepro.recipes via npcrepro.profiles), with a type and one-line help for each."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from npcrepro import profiles

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = ("template", "li2018", "xue2020", "luo2020", "guo2021", "chen2020", "leaderboard", "explorer")


def _cell(name: str) -> str:
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    return next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source


@pytest.mark.parametrize("name", CHAPTERS)
def test_parameters_cell_is_generated_from_the_registry(name):
    assert _cell(name) == profiles.parameters_cell(name), (
        f"run `python scripts/sync_parameters_cells.py {name}`")


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_parameter_has_help_and_a_type(name):
    for row in profiles.describe(name):
        assert row["help"], f"{name}: parameter {row['parameter']!r} has no HELP line"
        assert row["type"] != "object", f"{name}: parameter {row['parameter']!r} has no clear type"


def test_papermill_help_shows_type_and_help():
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook",
                          str(REPO / "notebooks" / "template.ipynb")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Unknown type" not in out.stdout
    assert "iterations: int (default None)" in out.stdout and "training iterations" in out.stdout
