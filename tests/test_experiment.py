"""The experiment runner on toy chapters: dependency waves, errors, a failing job marks the run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from npcrepro import profiles
from npcrepro.engine.experiment import Chapter, Method, Track, _waves, run_experiment, run_track
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


def _one_val_patient(P, data):
    return P.replace(n_val=0, data=data)


def _absent(P):
    return None, "the extract is not on this machine"


Toy.tracks = (Track("second", _one_val_patient), Track("absent", _one_val_patient, _absent))
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
    from npcrepro import phantom

    assert res.info["phantom"] == {"generator_version": phantom.GENERATOR_VERSION, "preset": "smoke",
                                   "generator_fingerprint": phantom.generator_fingerprint()}
    assert res.phantom_version == phantom.GENERATOR_VERSION
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
    assert "seed spread" not in c1 and c1["converged"].iloc[0] is None and c1["reading"].iloc[0] is None


def test_convergence_reads_the_paired_interval_of_the_difference():
    import pandas as pd
    from scipy import stats

    from npcrepro.engine.results import Results

    cases = [f"p{i}" for i in range(8)]
    gain = {"flat": [0.01, -0.01, 0.0, 0.005, -0.005, 0.0, 0.01, -0.01],
            "learning": [0.10, 0.12, 0.08, 0.11, 0.09, 0.10, 0.13, 0.07],
            "noisy": [0.30, -0.20, 0.25, -0.15, 0.20, -0.10, 0.15, -0.05],
            "worse": [-0.10, -0.12, -0.08, -0.11, -0.09, -0.10, -0.13, -0.07]}
    full = pd.DataFrame([(m, 0, 0, c, "GTVp", 0.6 + 0.01 * i) for m in gain for i, c in enumerate(cases)],
                        columns=["method", "fold", "seed", "case", "structure", "dice"])
    half = full.assign(dice=full["dice"] - [g for m in gain for g in gain[m]])
    half = half.sample(frac=1.0, random_state=1)  # paired on the case, not on the row order
    res = Results(Path("."), {"methods": [{"name": m} for m in gain]}, {}, full, pd.DataFrame(), half)
    c = res.convergence().set_index("method")
    assert c["reading"].to_dict() == {"flat": "converged", "learning": "still learning", "noisy": "undecided",
                                      "worse": "worse at the end"}
    noisy = full[full["method"] == "noisy"]["dice"].to_numpy()
    diffs = noisy - (noisy - np.array(gain["noisy"]))  # as stored: gain up to rounding
    ref = stats.bootstrap((diffs,), np.mean, confidence_level=0.95, n_resamples=2000,
                          method="BCa", random_state=np.random.default_rng(0))
    assert c.loc["noisy", "difference low"] == pytest.approx(ref.confidence_interval.low)
    assert c.loc["noisy", "difference high"] == pytest.approx(ref.confidence_interval.high)
    assert c.loc["noisy", "difference"] == pytest.approx(np.mean(gain["noisy"]))
    # the flag is the rule on the mean; the reading refines it: a mean gain of 0.0625 over a noisy
    # handful of cases is not converged, and not shown to be still learning either
    assert not c.loc["noisy", "converged"] and c.loc["flat", "converged"]


def test_a_network_that_finds_nothing_is_not_converged():
    import pandas as pd

    from npcrepro.engine.results import Results

    zeros = pd.DataFrame([("dead", 0, "p1", 0.0), ("dead", 0, "p2", 0.0)],
                         columns=["method", "seed", "case", "dice"])
    c = Results(Path("."), {"methods": [{"name": "dead"}]}, {}, zeros, pd.DataFrame(), zeros).convergence()
    flag = c["converged"].iloc[0]
    assert c["difference"].iloc[0] == 0.0 and flag is not None and not flag
    assert c["reading"].iloc[0] == "finds nothing"


@pytest.mark.parametrize("budgets, saved_at", [((10,), 5), ((6, 10), 11), ((4, 2, 7), 9)])
def test_half_budget_weights_are_the_middle_of_the_last_stage(tmp_path, budgets, saved_at):
    """A single stage saves at half its budget; with several, at the middle of the last one."""
    import torch.nn.functional as F

    from npcrepro.engine import RunFolder, SliceDataset, Stage, Trainer
    from npcrepro.engine.half_budget import save_half_budget
    from npcrepro.models import build
    from conftest import disc_cases

    seen = []

    def spy(trainer, event, info):
        if event == "iteration" and (trainer.run.path / "model_half.pt").exists() and not seen:
            seen.append(info["iteration"])

    torch.manual_seed(0)
    data = SliceDataset(disc_cases(2, (4, 16, 16), 20), ["T1"], ["GTVp"], slices="all")
    run = RunFolder.create(tmp_path, "smoke", "half", "run")
    stages = [Stage(f"s{i}", iterations=n, lr=1e-3) for i, n in enumerate(budgets)]
    trainer = Trainer(build("unet2d", in_channels=1, n_classes=1, widths=(4, 8)),
                      lambda o, t: F.binary_cross_entropy_with_logits(o, t), data, batch_size=2, stages=stages,
                      device="cpu", progress=False, seed=0, run=run, callbacks=[save_half_budget, spy])
    trainer.fit()
    assert seen == [saved_at]


def test_half_budget_weights_are_picked_as_the_final_ones(tmp_path):
    """Where the trainer hands over its best-validation weights at the end, the half-budget copy is
    the best-validation weights of the first half (not the weights caught at the middle)."""
    import torch.nn.functional as F

    from npcrepro.engine import RunFolder, SliceDataset, Stage, Trainer
    from npcrepro.engine.half_budget import save_half_budget
    from npcrepro.models import build
    from conftest import disc_cases

    snapshots = {}

    def spy(trainer, event, info):
        if event == "evaluation":
            snapshots[info["iteration"]] = (info["val_loss"], {k: v.clone() for k, v in
                                                               trainer.scored_state().items()})

    torch.manual_seed(0)
    data = SliceDataset(disc_cases(2, (4, 16, 16), 20), ["T1"], ["GTVp"], slices="all")
    val = SliceDataset(disc_cases(3, (4, 16, 16), 20)[2:], ["T1"], ["GTVp"], slices="all")
    run = RunFolder.create(tmp_path, "smoke", "half", "run")
    trainer = Trainer(build("unet2d", in_channels=1, n_classes=1, widths=(4, 8)),
                      lambda o, t: F.binary_cross_entropy_with_logits(o, t), data, val_data=val, batch_size=2,
                      stages=[Stage("s", iterations=12, lr=5e-2, eval_every=2, early_stopping=100)],
                      device="cpu", progress=False, seed=0, run=run, callbacks=[save_half_budget, spy])
    trainer.fit()
    half = torch.load(run.path / "model_half.pt", weights_only=True)
    first_half = {i: v for i, v in snapshots.items() if i <= 6}
    best_iteration = min(first_half, key=lambda i: first_half[i][0])
    assert best_iteration < 6  # else this case tests nothing: the best is the middle itself
    for k, v in first_half[best_iteration][1].items():
        assert torch.equal(half[k], v), k
    overall = min(snapshots, key=lambda i: snapshots[i][0])  # the final network: the best of all
    for k, v in snapshots[overall][1].items():
        assert torch.equal(trainer.model.state_dict()[k], v), k


def test_half_budget_weights_of_a_part_load_into_that_part(tmp_path):
    """A job that trains one part of its network (guo2021's CSCN trains ACDNet on a BUNet trained by
    another job) saves that part at half its budget: it is scored with the other parts as final.
    Two parts of the same shapes are ambiguous, and then there is no half-budget model."""
    from types import SimpleNamespace

    from npcrepro.engine.half_budget import half_budget_model

    net = torch.nn.ModuleDict({"coarse": torch.nn.Linear(2, 3), "fine": torch.nn.Linear(3, 1)})
    half_fine = torch.nn.Linear(3, 1)
    torch.save(half_fine.state_dict(), tmp_path / "model_half.pt")
    ctx = SimpleNamespace(run=SimpleNamespace(path=tmp_path))
    half = half_budget_model(None, None, net, ctx)
    assert torch.equal(half["fine"].weight, half_fine.weight)
    assert torch.equal(half["coarse"].weight, net["coarse"].weight) and half is not net
    assert not torch.equal(net["fine"].weight, half_fine.weight)  # the final network is untouched
    twins = torch.nn.ModuleDict({"a": torch.nn.Linear(3, 1), "b": torch.nn.Linear(3, 1)})
    assert half_budget_model(None, None, twins, ctx) is None
    (tmp_path / "model_half.pt").unlink()
    assert half_budget_model(None, None, net, ctx) is None


class _SlowChapter(Chapter):
    """Loading sleeps (as file reading does, without the GIL) and preparing depends on the case only."""

    name = "slow_prepare"
    cache_prepared = 0

    def load(self, dataset, name, P):
        import threading
        import time

        time.sleep(0.05)
        if name == "bad":
            from npcrepro.errors import DataError

            raise DataError("case bad: corrupt")
        return name, threading.current_thread().name

    def prepare(self, case, P):
        name, thread = case
        return np.full(3, int(name[1:])), thread


def test_a_jobs_cases_are_prepared_in_threads_with_the_serial_result(monkeypatch):
    from npcrepro.engine import experiment as E
    from npcrepro.errors import DataError

    names = [f"c{i}" for i in range(12)]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    serial = E._prepare_cases(_SlowChapter(), None, names + names[:2], {})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    threaded = E._prepare_cases(_SlowChapter(), None, names, {})
    assert list(serial) == list(threaded) == names           # duplicates once, in the job's order
    for n in names:
        np.testing.assert_array_equal(serial[n][0], threaded[n][0])
    assert {t for _, t in serial.values()} == {"MainThread"}
    assert len({t for _, t in threaded.values()}) == 4        # four threads shared the work
    with pytest.raises(DataError, match="case bad: corrupt"):
        E._prepare_cases(_SlowChapter(), None, ["c1", "bad", "c2"], {})


def test_a_declared_track_runs_in_a_folder_of_its_own_and_an_absent_one_is_skipped(tmp_path):
    P = _params(tmp_path, n_val=2)  # the main run would fail ("broken"); the track runs one method
    res, note = run_track("test_experiment", P, "second", progress=False)
    assert res.done and res.methods == ["exact"] and res.path.name.endswith("-second") and note == ""
    assert res.params["n_val"] == 0
    assert run_track("test_experiment", P, "absent") == (None, "the extract is not on this machine")
    assert [p.name for p in (tmp_path / "smoke" / "template").iterdir()] == [res.path.name]
    with pytest.raises(ParameterError, match="unknown track 'third' \\(valid: second, absent\\)"):
        run_track("test_experiment", P, "third")
    with pytest.raises(ParameterError, match="plain folder name"):
        Track("../up", _one_val_patient)


def test_every_real_data_track_is_declared_by_its_chapter():
    """The notebooks run their second runs by name (npcrepro.chapters.run_track); each is declared."""
    from npcrepro.engine.chapter import load_chapter
    from npcrepro.chapters import MODULES

    tracks = {k: [t.name for t in load_chapter(m).tracks] for k, m in MODULES.items()}
    assert tracks["li2018"] == ["real_t2"] and tracks["luo2020"] == tracks["xue2020"] == ["openkbp"]
    for key in ("li2018", "luo2020", "xue2020"):
        text = (Path(__file__).resolve().parents[1] / "notebooks" / f"{key}.ipynb").read_text(encoding="utf-8")
        assert f'chapters.run_track(P, \\"{tracks[key][0]}\\")' in text and "k_folds=3" not in text


def test_a_real_dataset_handed_to_a_phantom_run_is_not_labelled_phantom(tmp_path):
    """xue2020's OpenKBP track runs with P.data == "phantom" and its dataset passed in: the run must
    name that dataset (the quality bars tell phantom from real data by it)."""
    P = _params(tmp_path, n_val=0)
    ds = profiles.load_data(P)
    assert run_experiment("test_experiment", P, progress=False, dataset=ds).data_label == "phantom"
    ds.source = "openkbp"
    res = run_experiment("test_experiment", P, name="real", progress=False, dataset=ds)
    assert res.data_label == str(ds.root) and res.data_label != "phantom"


def test_held_out_cases_are_the_evaluation_cohorts_test_set_and_unseen_in_development(tmp_path):
    """A real dataset's own test cases (imagesTs, OpenKBP's test-pats) are to a real-data track what
    the evaluation cohort is to the phantom: the evaluation run trains on imagesTr and tests on every
    held-out case; a development run never reads them."""
    from npcrepro.datasets import open_dataset, write_dataset

    P = _params(tmp_path, n_val=0)
    ph = profiles.load_data(P)
    names = list(ph.cases)
    assert len(names) >= 4
    cases = [ph.load(n, channels=["T1"], structures=["GTVp"]) for n in names]
    ds = write_dataset(tmp_path / "real", cases[:-2], test_cases=cases[-2:], channels=["T1"],
                       structures=["GTVp"], source="openkbp")
    assert open_dataset(ds.root).test_cases == sorted(names[-2:])
    res = run_experiment("test_experiment", P.replace(data=str(ds.root)), name="evaluation", progress=False)
    splits = json.loads((res.path / "splits.json").read_text())
    assert len(splits) == 1 and splits[0]["test"] == sorted(names[-2:])
    assert sorted(splits[0]["train"] + splits[0]["val"]) == sorted(names[:-2])
    assert sorted(res.metrics["case"].unique()) == sorted(names[-2:])
    assert res.held_out == 2 and res.cohort == "evaluation" and "2 held-out test patients" in res.source
    dev = run_experiment("test_experiment", P.replace(data=str(ds.root), cohort="development"), name="development",
                         progress=False)
    seen = {c for f in json.loads((dev.path / "splits.json").read_text()) for part in f.values() for c in part}
    assert seen <= set(names[:-2]) and not set(dev.metrics["case"]) & set(names[-2:])
    assert dev.held_out == 0 and dev.cohort is None
