"""Progress on long runs: trainers' progress lines (npcrepro.engine.progress) and the chapter log
that papermill's output becomes in the terminal (npcrepro.chapterlog), on by default from the CLI."""
from __future__ import annotations

import io
import logging
import threading

import nbformat
import pytest
import torch

from npcrepro import chapterlog, cli
from npcrepro.engine import Trainer
from npcrepro.engine.progress import ENV, PREFIX, ProgressLog, interval_from_env


def _trainer(**kw):
    torch.manual_seed(0)
    data = [(torch.randn(1, 8, 8), (torch.rand(1, 8, 8) > 0.5).float()) for _ in range(6)]
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    return Trainer(model, torch.nn.BCEWithLogitsLoss(), data, batch_size=2, iterations=12,
                   device="cpu", desc="toy fold 0", **kw)


def test_interval_from_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert interval_from_env() == 0
    for bad in ("", "0", "-3", "soon"):
        monkeypatch.setenv(ENV, bad)
        assert interval_from_env() == 0
    monkeypatch.setenv(ENV, "2.5")
    assert interval_from_env() == 2.5


def test_progress_lines_name_stage_iterations_and_loss():
    out = io.StringIO()
    log = ProgressLog(0.0, stream=out)  # every iteration
    _trainer(progress=False, callbacks=[log]).fit()
    lines = out.getvalue().splitlines()
    assert all(line.startswith(PREFIX + " toy fold 0 | stage 1/1") for line in lines)
    assert lines[0].endswith("| started") and lines[-1].endswith("| done")
    assert "it 12/12 (100%)" in lines[-1]
    assert any("it 6/12 (50%) | loss " in line and " left" in line for line in lines)


def test_trainer_logs_progress_only_when_asked_and_without_a_bar(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert not any(isinstance(cb, ProgressLog) for cb in _trainer(progress=False).callbacks)
    monkeypatch.setenv(ENV, "30")
    assert any(isinstance(cb, ProgressLog) for cb in _trainer(progress=False).callbacks)
    assert not any(isinstance(cb, ProgressLog) for cb in _trainer(progress=True).callbacks)


def _notebook(path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"),
                nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_markdown_cell("## Training\n\nwords"),
                nbformat.v4.new_code_cell("print('hello')"),
                nbformat.v4.new_markdown_cell("## Results"),
                nbformat.v4.new_code_cell("import pandas")]
    nbformat.write(nb, path)
    return path


def test_stages_follow_headings_and_count_the_injected_cell(tmp_path):
    heads, code = chapterlog.stages(_notebook(tmp_path / "nb.ipynb"))
    assert heads == ["Title", "Title", "Title", "Training", "Training", "Results", "Results"]
    assert code == [False, True, True, False, True, False, True]


def test_chapter_log_shows_stage_stdout_and_progress_but_not_other_stderr(tmp_path):
    lines: list[str] = []
    handler = chapterlog.ChapterLog(lines.append)
    handler.watch("li2018", _notebook(tmp_path / "nb.ipynb"))
    pm = logging.getLogger("papermill.test")

    def record(msg, level=logging.INFO):
        handler.handle(pm.makeRecord(pm.name, level, __file__, 1, msg, None, None))

    out = chapterlog.StreamLines("li2018", lines.append)
    err = chapterlog.StreamLines("li2018", lines.append, progress_only=True)
    record("Executing Cell 5---------------")  # the print cell (after the injected parameters)
    record("   a  b\n0  1  2")  # papermill's text form of a displayed table: dropped
    record("Ending Cell 5------------------")
    out.write("hello\nwor")
    out.write("ld\n")
    err.write(f"{PREFIX} toy | it 3/9\n")
    err.write("UserWarning: something noisy\n")
    out.write("[li2018] 2/4 folds done\n")  # a chapter that names itself is not named twice
    out.write("no newline at the end")
    out.close()
    assert lines == ["[li2018] cell 3/4 | Training", "[li2018] hello", "[li2018] world",
                     f"[li2018] {PREFIX} toy | it 3/9", "[li2018] 2/4 folds done",
                     "[li2018] no newline at the end"]
    # another thread's records belong to no watched chapter
    t = threading.Thread(target=record, args=("Executing Cell 3---",))
    t.start()
    t.join()
    handler.forget()
    record("Executing Cell 3---")
    assert len(lines) == 6


def test_cli_logs_output_by_default(monkeypatch):
    seen = {}
    monkeypatch.setattr("npcrepro.book.execute", lambda name, profile, params, **kw: seen.update(kw) or
                        type("R", (), {"output": "x"})())
    assert cli.main(["run", "data", "--profile", "smoke"]) == 0
    assert seen["log_output"] is True
    assert cli.main(["run", "data", "--profile", "smoke", "--no-log-output"]) == 0
    assert seen["log_output"] is False


@pytest.mark.slow
def test_papermill_run_prints_stage_and_lines(tmp_path, monkeypatch):
    """A real kernel: with log_output the chapter's stage and printed line reach the terminal, and
    the executed notebook is the same as without it."""
    import papermill as pm

    monkeypatch.delenv(ENV, raising=False)
    lines: list[str] = []
    src = _notebook(tmp_path / "nb.ipynb")
    with chapterlog.chapter_log("toy", src, lines.append) as (out, err):
        pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3",
                            progress_bar=False, log_output=True, cwd=str(tmp_path), parameters={"n": 2},
                            stdout_file=out, stderr_file=err)
    assert lines == ["[toy] cell 1/4 | Title", "[toy] cell 2/4 | Title", "[toy] cell 3/4 | Training",
                     "[toy] hello", "[toy] cell 4/4 | Results"]
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert [o.get("text") for o in nb.cells[4].outputs] == ["hello\n"]  # after the injected cell


