"""The npcrepro command: one-line errors with non-zero exits, and a chapter run end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from npcrepro import book
from npcrepro.cli import main
from npcrepro.paths import repo_root


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "npcrepro", *args], capture_output=True, text=True,
                          cwd=repo_root())


@pytest.mark.parametrize("args, needle", [
    (["run", "nosuchpaper"], "unknown chapter 'nosuchpaper'"),
    (["run", "li2018", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "li2018", "--profile", "smoke", "-p", "epochz", "3"], "unknown parameter(s) epochz"),
    (["book", "--profile", "huge"], "unknown profile 'huge'"),
])
def test_bad_arguments_fail_in_one_line(args, needle):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert lines[0].startswith(f"npcrepro {args[0]}: error:")


def test_unknown_parameter_lists_valid_ones(capsys):
    assert main(["run", "li2018", "--profile", "smoke", "-p", "epochz", "3"]) == 2
    err = capsys.readouterr().err
    assert "valid: profile, data, device, seed, out_dir" in err


def test_run_chapter_writes_executed_notebook_and_skips_when_fresh(tmp_path):
    out = tmp_path / "li2018.ipynb"
    logs = []
    res = book.execute("li2018", "smoke", {"seed": 1}, output=out, log=logs.append)
    assert not res.skipped and out.exists()
    meta = json.loads(out.read_text())["metadata"]["npcrepro"]
    assert meta["profile"] == "smoke" and meta["parameters"]["seed"] == 1
    again = book.execute("li2018", "smoke", {"seed": 1}, output=out, log=logs.append)
    assert again.skipped
    changed = book.execute("li2018", "smoke", {"seed": 2}, output=out, log=logs.append)
    assert not changed.skipped


def test_failing_chapter_keeps_partial_notebook(tmp_path):
    root = _broken_copy(tmp_path)
    with pytest.raises(book.ChapterFailed, match="ParameterError: boom") as exc:
        book.execute("li2018", "smoke", output=tmp_path / "o.ipynb", root=root, log=lambda *_: None)
    assert (tmp_path / "o.failed.ipynb").exists()
    assert "partial notebook" in str(exc.value)


def _broken_copy(tmp_path):
    """A copy of the repo's notebook folder whose li2018 chapter raises ParameterError."""
    import shutil

    import nbformat

    root = tmp_path / "repo"
    shutil.copytree(repo_root() / "notebooks", root / "notebooks")
    shutil.copytree(repo_root() / "npcrepro", root / "npcrepro")
    nb = nbformat.read(root / "notebooks" / "li2018.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "from npcrepro.errors import ParameterError\nraise ParameterError('boom')"))
    nbformat.write(nb, root / "notebooks" / "li2018.ipynb")
    return root
