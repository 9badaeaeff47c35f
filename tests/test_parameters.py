"""One source of truth for parameters: the notebooks' parameters cells are generated from the
registry (npcrepro.recipes via npcrepro.profiles), with a type and one-line help for each."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from npcrepro import profiles, recipes

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = recipes.CHAPTERS


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
        assert "=" not in row["help"], f"{name}: {row['parameter']!r}: papermill cannot parse '=' in a help line"


def test_papermill_help_shows_type_and_help():
    out = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook",
                          str(REPO / "notebooks" / "template.ipynb")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Unknown type" not in out.stdout
    assert "iterations: int (default None)" in out.stdout and "training iterations" in out.stdout


def test_the_cli_and_papermill_accept_the_same_parameters():
    import papermill as pm

    from npcrepro import book
    from npcrepro.errors import ParameterError

    for name in CHAPTERS:
        inferred = set(pm.inspect_notebook(str(REPO / "notebooks" / f"{name}.ipynb")))
        assert inferred == set(profiles.parameters(name)), name
    book.check_parameters("li2018", {"lr": 0.01})  # was refused by the CLI, accepted by papermill
    with pytest.raises(ParameterError, match="unknown parameter 'nope'"):
        book.check_parameters("li2018", {"nope": 1})
    with pytest.raises(ParameterError, match="must be one of"):
        book.check_parameters("li2018", {"methods": "fast"})


def test_npcrepro_params_lists_every_parameter_and_refuses_unknown_chapters():
    out = subprocess.run([sys.executable, "-m", "npcrepro", "params", "leaderboard", "--profile", "gpu"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    for name in profiles.parameters("leaderboard"):
        assert name in out.stdout
    assert "iterations_2d" in out.stdout and "20000" in out.stdout and "smoke" not in out.stdout.split("\n")[0]
    bad = subprocess.run([sys.executable, "-m", "npcrepro", "params", "nope"], capture_output=True, text=True,
                         cwd=REPO)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_page_shows_path_parameters_relative_to_the_repository(tmp_path):
    from npcrepro.paths import repo_root, shown

    P = profiles.resolve("template", "smoke", out_dir=str(repo_root() / "runs"))
    assert P["out_dir"] == str(repo_root() / "runs")          # the run itself keeps the absolute path
    assert P.shown()["out_dir"] == "runs" and "out_dir='runs'" in repr(P)
    assert shown(repo_root() / "runs" / "cpu" / "x") == "runs/cpu/x"
    assert shown("relative/x") == "relative/x"
