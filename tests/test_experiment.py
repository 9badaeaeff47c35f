"""The experiment runner on toy chapters: dependency waves, errors, a failing job marks the run."""
from __future__ import annotations

import json

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
