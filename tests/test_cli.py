"""The npcrepro command: one-line errors with non-zero exits, and a chapter run end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from npcrepro import book
from npcrepro.cli import main
from npcrepro.paths import repo_root


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "npcrepro", *args], capture_output=True, text=True,
                          cwd=repo_root())


@pytest.mark.parametrize("args, needle", [
    (["run", "nosuchpaper"], "unknown chapter 'nosuchpaper'"),
    (["run", "li2018", "--profile", "huge"], "invalid choice: 'huge' (choose from 'smoke', 'cpu', 'gpu', 'gpu-lite')"),
    (["run", "li2018", "--profile", "smoke", "-p", "epochz", "3"], "unknown parameter 'epochz' for li2018"),
    (["book", "--profile", "huge"], "invalid choice: 'huge'"),
    (["run", "li2019"], "unknown chapter 'li2019' (valid: metrics,"),
    (["run", "li2019"], "all). Did you mean 'li2018'?"),
    (["run", "li2018", "--profile", "smoke", "-p", "dta", "x"], "Did you mean 'data'?"),
    (["params", "templat"], "Did you mean 'template'?"),
    (["bench", "phantm"], "unknown benchmark 'phantm' (valid: engine, gpu, loader, metrics, phantom, stability). "
                          "Did you mean 'phantom'?"),
    (["quality", "--profile", "gpu-lit"], "invalid choice: 'gpu-lit'"),
])
def test_bad_arguments_fail_in_one_line(args, needle):
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert lines[0].startswith(f"npcrepro {args[0]}: error:")


def test_a_data_folder_is_checked_before_a_kernel_starts(tmp_path):
    """A missing dataset, or too few cases for -p n_cases, is the one-line error at once (the
    notebook would raise it 15-30 s later, after its kernel started), with no notebook written."""
    from npcrepro import phantom

    proc = _cli("run", "template", "--profile", "smoke", "-p", "data", str(tmp_path / "nothing"),
                "-p", "out_dir", str(tmp_path / "runs"))
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"npcrepro run: error: {tmp_path / 'nothing'}: dataset folder not found")
    phantom.generate(tmp_path / "ds", 2, 0, preset="smoke", progress=False, modalities=("T1",))
    proc = _cli("run", "template", "--profile", "smoke", "-p", "data", str(tmp_path / "ds"), "-p", "n_cases", "5",
                "-p", "out_dir", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "n_cases=5, but the dataset holds 2 cases" in proc.stderr
    assert "failed in cell" not in proc.stderr and not (tmp_path / "runs").exists()


def test_params_prints_rows_a_terminal_holds_and_each_profile_under_its_own_name(capsys):
    assert main(["params", "template"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in out) <= 120
    row = next(line.split() for line in out if line.split()[:1] == ["profile"])
    assert row == ["profile", "str", "smoke", "cpu", "gpu", "gpu-lite"]
    assert any(line.startswith("n_val: ") for line in out)


def test_unknown_parameter_lists_valid_ones(capsys):
    assert main(["run", "li2018", "--profile", "smoke", "-p", "epochz", "3"]) == 2
    err = capsys.readouterr().err
    assert "valid: profile, data, device, seed, cohort, out_dir" in err


def _mini_root(tmp_path, extra_cell: str | None = None, *, name: str = "li2018",
               copy: bool = False):
    """A repository stand-in whose chapter ``name`` is a two-cell notebook (fast, and immune to
    edits of the real chapter); the library is the real one: linked, or copied with a
    pyproject.toml (``copy``) so that a ``python -m npcrepro`` started on it takes it for the
    repository root."""
    import shutil

    import nbformat

    root = tmp_path / "repo"
    (root / "notebooks").mkdir(parents=True, exist_ok=True)
    if copy and not (root / "npcrepro").exists():
        shutil.copytree(repo_root() / "npcrepro", root / "npcrepro",
                        ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(repo_root() / "pyproject.toml", root / "pyproject.toml")
    elif not (root / "npcrepro").exists():
        (root / "npcrepro").symlink_to(repo_root() / "npcrepro")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('profile = "cpu"\ndata = "phantom"\ndevice = "auto"\n'
                                          'seed = 0\nout_dir = "runs"', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('print(f"seed={seed} µ")')]
    if extra_cell:
        nb.cells.append(nbformat.v4.new_code_cell(extra_cell))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    return root


def _user_cli(root: Path, *args, cwd: Path):
    """``python -m npcrepro ARGS`` run in ``cwd`` on the mini repository ``root``."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-m", "npcrepro", *map(str, args)], capture_output=True,
                          text=True, encoding="utf-8", cwd=cwd, env=env)