@pytest.mark.slow
def test_book_kernel_keeps_child_output_off_the_terminal(tmp_path, capfd, monkeypatch):
    """A child process of a cell (the leaderboard's workers) writes to the kernel's captured
    descriptors: the notebook gets its line once, the kernel's own copy goes to the kernel log, and
    the terminal (this process's descriptors, which a kernel inherits by default) stays clean."""
    import papermill as pm

    monkeypatch.delenv("PYTEST_CURRENT_TEST")  # ipykernel does not capture descriptors under pytest

    from npcrepro import book

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import subprocess, sys, time\n"
        "_ = subprocess.run([sys.executable, '-c', \"import sys; sys.stderr.write('child err\\\\n'); "
        "print('child out')\"], check=True)\n"
        "time.sleep(1)  # the kernel forwards captured descriptors from a thread")]
    src = tmp_path / "nb.ipynb"
    nbformat.write(nb, src)
    log = tmp_path / "kernel.log"
    pm.execute_notebook(str(src), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        cwd=str(tmp_path), kernel_manager_class=book.kernel_manager_class(log))
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    shown = {o.get("name"): o.get("text") for o in outputs}
    assert "child err" in shown.get("stderr", "") and "child out" in shown.get("stdout", "")
    terminal = capfd.readouterr()
    assert "child" not in terminal.err and "child" not in terminal.out
    assert "child err" in log.read_text() and "child out" in log.read_text()


def test_progress_bar_is_a_handler_that_counts_every_iteration_and_closes_on_failure():
    from npcrepro.engine.progress import ProgressBar

    trainer = _trainer(progress=True)
    bar = next(cb for cb in trainer.callbacks if isinstance(cb, ProgressBar))
    seen = []
    real_close = ProgressBar.close

    def close():
        seen.append(bar.bar.n if bar.bar is not None else None)
        real_close(bar)

    bar.close = close
    trainer.fit()
    assert seen == [12] and bar.bar is None  # 12 iterations counted, then closed

    def fail(trainer, event, info):
        if event == "iteration" and info["iteration"] == 5:
            raise RuntimeError("killed")

    trainer = _trainer(progress=True, callbacks=[fail])
    bar = next(cb for cb in trainer.callbacks if isinstance(cb, ProgressBar))
    with pytest.raises(RuntimeError, match="killed"):
        trainer.fit()
    assert bar.bar is None  # closed although fit raised
    assert not any(isinstance(cb, ProgressBar) for cb in _trainer(progress=False).callbacks)
