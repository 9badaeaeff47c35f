"""Cross-chapter facts: headline records, chapter metadata, the intro table, book order."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from npcrepro import book, summary
from npcrepro.errors import DataError
from pathlib import Path


def test_headline_averages_rows_of_one_patient_first():
    t = pd.DataFrame({"case": ["a", "a", "b", "c"], "method": ["X", "X", "X", "Y"],
                      "dice": [0.2, 0.4, 0.9, 0.1]})
    h = summary.headline_of(t, "X")
    assert h["n"] == 2
    assert h["mean"] == pytest.approx((0.3 + 0.9) / 2)
    assert h["sd"] == pytest.approx(pd.Series([0.3, 0.9]).std(ddof=1))
    with pytest.raises(DataError, match="no rows with method == 'Z'"):
        summary.headline_of(t, "Z")
    with pytest.raises(DataError, match="no 'row'"):
        summary.headline_of(t, "X", column="row")


def _executed(path, name, records=(), seconds=12.5, params=None):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.v4.new_output("display_data", data={summary.HEADLINE_MIME: r, "text/plain": "h"})
                    for r in records]
    nb.cells = [cell]
    nb.metadata["npcrepro"] = {"profile": "cpu", "parameters": params or {"profile": "cpu"},
                               "seconds": seconds, "executed_at": "2026-11-22T06:00:00",
                               "environment": {"git": {"revision": "abcdef1234567", "dirty": True},
                                               "torch": "2.13.0", "python": "3.11.7", "cpu_count": 2}}
    nbformat.write(nb, str(path / f"{name}.ipynb"))


def test_intro_table_puts_reported_next_to_chapter_and_leaderboard(tmp_path):
    rec = dict(paper="xue2020", method="DeepLabv3+", metric="dice", data="phantom", n=5)
    _executed(tmp_path, "xue2020", [dict(rec, source="chapter", mean=0.61, sd=0.05)])
    _executed(tmp_path, "leaderboard", [dict(rec, source="leaderboard", mean=0.15, sd="nan", n=8)])
    h = summary.read_headlines(tmp_path)
    assert sorted(h["notebook"]) == ["leaderboard", "xue2020"]
    t = summary.intro_table(tmp_path).set_index("paper")
    assert t.loc["xue2020", "reported DSC"] == "0.760"          # npcrepro.papers, Sec. 2
    assert t.loc["xue2020", "this book: paper's recipe"] == "0.610 ± 0.050 (n=5)"
    assert t.loc["xue2020", "this book: common protocol"] == "0.150 (n=8)"
    assert t.loc["li2018", "this book: paper's recipe"] == "not run"
    assert list(t.index) == list(summary.PAPERS)


def test_record_headline_stores_json_safe_values(capsys):
    from unittest import mock

    t = pd.DataFrame({"case": ["a"], "method": ["X"], "dice": [0.5]})
    with mock.patch("IPython.display.display") as shown:
        rec = summary.record_headline("li2018", "X", t)
    assert rec["sd"] is None and rec["mean"] == 0.5 and rec["n"] == 1
    data = shown.call_args.args[0]
    json.dumps(data[summary.HEADLINE_MIME], allow_nan=False)
    assert data["text/plain"].endswith("dice 0.500 over 1 patients")


def test_chapter_facts_and_timing_total(tmp_path):
    _executed(tmp_path, "li2018", seconds=60.0, params={"profile": "cpu", "seed": 3})
    _executed(tmp_path, "xue2020", seconds=30.0)
    f = summary.chapter_facts(tmp_path).set_index("chapter")
    assert f.loc["li2018", "parameters"] == "seed=3"
    assert f.loc["xue2020", "parameters"] == "defaults"
    assert f.loc["li2018", "git"] == "abcdef1234 (modified)"
    t = summary.timing_table(tmp_path).set_index("chapter")
    assert t.loc["sum", "seconds"] == 90.0 and t.loc["sum", "minutes"] == 1.5
    # both ended at the same moment: the 60 s one started first, so the span is 60 s
    assert t.loc["wall clock", "seconds"] == 60.0


def test_empty_runs_folder_gives_empty_tables(tmp_path):
    assert summary.read_headlines(tmp_path).empty
    assert summary.chapter_facts(tmp_path).empty
    assert (summary.intro_table(tmp_path)["this book: paper's recipe"] == "not run").all()
    # the appendix selects columns of these: a book with no executed chapter yet must not KeyError
    facts = summary.chapter_facts(tmp_path)
    assert list(facts[["chapter", "profile", "git", "executed_at"]].columns) == ["chapter", "profile", "git",
                                                                                   "executed_at"]
    times = summary.timing_table(tmp_path)
    assert times.empty and {"chapter", "minutes"} <= set(times.columns)
    fig = summary.fig_timing(times, "cpu")
    assert "no chapter executed" in fig.axes[0].texts[0].get_text()
    assert list(summary.convergence_table(tmp_path, "cpu").columns) == summary.CONVERGENCE_COLUMNS


def test_readers_run_after_what_they_read():
    order = book.execution_order(book.CHAPTERS)
    assert order[-2:] in (["reproducibility", "intro"], ["intro", "reproducibility"])
    assert order.index("explorer") > order.index("leaderboard")
    assert set(book.dependencies("intro")) >= {"li2018", "leaderboard", "explorer"}
    assert "reproducibility" not in book.dependencies("intro")


def test_a_dependency_changes_the_readers_fingerprint(tmp_path, monkeypatch):
    from npcrepro.paths import repo_root

    root = repo_root()
    runs = tmp_path / "book" / "runs" / "cpu"
    runs.mkdir(parents=True)
    monkeypatch.setattr(book, "runs_dir", lambda profile, r=None: runs)
    before = book.fingerprint("explorer", "cpu", {}, root)
    (runs / "leaderboard.ipynb").write_text(json.dumps({"metadata": {"npcrepro": {"fingerprint": "x1"}}}))
    after = book.fingerprint("explorer", "cpu", {}, root)
    assert before != after
    assert book.fingerprint("leaderboard", "cpu", {}, root) == book.fingerprint("leaderboard", "cpu", {}, root)


def test_run_folders_lists_the_newest_run_of_each_chapter(tmp_path):
    from npcrepro.engine import RunFolder

    def make(profile, chapter, name, stamp, status, device="cpu"):
        rf = RunFolder.create(tmp_path, profile, chapter, name, params={"profile": profile}, device=device,
                              stamp=stamp)
        (rf.path / "run.json").write_text(json.dumps({"chapter": chapter, "status": status, "folds": 1,
                                                      "seeds": [0], "methods": [{"name": "m"}]}))
        return rf

    assert summary.run_folders(tmp_path, "cpu").empty
    make("cpu", "li2018", "old", "20260101-000000", "running")
    new = make("cpu", "li2018", "new", "20260102-000000", "done")
    make("cpu", "xue2020", "x", "20260101-120000", "running", device="cuda")
    make("smoke", "xue2020", "other profile", "20260103-000000", "done")
    RunFolder.create(tmp_path, "cpu", "luo2020", "no run.json", params={}, stamp="20260104-000000")
    t = summary.run_folders(tmp_path, "cpu").set_index("chapter")
    assert list(t.index) == ["xue2020", "li2018"]  # oldest newest-run first
    assert t.loc["li2018", "run"] == "20260102-000000-new" and t.loc["li2018", "status"] == "done"
    assert t.loc["xue2020", "status"] == "running" and t.loc["xue2020", "device"] == "cuda"
    assert t.loc["li2018", "jobs"] == "1 x 1 x 1"
    env = json.loads((new.path / "environment.json").read_text(encoding="utf-8"))
    rev = env["git"]["revision"]
    assert t.loc["li2018", "git"].rstrip("*") == (rev or "")[:10]
    assert t.loc["li2018", "git"].endswith("*") == bool(rev and env["git"]["dirty"])


def _fake_run(root, chapter: str, folder: str, full: dict, half: dict) -> None:
    """A finished run folder with one test case per method: ``full``/``half`` method -> DSC."""
    import json

    p = root / "cpu" / chapter / folder
    p.mkdir(parents=True)
    (p / "run.json").write_text(json.dumps({"chapter": chapter, "status": "done",
                                            "methods": [{"name": m, "label": m.upper()} for m in full]}))
    (p / "params.json").write_text("{}")
    pd.DataFrame([{"method": m, "seed": 0, "case": "p1", "dice": v} for m, v in full.items()]).to_csv(
        p / "metrics.csv", index=False)
    pd.DataFrame([{"method": m, "seed": 0, "case": "p1", "dice": v} for m, v in half.items()]).to_csv(
        p / "metrics_half.csv", index=False)


def test_convergence_table_takes_the_newest_run_of_each_track(tmp_path):
    from npcrepro.summary import convergence_table

    _fake_run(tmp_path, "xue2020", "20260101-000000-phantom", {"a": 0.1}, {"a": 0.5})  # older: ignored
    _fake_run(tmp_path, "xue2020", "20260102-000000-phantom", {"a": 0.80, "b": 0.5}, {"a": 0.79, "b": 0.3})
    _fake_run(tmp_path, "xue2020", "20260102-000001-openkbp", {"a": 0.6}, {"a": 0.64})
    t = convergence_table(tmp_path, "cpu").set_index(["run", "method"])
    assert len(t) == 3
    assert t.loc[("phantom", "A"), "dice at full budget"] == pytest.approx(0.80)
    assert t.loc[("phantom", "A"), "converged"] and not t.loc[("phantom", "B"), "converged"]
    assert t.loc[("openkbp", "A"), "difference"] == pytest.approx(-0.04) and not t.loc[("openkbp", "A"), "converged"]
    assert len(convergence_table(tmp_path, "gpu")) == 0
    assert t.loc[("phantom", "B"), "reading"] == "undecided"  # one test case: no interval


def _with_jobs(root, chapter: str, folder: str, jobs: list[tuple], device="cpu", threads=1, cores=None) -> None:
    """Add a training record to a :func:`_fake_run` folder: ``jobs`` of (prepare, train, infer, job)
    seconds, ``train`` counted from the job's start as the runner records it (preparation included)."""
    import json

    p = root / "cpu" / chapter / folder
    pd.DataFrame([{"method": "a", "fold": 0, "seed": i, "prepare_seconds": pr, "train_seconds": tr,
                   "infer_seconds": inf, "job_seconds": job} for i, (pr, tr, inf, job) in enumerate(jobs)]).to_csv(
        p / "training.csv", index=False)
    env = {"device": device, "torch_threads": threads, **({"cpu_count": cores} if cores else {})}
    (p / "environment.json").write_text(json.dumps(env))