def _one_error_line(proc, command: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"npcrepro {command}: error: "), proc.stderr
    return last


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


# ------------------------------------------------------------------ paths, notebooks and errors
_REPORT = """
from npcrepro.engine import RunFolder
from npcrepro.profiles import load_data, resolve
P = resolve("li2018", profile, data=data, out_dir=out_dir, seed=seed)
print("RUN", RunFolder.from_params(P, "x").path)
print("DATA", load_data(P).root)
"""


def _dataset(folder: Path, name: str) -> Path:
    import numpy as np

    from npcrepro.datasets import Case, write_dataset

    case = Case(name, {"T1": np.ones((2, 8, 8), np.float32)}, {}, (1.0, 1.0, 1.0))
    write_dataset(folder, [case], channels=["T1"], structures=["GTVp"])
    return folder


def test_cli_paths_are_the_callers_and_user_runs_keep_the_books_notebook(tmp_path):
    import nbformat

    root = _mini_root(tmp_path, _REPORT, copy=True)
    user = tmp_path / "user"
    _dataset(user / "ds", "mine")
    _dataset(root / "ds", "decoy")  # a same-named folder in the repository must not be used
    book_nb = book.runs_dir("smoke", root) / "li2018.ipynb"
    book_nb.parent.mkdir(parents=True)
    book_nb.write_text("the book's chapter", encoding="utf-8")

    proc = _user_cli(root, "run", "li2018", "--profile", "smoke", "-p", "data", "./ds",
                     "-p", "out_dir", "out", "-p", "seed", "3", cwd=user)
    assert proc.returncode == 0, proc.stderr
    assert book_nb.read_text(encoding="utf-8") == "the book's chapter"  # not overwritten
    out = Path(proc.stdout.strip().split(": ", 1)[1])
    assert out.parent == root / "runs" / "notebooks" / "smoke" and out.name.startswith("li2018-")
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells
                   for o in c.get("outputs", []))
    run = Path(text.split("RUN ")[1].split()[0])
    assert run.parent == user / "out" / "smoke" / "li2018"
    assert text.split("DATA ")[1].split()[0] == str(user / "ds")
    params = json.loads((run / "params.json").read_text(encoding="utf-8"))
    assert params["data"] == str(user / "ds") and params["out_dir"] == str(user / "out")
    assert not (root / "out").exists()
    # --output is the caller's path too
    proc = _user_cli(root, "run", "li2018", "--profile", "smoke", "-p", "data", "./ds",
                     "--output", "mine.ipynb", cwd=user)
    assert proc.returncode == 0, proc.stderr
    assert (user / "mine.ipynb").exists()


def test_two_runs_of_one_chapter_never_share_a_temporary_notebook(tmp_path, monkeypatch):
    import threading

    import papermill as pm

    root = _mini_root(tmp_path)
    seen, barrier = [], threading.Barrier(2, timeout=20)

    def fake_execute(src, dst, **kw):
        seen.append(dst)
        barrier.wait()  # both runs are in flight at once
        Path(dst).write_text(Path(src).read_text(encoding="utf-8"), encoding="utf-8")

    monkeypatch.setattr(pm, "execute_notebook", fake_execute)
    out = tmp_path / "li2018.ipynb"
    errors = []

    def run():
        try:
            book.execute("li2018", "smoke", force=True, output=out, root=root, log=lambda *_: None)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(set(seen)) == 2 and out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("failure", ["dead kernel", "interrupt"])
