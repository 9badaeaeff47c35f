"""The stability benchmark's comparison of one chapter run in several environments (made here)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import load_benchmark
from npcrepro.engine.results import Results


def _bench():
    return load_benchmark("stability")


def _run(folder: Path, dice: dict, half: dict) -> Results:
    """A finished run of two methods, seeds 0 and 1, one case; ``dice``/``half``: (method, seed) -> DSC."""
    folder.mkdir(parents=True)
    methods = sorted({m for m, _ in dice})
    (folder / "run.json").write_text(json.dumps({"chapter": "leaderboard", "status": "done",
                                                 "methods": [{"name": m, "label": m} for m in methods]}))
    (folder / "params.json").write_text("{}")
    for name, table in (("metrics.csv", dice), ("metrics_half.csv", half)):
        pd.DataFrame([{"method": m, "seed": s, "case": "p1", "structure": "GTVp", "fold": 0, "dice": d}
                      for (m, s), d in table.items()]).to_csv(folder / name, index=False)
    return Results.open(folder)


def test_compare_reads_environments_seeds_and_half_budget(tmp_path):
    bench = _bench()
    assert set(bench.ENVIRONMENTS) == {"1 thread", "2 threads", "default kernels", "AVX2 machine",
                                       "jobs reversed"}
    assert bench.ENVIRONMENTS["default kernels"][0] == {"ATEN_CPU_CAPABILITY": "default"}
    assert bench.ENVIRONMENTS["AVX2 machine"][0] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    steady = {("a", 0): 0.80, ("a", 1): 0.84, ("b", 0): 0.90, ("b", 1): 0.70}
    one = _run(tmp_path / "one", steady, steady)
    # in the second environment a's mean moves by 0.06 (0.82 -> 0.88); b's seed 1 fell from 0.85
    two = _run(tmp_path / "two", {("a", 0): 0.86, ("a", 1): 0.90, ("b", 0): 0.90, ("b", 1): 0.70},
               {("a", 0): 0.86, ("a", 1): 0.90, ("b", 0): 0.90, ("b", 1): 0.85})
    rows = {r["method"]: r for r in bench.compare({"1 thread": one, "2 threads": two})}
    a, b = rows["a"], rows["b"]
    assert (a["1 thread"], a["2 threads"]) == pytest.approx((0.82, 0.88))
    assert a["environments differ"] == pytest.approx(0.06) and a["seed spread"] == pytest.approx(0.04)
    assert not a["stable"]  # the environments differ by more than 0.05
    assert b["environments differ"] == pytest.approx(0.0)
    assert b["seed spread"] == pytest.approx(0.20) and b["largest drop"] == pytest.approx(0.15)
    assert not b["stable"]
    rows = {r["method"]: r for r in bench.compare({"1 thread": one})}
    assert rows["a"]["stable"] and rows["a"]["largest drop"] == pytest.approx(0.0)


def test_finished_run_reuses_an_environment_only_at_this_commit_and_parameters(tmp_path, monkeypatch):
    import npcrepro.engine.runs as runs

    bench = _bench()
    folder = tmp_path / "cpu" / "leaderboard" / "20261128-101500-AVX2-machine"
    _run(folder, {("a", 0): 0.8}, {("a", 0): 0.8})
    (folder / "params.json").write_text(json.dumps({"methods": ["a"], "profile": "cpu"}))

    def env(revision, dirty=False):
        (folder / "environment.json").write_text(json.dumps({"git": {"revision": revision, "dirty": dirty}}))

    monkeypatch.setattr(runs, "git_revision", lambda: {"revision": "abc123", "dirty": False})
    env("abc123")
    found = bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine", methods=["a"])
    assert found is not None and found.path == folder
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine") is not None
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "1 thread", methods=["a"]) is None
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine", methods=["b"]) is None
    assert bench.finished_run(str(tmp_path), "leaderboard", "smoke", "AVX2 machine") is None
    env("abc123", dirty=True)  # written from a modified tree
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine") is None
    env("def456")  # another commit
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine") is None
    env("abc123")
    monkeypatch.setattr(runs, "git_revision", lambda: {"revision": "abc123", "dirty": True})
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine") is None  # this checkout modified
    monkeypatch.setattr(runs, "git_revision", lambda: {"revision": "abc123", "dirty": False})
    run_json = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**run_json, "status": "running"}))
    assert bench.finished_run(str(tmp_path), "leaderboard", "cpu", "AVX2 machine") is None


def test_an_environment_runs_the_chapters_workers_within_the_cores():
    job_workers = _bench().job_workers
    assert job_workers(2, 1, 2) == 2  # the leaderboard at cpu: two one-thread jobs, as the book runs them
    assert job_workers(2, 2, 2) == 1  # "2 threads": one job at a time on two cores
    assert job_workers(1, 1, 16) == 1  # a chapter that trains one job at a time keeps it
    assert job_workers(4, 2, 1) == 1  # never fewer than one


def test_methods_narrow_the_leaderboard_and_leave_other_chapters_whole(tmp_path, monkeypatch):
    bench = _bench()
    done = _run(tmp_path / "one", {("a", 0): 0.8, ("a", 1): 0.8}, {("a", 0): 0.8, ("a", 1): 0.8})
    asked = []
    monkeypatch.setattr(bench, "run_environment", lambda env, chapter, profile, out, **kw: asked.append(
        (env, chapter, kw)) or done)
    out = bench.main(profile="cpu", chapters=["leaderboard", "li2018"], environments=["1 thread"],
                     methods=["unet3d_cet1"])
    assert asked == [("1 thread", "leaderboard", {"methods": ["unet3d_cet1"]}), ("1 thread", "li2018", {})]
    assert [r["method"] for r in out["rows"]] == ["a", "a"]
    asked.clear()
    bench.main(quick=True, chapters=["leaderboard"], environments=["1 thread"])
    assert asked == [("1 thread", "leaderboard", {"methods": ["unet_cet1", "mmfnet"]})]