def test_time_budget_splits_each_runs_job_minutes_and_the_floor_counts_cpu_training_over_the_cores(tmp_path):
    assert list(summary.time_budget(tmp_path, "cpu").columns) == summary.BUDGET_COLUMNS  # no run: empty
    _fake_run(tmp_path, "xue2020", "20260102-000000-phantom", {"a": 0.8}, {"a": 0.8})
    _with_jobs(tmp_path, "xue2020", "20260102-000000-phantom", [(6, 606, 60, 720), (6, 366, 60, 480)])
    _fake_run(tmp_path, "li2018", "20260102-000000-cv", {"a": 0.7}, {"a": 0.7})
    _with_jobs(tmp_path, "li2018", "20260102-000000-cv", [(0, 240, 30, 300)], threads=2)
    _fake_run(tmp_path, "chen2020", "20260102-000000-cv", {"a": 0.7}, {"a": 0.7})  # no training record: left out
    t = summary.time_budget(tmp_path, "cpu").set_index("chapter")
    assert list(t.index) == ["li2018", "xue2020", "all"]
    x = t.loc["xue2020"]
    assert (x["jobs"], x["preparing"], x["training"], x["predicting"]) == (2, 0.2, 16.0, 2.0)
    assert x["rest"] == pytest.approx((720 + 480 - 606 - 366 - 120) / 60)  # the half-budget check, scoring
    assert x["all jobs"] == 20.0 and x["training share"] == pytest.approx(0.8)
    assert t.loc["all", "training"] == 20.0 and t.loc["all", "all jobs"] == 25.0 and t.loc["all", "jobs"] == 3
    # 16 min on one thread and 4 min on two: 24 core-minutes, 12 min on 2 cores
    line = summary.time_floor(summary.time_budget(tmp_path, "cpu"), 2)
    assert "sum to 20 min of job time (24 core-minutes" in line and "less than 12 min of wall clock" in line
    assert "add 5.0 min of job time" in line and "left out" not in line  # one decimal under 10 min
    _with_jobs(tmp_path, "li2018", "20260102-000000-cv", [(0, 240, 30, 300)], device="cuda")
    line = summary.time_floor(summary.time_budget(tmp_path, "cpu"), 2)
    assert "sum to 16 min" in line and "less than 8.0 min" in line and "(1 run on another device left out)" in line
    assert summary.time_floor(summary.time_budget(tmp_path, "cpu"), None).startswith("no run trained on the CPU")
    _with_jobs(tmp_path, "xue2020", "20260102-000000-phantom", [(6, 606, 60, 720), (6, 366, 60, 480)], cores=4)
    assert "on 4 cores" in summary.time_floor(summary.time_budget(tmp_path, "cpu"))  # the cores the runs recorded


