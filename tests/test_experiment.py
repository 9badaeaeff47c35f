"""The experiment runner on toy chapters: dependency waves, errors, a failing job marks the run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from npcrepro import profiles
from npcrepro.engine.experiment import Chapter, Method, _waves, run_experiment
from npcrepro.errors import ParameterError


class Toy(Chapter):
    """Predicts the reference itself (``exact``), its complement (``inverse``, runs after
    ``exact``) or fails while training (``broken``)."""

    name = "template"
    structures = ("GTVp",)

    def methods(self, P):
        return [Method("exact"), Method("inverse", after=("exact",)), Method("broken")][: int(P["n_val"]) + 1]

    def load(self, dataset, name, P):
        return dataset.load(name, channels=["T1"], structures=["GTVp"])

    def build(self, method, P):
        return torch.nn.Linear(1, 1)

    def prepare(self, case, P):
        return case

    def fit(self, method, train, val, ctx):
        if method.name == "broken":
            raise RuntimeError("the network exploded")
        if method.after:
            ctx.model_of("exact")  # the dependency's weights are there
        return self.build(method, ctx.P)

    def predict(self, method, model, case, ctx):
        ref = case.labels["GTVp"].astype(np.float32)
        return {"GTVp": ref if method.name == "exact" else 1 - ref}


CHAPTER = Toy()


def _params(tmp_path, **kw):
    return profiles.resolve("template", "smoke", out_dir=str(tmp_path), device="cpu", **kw)


def test_waves_order_dependencies_and_refuse_cycles():
    a, b, c = Method("a"), Method("b", after=("a",)), Method("c", after=("b",))
    assert [[m.name for m in w] for w in _waves([c, b, a])] == [["a"], ["b"], ["c"]]
    with pytest.raises(ParameterError, match="not selected"):
        _waves([b])
    with pytest.raises(ParameterError, match="cycle"):
        _waves([Method("x", after=("y",)), Method("y", after=("x",))])


def test_methods_run_in_dependency_order_and_score_on_the_case_grid(tmp_path):
    res = run_experiment("test_experiment", _params(tmp_path, n_val=1), progress=False)
    assert res.done and res.methods == ["exact", "inverse"]
    dice = res.metrics.groupby("method")["dice"].mean()
    assert dice["exact"] == pytest.approx(1.0) and dice["inverse"] == pytest.approx(0.0)
    case = res.test_cases()[0]
    assert np.array_equal(res.prediction("exact", case), res.load_case(case).labels["GTVp"])


def test_a_failing_job_marks_the_run_failed(tmp_path):
    with pytest.raises(RuntimeError, match="the network exploded"):
        run_experiment("test_experiment", _params(tmp_path, n_val=2), progress=False)
    run = next((tmp_path / "smoke" / "template").iterdir())
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == "failed" and "the network exploded" in info["error"]
    assert (run / "FAILED").exists() and not (run / "DONE").exists()


def test_unknown_method_subset_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="unknown method"):
        run_experiment("test_experiment", _params(tmp_path), methods=["nope"], progress=False)


def test_convergence_gives_seed_spread_and_half_budget_flag():
    import pandas as pd

    from npcrepro.engine.results import Results

    rows = [("a", 0, "p1", 0.8), ("a", 0, "p2", 0.6), ("a", 1, "p1", 0.9), ("a", 1, "p2", 0.7),
            ("b", 0, "p1", 0.2), ("b", 0, "p2", 0.4), ("b", 1, "p1", 0.2), ("b", 1, "p2", 0.4)]
    metrics = pd.DataFrame(rows, columns=["method", "seed", "case", "dice"])
    half = metrics.assign(dice=metrics["dice"] - [0.02, 0.02, 0.04, 0.04, 0.1, 0.1, 0.1, 0.1])
    res = Results(Path("."), {"methods": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, {}, metrics,
                  pd.DataFrame(), half)
    c = res.convergence().set_index("method")
    assert list(c.index) == ["a", "b"]  # c was not scored
    assert c.loc["a", "dice seed 0"] == pytest.approx(0.7) and c.loc["a", "dice seed 1"] == pytest.approx(0.8)
    assert c.loc["a", "seed spread"] == pytest.approx(0.1) and c.loc["b", "seed spread"] == pytest.approx(0.0)
    assert c.loc["a", "dice at full budget"] == pytest.approx(0.75)
    assert c.loc["a", "difference"] == pytest.approx(0.03) and c.loc["a", "converged"]
    assert c.loc["b", "difference"] == pytest.approx(0.1) and not c.loc["b", "converged"]
    one_seed = Results(Path("."), {"methods": [{"name": "a"}]}, {}, metrics[metrics.seed == 0], pd.DataFrame(),
                       pd.DataFrame())
    c1 = one_seed.convergence()
    assert "seed spread" not in c1 and c1["converged"].iloc[0] is None
