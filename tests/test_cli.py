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


def _mini_root(tmp_path, extra_cell: str | None = None):
    """A repository stand-in whose li2018 chapter is a two-cell notebook (fast, and immune to edits
    of the real chapter); the library is the real one."""
    import nbformat

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True)
    (root / "npcrepro").symlink_to(repo_root() / "npcrepro")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('profile = "cpu"\ndata = "phantom"\ndevice = "auto"\n'
                                          'seed = 0\nout_dir = "runs"', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('print(f"seed={seed} µ")')]
    if extra_cell:
        nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "notebooks" / "li2018.ipynb")
    return root


def test_run_chapter_writes_executed_notebook_and_skips_when_fresh(tmp_path):
    root = _mini_root(tmp_path)
    out = tmp_path / "li2018.ipynb"
    quiet = dict(output=out, root=root, log=lambda *_: None)
    res = book.execute("li2018", "smoke", {"seed": 1}, **quiet)
    assert not res.skipped and out.exists()
    nb = json.loads(out.read_text(encoding="utf-8"))
    assert nb["metadata"]["npcrepro"]["profile"] == "smoke"
    assert nb["metadata"]["npcrepro"]["parameters"]["seed"] == 1
    assert nb["metadata"]["npcrepro"]["environment"]["device"] in ("cpu", "cuda")  # "auto" resolved
    assert "seed=1 µ" in "".join(nb["cells"][-1]["outputs"][0]["text"])  # non-ASCII output survives
    assert book.execute("li2018", "smoke", {"seed": 1}, **quiet).skipped
    assert not book.execute("li2018", "smoke", {"seed": 2}, **quiet).skipped


def test_failing_chapter_keeps_partial_notebook(tmp_path):
    root = _mini_root(tmp_path, "from npcrepro.errors import ParameterError\nraise ParameterError('boom')")
    with pytest.raises(book.ChapterFailed, match="ParameterError: boom") as exc:
        book.execute("li2018", "smoke", output=tmp_path / "o.ipynb", root=root, log=lambda *_: None)
    assert (tmp_path / "o.failed.ipynb").exists()
    assert "partial notebook" in str(exc.value)