# ------------------------------------------------------------------------ committed runs of another profile
def _run_folder(root, profile, chapter, name, dice, half=None, methods=(("unet2d", "2D U-Net"),), phantom=-1):
    """A finished run folder of the runner's layout with one row per (method, case), made on the
    phantom of version ``phantom`` (default this code's; None: a run that does not record it)."""
    from npcrepro.phantom import GENERATOR_VERSION

    d = root / profile / chapter / f"20261126-120000-{name}"
    d.mkdir(parents=True)
    cases = [f"npc_{i:03d}" for i in range(len(dice))]
    version = GENERATOR_VERSION if phantom == -1 else phantom
    (d / "run.json").write_text(json.dumps({"chapter": chapter, "status": "done", "data_label": "phantom",
                                            "methods": [{"name": m, "label": lb} for m, lb in methods],
                                            **({"phantom": {"generator_version": version}} if version else {})}))
    (d / "params.json").write_text(json.dumps({"profile": profile, "data": "phantom"}))
    (d / "splits.json").write_text(json.dumps([{"train": ["x"], "val": [], "test": cases}]))
    rows = [{"method": m, "fold": 0, "seed": 0, "case": c, "structure": "GTVp", "dice": v}
            for m, _ in methods for c, v in zip(cases, dice)]
    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    pd.DataFrame([dict(r, dice=h) for r, h in zip(rows, half or dice)]).to_csv(d / "metrics_half.csv", index=False)
    (d / "DONE").write_text("")
    return d