def test_a_chapter_whose_kernel_dies_keeps_the_kernel_output(tmp_path, monkeypatch, failure):
    """The kernel's own output (see book.kernel_manager_class) is kept beside the chapter's would-be
    partial notebook when the kernel dies, and removed when the user interrupts; no temporary file stays."""
    import papermill as pm

    root = _mini_root(tmp_path)

    def fake_execute(src, dst, **kw):
        Path(dst).with_name(Path(dst).stem + ".kernel.log").write_text("Fatal Python error: Aborted\n")
        raise KeyboardInterrupt if failure == "interrupt" else RuntimeError("Kernel died before replying")

    monkeypatch.setattr(pm, "execute_notebook", fake_execute)
    out, lines = tmp_path / "li2018.ipynb", []
    with pytest.raises(KeyboardInterrupt if failure == "interrupt" else RuntimeError):
        book.execute("li2018", "smoke", force=True, output=out, root=root, log=lines.append)
    kept = tmp_path / "li2018.failed.kernel.log"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    if failure == "interrupt":
        assert not kept.exists()
    else:
        assert "Aborted" in kept.read_text() and lines[-1].endswith(f"failed; kernel output: {kept}")


def test_book_refuses_a_chapter_executed_with_other_parameters(tmp_path):
    from npcrepro.errors import DataError

    runs = book.runs_dir("gpu", tmp_path)
    runs.mkdir(parents=True)
    for name in book.CHAPTERS:
        params = {"profile": "gpu", "out_dir": "/somewhere"}
        if name == "chen2020":
            params["seed"] = 3
        (runs / f"{name}.ipynb").write_text(json.dumps(
            {"metadata": {"npcrepro": {"parameters": params}}, "cells": []}), encoding="utf-8")
    with pytest.raises(DataError, match="chen2020.ipynb: executed with seed=3, not the book's "
                                        "parameters; the book will not render it"):
        book.build_html("gpu", root=tmp_path, log=lambda *_: None)
    book.check_book_notebook(runs / "li2018.ipynb", "gpu")  # profile and out_dir only: the book's
    with pytest.raises(DataError, match="executed with profile='gpu'"):
        book.check_book_notebook(runs / "li2018.ipynb", "cpu")


@pytest.mark.parametrize("cell, code, needle", [
    ("from npcrepro.errors import DataError\nraise DataError('x.nii.gz: corrupt')", 2,
     "DataError: x.nii.gz: corrupt"),
    ("raise RuntimeError('the network diverged')", 1, "RuntimeError: the network diverged"),
])
def test_failing_chapter_through_run_is_one_line(tmp_path, cell, code, needle):
    root = _mini_root(tmp_path, cell, copy=True)
    proc = _user_cli(root, "run", "li2018", "--profile", "smoke", cwd=tmp_path)
    assert proc.returncode == code
    assert needle in _one_error_line(proc, "run")


def test_bad_sizes_fail_before_a_run_folder_exists(tmp_path):
    root = _mini_root(tmp_path, _REPORT, copy=True)
    for args, needle in ((("-p", "n_cases", "-1"), "'n_cases' of li2018 must be >= 1, got -1"),
                         (("-p", "seed", "-2"), "'seed' must be an int in [0, 4294967295]")):
        notebooks = root / "notebooks" / "li2018.ipynb"
        text = notebooks.read_text(encoding="utf-8")
        if "n_cases" not in text:  # declare the size in the mini chapter's parameters cell
            nb = json.loads(text)
            nb["cells"][0]["source"] = "".join(nb["cells"][0]["source"]) + "\nn_cases = None"
            notebooks.write_text(json.dumps(nb), encoding="utf-8")
        proc = _user_cli(root, "run", "li2018", "--profile", "smoke", *args, "-p", "out_dir", "out",
                         cwd=tmp_path)
        assert proc.returncode == 2 and needle in _one_error_line(proc, "run")
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "out").exists() and not (root / "runs" / "notebooks").exists()