def test_beside_sets_the_committed_gpu_lite_run_next_to_this_one(tmp_path, monkeypatch):
    from unittest import mock

    from npcrepro.engine.results import Results

    monkeypatch.chdir(tmp_path)
    mine = Results.open(_run_folder(tmp_path / "runs", "cpu", "template", "unet2d", [0.5, 0.7, 0.6]))
    with mock.patch("IPython.display.display") as shown:
        t = summary.beside(mine, "gpu-lite")
    assert t.empty and "No gpu-lite run of this chapter is committed yet" in shown.call_args.args[0].data
    _run_folder(tmp_path / summary.COMMITTED_RUNS, "gpu-lite", "template", "unet2d", [0.8, 0.9, 0.85, 0.95],
                half=[0.8, 0.9, 0.85, 0.95])
    (tmp_path / "book" / "runs" / "gpu-lite").mkdir(parents=True)
    _executed(tmp_path / "book" / "runs" / "gpu-lite", "template", seconds=420.0)
    with mock.patch("IPython.display.display") as shown:
        t = summary.beside(mine, "gpu-lite").set_index("method")
    assert t.loc["2D U-Net", "this run (cpu)"] == "0.600 ± 0.100 (n=3)"
    assert t.loc["2D U-Net", "gpu-lite"] == "0.875 ± 0.065 (n=4)"
    assert t.loc["2D U-Net", "gpu-lite: reading"] == "converged"
    caption, shown_table = (c.args[0] for c in shown.call_args_list)
    caption = caption.data
    assert shown_table.equals(t.reset_index())  # the chapter shows the table too (the cell ends with ";")
    assert caption.startswith("**gpu-lite, a GPU**") and "4 test patients" in caption and "7.0 min" in caption
    # a page of the gpu-lite book itself sets nothing beside it
    own = Results.open(next((tmp_path / summary.COMMITTED_RUNS / "gpu-lite" / "template").iterdir()))
    assert summary.beside(own, "gpu-lite").empty
    # where the pages of a profile read its runs: the committed folders when out_dir has none
    assert summary.run_root("runs", "gpu-lite") == summary.COMMITTED_RUNS
    assert summary.run_root("runs", "cpu") == Path("runs")
    assert summary.profile_chapters("gpu-lite") == ["template"]
    note = summary.profile_note("gpu-lite")
    assert "template (auto, 7.0 min)" in note and "none yet for li2018" in note and "leaderboard" in note


def test_a_committed_run_of_another_phantom_version_is_marked_wherever_it_is_shown(tmp_path, monkeypatch):
    """A committed gpu-lite run made on an older phantom (other patients' images and reference contours)
    is not set beside this run unmarked: beside's header and caption, the intro's column and the
    profile note name its version; a run that does not record one says so."""
    from unittest import mock

    from npcrepro.engine.results import Results
    from npcrepro.phantom import GENERATOR_VERSION

    monkeypatch.chdir(tmp_path)
    mine = Results.open(_run_folder(tmp_path / "runs", "cpu", "li2018", "cv", [0.5, 0.7, 0.6]))
    assert mine.phantom_version == GENERATOR_VERSION
    _run_folder(tmp_path / summary.COMMITTED_RUNS, "gpu-lite", "li2018", "cv", [0.8, 0.9], phantom=1)
    _run_folder(tmp_path / summary.COMMITTED_RUNS, "gpu-lite", "template", "unet2d", [0.8, 0.9], phantom=None)
    lite = tmp_path / "book" / "runs" / "gpu-lite"
    lite.mkdir(parents=True)
    rec = dict(paper="li2018", method="CNN", metric="dice", data="phantom", source="chapter")
    _executed(lite, "li2018", [dict(rec, mean=0.795, sd=0.05, n=2)], seconds=420.0)
    _executed(lite, "template", seconds=60.0)
    with mock.patch("IPython.display.display") as shown:
        t = summary.beside(mine, "gpu-lite").set_index("method")
    assert list(t.columns) == ["this run (cpu)", "gpu-lite (phantom version 1)", "gpu-lite: reading"]
    assert t.loc["2D U-Net", "gpu-lite (phantom version 1)"] == "0.850 ± 0.071 (n=2)"
    caption = shown.call_args_list[0].args[0].data
    assert f"Made on another phantom (phantom version 1; this run's: version {GENERATOR_VERSION})" in caption
    assert summary.committed_marks("gpu-lite") == {"li2018": "phantom version 1",
                                                    "template": "phantom version not recorded"}
    note = summary.profile_note("gpu-lite")
    assert "li2018 (auto, 7.0 min; phantom version 1)" in note and "wait to be trained again" in note
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    _executed(cpu, "li2018", [dict(rec, mean=0.66, sd=0.1, n=12)])
    t = summary.intro_table(cpu, beside=lite).set_index("paper")
    assert t.loc["li2018", "gpu-lite: paper's recipe"] == "0.795 ± 0.050 (n=2) [phantom version 1]"
    # a run on this code's phantom, or on real data, carries no mark
    assert summary.other_phantom(mine) == ""
    real = _run_folder(tmp_path / "runs", "cpu", "xue2020", "openkbp", [0.5], phantom=None)
    (real / "params.json").write_text(json.dumps({"profile": "cpu", "data": "/data/openkbp"}))
    assert Results.open(real).phantom_version is None and summary.other_phantom(Results.open(real)) == ""


def test_a_run_that_does_not_record_its_phantom_reads_it_from_the_commit_it_names(tmp_path, monkeypatch):
    """Runs made before run.json recorded the phantom: the version is read from the source of the git
    revision that environment.json names (read, not run); None where git cannot show it."""
    import shutil
    import subprocess

    from npcrepro import paths
    from npcrepro.engine.results import Results

    if shutil.which("git") is None:
        pytest.skip("no git on this machine")
    repo = tmp_path / "repo"
    (repo / "npcrepro" / "phantom").mkdir(parents=True)
    (repo / "npcrepro" / "phantom" / "make.py").write_text("X = 1\nGENERATOR_VERSION = 3\n")

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "version 3")
    monkeypatch.setattr(paths, "repo_root", lambda: repo)
    d = _run_folder(tmp_path / "runs", "gpu-lite", "li2018", "cv", [0.8], phantom=None)
    for revision, version in ((git("rev-parse", "HEAD").strip(), 3), ("0" * 40, None), ("HEAD", None), ("", None)):
        (d / "environment.json").write_text(json.dumps({"git": {"revision": revision, "dirty": False}}))
        assert Results.open(d).phantom_version == version, revision