def test_unwritable_output_is_one_line_exit_1(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder", encoding="utf-8")
    src = _dataset(tmp_path / "src", "c0")
    for args, command in ((("phantom", "--out", blocker / "ph", "--cases", "1", "--preset", "smoke"),
                           "phantom"),
                          (("convert", "nnunet", src, blocker / "conv"), "convert")):
        proc = _user_cli(repo_root(), *args, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "file.txt" in _one_error_line(proc, command)


def test_argument_errors_are_one_line_exit_2(tmp_path):
    for args, command in ((("phantom",), "phantom"), (("run",), "run"),
                          (("bench", "nosuch"), "bench"), (("convert", "nosuch", "a", "b"), "convert")):
        proc = _user_cli(repo_root(), *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"npcrepro {command}: error:"), proc.stderr


@pytest.mark.parametrize("name, value, needle", [
    ("widths", "['a']", "must be a list of ints, got ['a'] (item 'a')"),
    ("widths", "[]", "must not be empty (e.g. [8, 16, 32])"),
    ("widths", "[8, 16.5]", "must be a list of ints"),
    ("seed", "99999999999999999999", "must be an int in [0, 4294967295]"),
])
def test_bad_list_and_integer_parameters_fail_in_one_line_before_anything_is_written(tmp_path, capsys, name,
                                                                                      value, needle):
    out = tmp_path / "runs"
    assert main(["run", "template", "--profile", "smoke", "-p", name, value, "-p", "out_dir", str(out),
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_leftovers_of_killed_processes_are_listed_and_removed(tmp_path, capsys):
    import os
    import subprocess
    import sys
    import time

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    runs, book = tmp_path / "runs", tmp_path / "book"
    job = runs / "cpu" / "li2018" / "20261127-000000-cv" / "working" / "fold_0" / "seed_0"
    job.mkdir(parents=True)
    (job / f".checkpoint_last.pt.tmp{dead}").write_bytes(b"x" * 1000)         # killed mid-write
    (job / f".checkpoint_best.pt.tmp{os.getpid()}").write_bytes(b"x")           # still being written
    (book / "runs" / "cpu").mkdir(parents=True)
    (book / "runs" / "cpu" / f".li2018.{dead}-0123abcd.running.ipynb").write_text("{}")
    (book / "runs" / "cpu" / f".li2018.{dead}-0123abcd.running.kernel.log").write_text("boom")
    old = runs / "_cache" / ".openkbp-n12.writing-89abcdef"
    (old / "imagesTr").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    (runs / "_cache" / ".phantom-cpu-x.writing-00000000").mkdir()              # fresh: maybe at work
    (runs / "_cache" / ".DS_Store").write_bytes(b"\0")
    args = ["leftovers", "--runs", str(runs), "--book", str(book)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 5 and "3 leftover(s)" not in out and "4 leftover(s)" in out, out
    assert f".checkpoint_last.pt.tmp{dead}  (checkpoint being written" in out and "writing-89abcdef" in out
    assert f"`npcrepro leftovers --runs {runs} --book {book} --remove`" in out
    assert main(args + ["--remove"]) == 0 and "removed 4 leftover(s)" in capsys.readouterr().out
    assert not old.exists() and (job / f".checkpoint_best.pt.tmp{os.getpid()}").exists()
    assert (runs / "_cache" / ".phantom-cpu-x.writing-00000000").exists()
    assert main(args) == 0 and "no leftovers" in capsys.readouterr().out