def test_intro_table_adds_the_gpu_lite_column(tmp_path):
    cpu, lite = tmp_path / "cpu", tmp_path / "gpu-lite"
    cpu.mkdir()
    lite.mkdir()
    rec = dict(paper="li2018", method="CNN", metric="dice", data="phantom", source="chapter")
    _executed(cpu, "li2018", [dict(rec, mean=0.66, sd=0.1, n=12)])
    _executed(lite, "li2018", [dict(rec, mean=0.795, sd=0.05, n=29)])
    t = summary.intro_table(cpu, beside=lite).set_index("paper")
    assert t.loc["li2018", "gpu-lite: paper's recipe"] == "0.795 ± 0.050 (n=29)"
    assert t.loc["xue2020", "gpu-lite: paper's recipe"] == "no run yet"
    assert "gpu-lite: paper's recipe" not in summary.intro_table(cpu).columns


def test_intro_table_sets_soft_beside_soft_or_says_so(tmp_path):
    """luo2020 reports a soft DSC over 14 structures: its reported cell names that metric, a chapter
    headline of the same metric over the structures it scored says its scope, and the leaderboard's
    hard DSC over GTVp says that it is not the reported metric. Hard DSCs beside a hard reported DSC
    carry no note."""
    rec = dict(paper="luo2020", method="Ours", data="phantom", n=20)
    _executed(tmp_path, "luo2020", [dict(rec, source="chapter", metric="soft_dice", scope="11 structures",
                                         mean=0.8, sd=0.1)])
    _executed(tmp_path, "leaderboard", [dict(rec, source="leaderboard", metric="dice", scope="GTVp", mean=0.7,
                                             sd=0.1),
                                        dict(rec, paper="xue2020", method="DeepLabv3+", source="leaderboard",
                                             metric="dice", scope="GTVp", mean=0.75, sd=0.1)])
    t = summary.intro_table(tmp_path).set_index("paper")
    assert t.loc["luo2020", "reported DSC"] == "0.825 (soft DSC (Eq. 4), 14 structures)"
    assert t.loc["luo2020", "this book: paper's recipe"] == (
        "0.800 ± 0.100 (n=20) [soft DSC (Eq. 4), 11 structures; reported: soft DSC (Eq. 4), 14 structures]")
    assert t.loc["luo2020", "this book: common protocol"].endswith(
        "[hard DSC, GTVp; reported: soft DSC (Eq. 4), 14 structures]")
    assert t.loc["xue2020", "this book: common protocol"] == "0.750 ± 0.100 (n=20)"
    assert t.loc["xue2020", "reported DSC"] == "0.760"


def test_intro_table_says_whether_each_paper_beats_nnunet(tmp_path):
    """The leaderboard's verdict against nnU-Net, from this book's run, else from the committed
    gpu-lite run (named so), else why there is none; records written before it count as none."""
    cpu, lite = tmp_path / "cpu", tmp_path / "gpu-lite"
    cpu.mkdir()
    lite.mkdir()
    rec = dict(paper="xue2020", method="DeepLabv3+", metric="dice", data="phantom", source="leaderboard", mean=0.7,
               sd=0.1, n=20)
    _executed(cpu, "leaderboard", [dict(rec, nnunet="no nnU-Net row in this run"),
                                   dict(rec, paper="li2018", method="CNN")])  # an older record: no key
    col = "beats nnU-Net? (common protocol)"
    t = summary.intro_table(cpu).set_index("paper")
    assert set(t[col]) == {"not run here (the leaderboard trains nnU-Net at gpu-lite and gpu)"}
    _executed(lite, "leaderboard", [dict(rec, nnunet="below nnU-Net: -0.041 [-0.060, -0.020]")])
    t = summary.intro_table(cpu, beside=lite).set_index("paper")
    assert t.loc["xue2020", col] == "gpu-lite: below nnU-Net: -0.041 [-0.060, -0.020]"
    assert t.loc["li2018", col].startswith("not run here")
    _executed(cpu, "leaderboard", [dict(rec, nnunet="no difference shown: 0.004 [-0.010, 0.020]")])
    t = summary.intro_table(cpu, beside=lite).set_index("paper")
    assert t.loc["xue2020", col] == "no difference shown: 0.004 [-0.010, 0.020]"  # this book's own run first
