"""The engine: schedules, sampling, the Trainer (learning, determinism, resume, stages), inference,
run folders, cross-validation, dispatch, and profiles/parameters."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from npcrepro import profiles
from npcrepro.datasets import Case, write_dataset
from npcrepro.engine import (PatchDataset, RunFolder, Schedule, SliceDataset, Stage, Trainer, epoch_plan,
                             gaussian_weights, load_checkpoint, make_optimizer,
                             make_schedule, predict_case, predict_slice_tiles, predict_slices,
                             predict_sliding_window, seed_everything)
from npcrepro.engine.dispatch import Job, run_jobs
from npcrepro.engine.inference import window_starts
from npcrepro.errors import DataError, ParameterError
from npcrepro.models import build
from npcrepro import transforms as T
from npcrepro.transforms import Augment


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- data helpers
def blob_case(seed: int, shape=(8, 32, 32), name=None) -> Case:
    """A bright ellipsoidal 'tumour' in noise (a stand-in where the phantom is not needed)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = np.array(shape) / 2 + rng.uniform(-3, 3, 3) * np.array([0.3, 1, 1])
    r = rng.uniform(5, 8)
    m = ((z - c[0]) * 2.5) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 < r ** 2
    img = rng.normal(0, 1, shape).astype(np.float32) + 2.0 * m
    return Case(name or f"c{seed:02d}", {"T1": img, "CT": 40 * img}, {"GTVp": m}, (3.0, 1.0, 1.0))


def phantom_cases(n: int, **params) -> list[Case]:
    """Phantom patients at the smoke preset (32 x 64 x 64 at 3.5 x 4 x 4 mm)."""
    from npcrepro.phantom import make_case

    return [make_case(i, preset="smoke", **params) for i in range(n)]


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def bce(out, y):
    return F.binary_cross_entropy_with_logits(out, y)


# ----------------------------------------------------------------------------- schedules
def test_schedules_of_the_papers():
    luo = make_schedule({"kind": "exponential", "every": 10, "gamma": 0.9})
    assert [luo.factor_at(t, 0) for t in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.9, 0.81])
    li = make_schedule({"kind": "step", "step_size": 100000, "gamma": 0.1})
    assert li.factor_at(99999, 0) == 1 and li.factor_at(100000, 0) == pytest.approx(0.1)
    ep = make_schedule({"kind": "step", "step_size": 2, "gamma": 0.5, "unit": "epoch"})
    assert ep.factor_at(1000, 3) == 0.5
    smooth = make_schedule({"kind": "exponential", "every": 10, "gamma": 0.9, "staircase": False})
    assert smooth.factor_at(5, 0) == pytest.approx(0.9 ** 0.5)
    assert make_schedule({"kind": "poly", "power": 1.0}, total=100).factor_at(50, 0) == pytest.approx(0.5)
    assert make_schedule("cosine", total=10).factor_at(10, 0) == pytest.approx(0.0)
    assert make_schedule({"kind": "multistep", "milestones": [2, 4]}).factor_at(4, 0) == pytest.approx(0.01)
    assert make_schedule({"kind": "constant", "warmup": 4}).factor_at(1, 0) == 0.5


def test_cosine_warm_restarts():
    s = make_schedule({"kind": "cosine", "cycles": 2, "warmup": 2}, total=20)
    # each cycle of 10: warm-up over 2, then the cosine decays to ~0 at its end
    first = [s.factor_at(t, 0) for t in range(10)]
    second = [s.factor_at(t, 0) for t in range(10, 20)]
    assert first == pytest.approx(second)
    assert first[0] == pytest.approx(0.5 * 0.5 * (1 + math.cos(0.0)))
    assert first[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert first[9] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.9)))
    assert s.factor_at(20, 0) == pytest.approx(0.0)  # past the end: the last cycle's end
    assert make_schedule(s).describe()["cycles"] == 2
    one = make_schedule({"kind": "cosine"}, total=20)
    assert "cycles" not in one.describe() and one.factor_at(10, 0) == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="cycles"):
        make_schedule({"kind": "exponential", "every": 5, "cycles": 2})
    with pytest.raises(ParameterError, match="cycles"):
        make_schedule({"kind": "cosine", "cycles": 0}, total=20)


def test_plateau_schedule_xue2020():
    s = make_schedule({"kind": "plateau", "factor": 0.8, "patience": 5})
    s.on_evaluation(1.0)
    cut = [s.on_evaluation(1.0) for _ in range(5)]
    assert cut == [False] * 4 + [True] and s.factor_at(0, 0) == pytest.approx(0.8)
    s2 = Schedule("plateau")
    s2.load_state_dict(s.state_dict())
    assert s2.factor_at(0, 0) == pytest.approx(0.8)
    s.on_evaluation(0.5)  # improvement resets the count
    assert s.bad == 0


def test_schedule_and_optimiser_errors():
    with pytest.raises(ParameterError, match="valid"):
        make_schedule("warm_restarts")
    with pytest.raises(ParameterError, match="step_size"):
        make_schedule({"kind": "step"})
    with pytest.raises(ParameterError, match="gamm"):
        make_schedule({"kind": "step", "every": 2, "gamm": 0.1})
    p = [torch.nn.Parameter(torch.zeros(1))]
    assert isinstance(make_optimizer(p, "sgd", 0.1, momentum=0.9), torch.optim.SGD)
    with pytest.raises(ParameterError, match="valid"):
        make_optimizer(p, "lbfgs")
    with pytest.raises(ParameterError, match="frozen"):
        make_optimizer([], "adam")
    with pytest.raises(ParameterError, match="exactly one"):
        Stage(epochs=1, iterations=1)
    with pytest.raises(ParameterError, match="unknown argument"):
        Trainer(torch.nn.Conv2d(1, 1, 1), bce, [0], iterationz=3)


def test_adam_is_fused_where_it_can_be_and_follows_the_loop_implementation():
    """make_optimizer's Adam/AdamW run the fused kernel on CPU float tensors; the weights after 100 steps
    equal those of PyTorch's per-parameter loop to float rounding, with and without weight decay."""
    torch.manual_seed(0)
    start = [torch.randn(16, 8, 3, 3), torch.randn(16)]
    for name, wd in (("adam", 0.0), ("adam", 1e-2), ("adamw", 1e-2)):
        fused = [p.clone().requires_grad_() for p in start]
        loop = [p.clone().requires_grad_() for p in start]
        opt = make_optimizer(fused, name, 1e-2, weight_decay=wd)
        assert opt.defaults["fused"] is True
        ref = (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(loop, 1e-2, weight_decay=wd)
        g = torch.Generator().manual_seed(1)
        for _ in range(100):
            for a, b in zip(fused, loop):
                a.grad = torch.randn(a.shape, generator=g)
                b.grad = a.grad.clone()
            opt.step()
            ref.step()
        for a, b in zip(fused, loop):
            assert torch.allclose(a, b, rtol=0, atol=1e-5)
        assert not torch.equal(fused[0], start[0])
    # param groups (dicts) are read too; a non-floating tensor would take the plain implementation
    assert make_optimizer([{"params": [torch.zeros(2, requires_grad=True)]}], "adam").defaults["fused"] is True
    from npcrepro.engine.schedules import _fusable

    assert not _fusable([torch.zeros(2, dtype=torch.int64)]) and _fusable([torch.zeros(2)])


# ----------------------------------------------------------------------------- sampling
def test_epoch_plan_is_seeded_permutation():
    a = epoch_plan(10, 3, 3, seed=1, stage=0, epoch=0)
    assert a.shape == (3, 3) and len(set(a.ravel())) == 9
    assert np.array_equal(a, epoch_plan(10, 3, 3, seed=1, stage=0, epoch=0))
    assert not np.array_equal(a, epoch_plan(10, 3, 3, seed=1, stage=0, epoch=1))
    long = epoch_plan(4, 4, 5, seed=0, stage=0, epoch=0)  # more updates than items: repeats
    assert sorted(long.ravel()[:4]) == [0, 1, 2, 3]


def test_covering_plan_puts_every_structure_in_every_batch():
    from npcrepro.engine.data import covering_plan

    # 40 items; structure 0 on most, structure 1 on two items only, structure 2 on one, structure 3 on none
    cover = np.zeros((40, 4), bool)
    cover[:30, 0] = True
    cover[[5, 33], 1] = True
    cover[37, 2] = True
    plan = epoch_plan(40, 4, 200, seed=2, stage=0, epoch=0, cover=cover)
    assert plan.shape == (200, 4) and plan.min() >= 0 and plan.max() < 40
    shown = cover[plan].any(axis=1)  # (batches, structures)
    assert shown[:, :3].all() and not shown[:, 3].any()
    assert np.array_equal(plan, epoch_plan(40, 4, 200, seed=2, stage=0, epoch=0, cover=cover))
    assert not np.array_equal(plan, epoch_plan(40, 4, 200, seed=2, stage=0, epoch=1, cover=cover))
    # uniform epochs would leave structure 2 (one item of 40) out of 9 batches in 10
    uniform = cover[epoch_plan(40, 4, 200, seed=2, stage=0, epoch=0)].any(axis=1)
    assert uniform[:, 2].mean() < 0.2
    # the rest of the batch is uniform: every item is drawn
    assert set(plan.ravel()) == set(range(40))
    # a batch smaller than the structures it should show holds as many as it can, each once
    tight = covering_plan(np.eye(5, dtype=bool), 3, 50, np.random.default_rng(0))
    assert all(len(set(b)) == 3 for b in tight.tolist())
    with pytest.raises(DataError, match="rows for"):
        epoch_plan(39, 4, 2, seed=0, stage=0, epoch=0, cover=cover)
    with pytest.raises(DataError, match="structures"):
        covering_plan(np.zeros(5, bool), 2, 2, np.random.default_rng(0))


def test_slice_dataset_cover_is_what_each_training_crop_shows():
    a = np.zeros((3, 16, 16), bool)
    a[0, 1:3, 1:3] = True  # slice 0: only in the corner that the centred 8 x 8 crop leaves out
    a[1, 6:9, 6:9] = True  # slice 1: in the crop
    b = np.zeros((3, 16, 16), bool)
    b[2, 7:9, 7:9] = True
    case = Case("c", {"CT": np.zeros((3, 16, 16), np.float32)}, {"A": a, "B": b}, (1.0, 1.0, 1.0))
    ds = SliceDataset([case], ["CT"], ["A", "B"], slices="all", size=(8, 8), sampling="cover")
    assert ds.cover.tolist() == [[False, False], [True, False], [False, True]]
    assert SliceDataset([case], ["CT"], ["A", "B"], slices="all").cover is None
    with pytest.raises(ParameterError, match="sampling must be"):
        SliceDataset([case], ["CT"], ["A", "B"], sampling="balanced")


def test_trainer_draws_covering_batches_from_a_dataset_with_cover(tiny_cases):
    seen = []

    class Spy(SliceDataset):
        def get(self, index, rng):
            seen.append(int(index))
            return super().get(index, rng)

    train = Spy(tiny_cases[:2], ["T1"], ["GTVp"], slices="all", sampling="cover")
    rare = int(np.flatnonzero(train.cover[:, 0])[0])
    train.cover = np.zeros_like(train.cover)
    train.cover[rare, 0] = True  # pretend only one slice shows the tumour: every batch must draw it
    seed_everything(0)
    model = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8))
    Trainer(model, bce, train, batch_size=2, iterations=5, lr=1e-3, progress=False, seed=1).fit()
    batches = [seen[i:i + 2] for i in range(0, len(seen), 2)]
    assert len(batches) == 5 and all(rare in b for b in batches)


def test_slice_and_patch_datasets():
    cases = [blob_case(i) for i in range(2)]
    ds = SliceDataset(cases, ["T1"], ["GTVp"])
    labelled = sum(len(np.flatnonzero(c.labels["GTVp"].any(axis=(1, 2)))) for c in cases)
    assert len(ds) == labelled
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and y.shape == (1, 32, 32) and x.dtype == torch.float32
    ctx = SliceDataset(cases, ["T1", "CT"], ["GTVp"], slices="all", context=1, size=(24, 40))
    assert len(ctx) == 16 and ctx.in_channels == 6
    x, y = ctx.get(0, np.random.default_rng(0))
    assert x.shape == (6, 24, 40) and y.shape == (1, 24, 40)
    more = SliceDataset(cases, ["T1"], ["GTVp"], background_fraction=0.5)
    assert len(ds) < len(more) <= len(ds) * 1.5 + 2
    aug = SliceDataset(cases, ["T1"], ["GTVp"], augment=Augment(flip_axes=(-1,), rotate_deg=10))
    a1, a2 = aug.get(3, np.random.default_rng(7)), aug.get(3, np.random.default_rng(7))
    assert torch.equal(a1[0], a2[0]) and torch.equal(aug[3][0], ds[3][0])
    with pytest.raises(DataError, match="missing channel"):
        SliceDataset(cases, ["PET"], ["GTVp"])
    with pytest.raises(DataError, match="no slices"):
        SliceDataset(cases, ["T1"], ["GTVnd"])
    patches = PatchDataset(cases, ["T1"], ["GTVp"], (4, 16, 16), samples_per_case=3, fg_prob=1.0)
    assert len(patches) == 6
    for i in range(6):
        x, y = patches.get(i, np.random.default_rng(i))
        assert x.shape == (1, 4, 16, 16) and y.shape == (1, 4, 16, 16) and y.sum() > 0
    assert torch.equal(patches[2][0], patches[2][0])  # unaugmented items are fixed


# ----------------------------------------------------------------------------- the trainer
def _tiny_trainer(cases, run=None, stages=None, callbacks=(), seed=3, **kw):
    seed_everything(0)
    model = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8, 16), dropout=0.2)
    train = SliceDataset(cases[:3], ["T1"], ["GTVp"],
                         augment=Augment(flip_axes=(-1, -2), rotate_deg=10, jitter=0.1))
    val = SliceDataset(cases[3:], ["T1"], ["GTVp"])
    stages = stages or [
        Stage("warm", iterations=7, lr=1e-2, frozen=["down"], eval_every=3,
              schedule={"kind": "exponential", "every": 3, "gamma": 0.9}),
        Stage("all", epochs=2, optimizer="sgd", lr=1e-2, schedule={"kind": "plateau", "factor": 0.5,
                                                                   "patience": 1})]
    return Trainer(model, bce, train, val_data=val, batch_size=3, stages=stages, run=run,
                   progress=False, callbacks=callbacks, seed=seed, **kw), model


@pytest.fixture(scope="module")
def tiny_cases():
    return [blob_case(i, (6, 32, 32)) for i in range(4)]


@pytest.fixture(scope="module")
def reference_run(tiny_cases, tmp_path_factory):
    run = RunFolder.create(tmp_path_factory.mktemp("runs"), "smoke", "test", "ref")
    trainer, model = _tiny_trainer(tiny_cases, run=run)
    history = trainer.fit()
    return run, history, {k: v.clone() for k, v in model.state_dict().items()}


def test_smoke_training_on_the_phantom_learns():
    from npcrepro.losses import DiceLoss

    # the engine learns an edge the image shows: the tumour the images were rendered from (GTVp_truth), not
    # the raters' consensus, whose misreadings of a faint or infiltrative edge (several of a smoke tumour's
    # 4 mm voxels) no image shows
    cases = phantom_cases(4)
    soft_dice = DiceLoss(eps=1.0)
    seed_everything(0)
    model = build("unet2d", in_channels=1, n_classes=1, widths=(8, 16, 32))
    train = SliceDataset(cases, ["CET1"], ["GTVp_truth"], background_fraction=0.2)

    def score():
        return np.mean([dice(predict_case(model, c, ["CET1"])[0] >= 0.5, c.labels["GTVp_truth"]) for c in cases])

    before = score()
    history = Trainer(model, lambda o, t: soft_dice(o, t) + bce(o, t), train, batch_size=8,
                      iterations=200, eval_every=100, lr=1e-2, progress=False, seed=0).fit()
    assert history.completed and history.iterations == 200
    assert history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]
    after = score()
    assert after > 0.6 and after > before + 0.3, (before, after)


def test_same_seed_same_numbers(tiny_cases, reference_run):
    _, h1, sd1 = reference_run
    trainer, model = _tiny_trainer(tiny_cases)
    h2 = trainer.fit()
    assert [r["train_loss"] for r in h1.rows] == [r["train_loss"] for r in h2.rows]
    assert [r["val_loss"] for r in h1.rows] == [r["val_loss"] for r in h2.rows]
    assert all(torch.equal(sd1[k], v) for k, v in model.state_dict().items())
    other, _ = _tiny_trainer(tiny_cases, seed=4)
    assert [r["train_loss"] for r in other.fit().rows] != [r["train_loss"] for r in h1.rows]


def test_loader_worker_processes_give_the_same_numbers(tiny_cases, reference_run):
    """Batches sampled and augmented in two DataLoader processes (what "auto" does on CUDA) train
    the same weights as batches made in the main process: each item has its own seeded generator."""
    _, h1, sd1 = reference_run
    trainer, model = _tiny_trainer(tiny_cases, num_workers=2)
    h2 = trainer.fit()
    assert trainer.num_workers == 2
    assert [r["train_loss"] for r in h1.rows] == [r["train_loss"] for r in h2.rows]
    assert all(torch.equal(sd1[k], v) for k, v in model.state_dict().items())


def test_loader_workers_auto_and_bad_values(tiny_cases, monkeypatch):
    from npcrepro.engine.loaders import loader_workers

    monkeypatch.delenv("NPCREPRO_LOADER_WORKERS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(cuda=False) == 0 and loader_workers(cuda=True) == 8
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert loader_workers(cuda=True) == 3
    monkeypatch.setenv("NPCREPRO_LOADER_WORKERS", "5")
    assert loader_workers(cuda=False) == 5
    monkeypatch.setenv("NPCREPRO_LOADER_WORKERS", "many")
    with pytest.raises(ParameterError, match="NPCREPRO_LOADER_WORKERS"):
        loader_workers(cuda=True)
    for bad in (-1, 1.5, "two", True):
        with pytest.raises(ParameterError, match="num_workers"):
            _tiny_trainer(tiny_cases, num_workers=bad)


def test_resume_after_kill_gives_the_same_final_numbers(tiny_cases, reference_run, tmp_path):
    _, h_ref, sd_ref = reference_run

    def kill(trainer, event, info):
        if event == "iteration" and info["iteration"] == 13:
            raise KeyboardInterrupt("killed")

    run = RunFolder.create(tmp_path, "smoke", "test", "killed")
    trainer, _ = _tiny_trainer(tiny_cases, run=run, callbacks=[kill], checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    ck = load_checkpoint(run.checkpoint_last)
    assert ck["state"]["iteration"] == 12 and not ck["state"]["done"]  # the last save before the kill
    trainer, model = _tiny_trainer(tiny_cases, run=RunFolder.open(run.path))
    h = trainer.fit(resume=True)
    assert h.completed and h.iterations == h_ref.iterations
    assert [r["train_loss"] for r in h.rows] == [r["train_loss"] for r in h_ref.rows]
    assert [r["val_loss"] for r in h.rows] == [r["val_loss"] for r in h_ref.rows]
    assert [r["lr"] for r in h.rows] == [r["lr"] for r in h_ref.rows]
    assert all(torch.equal(sd_ref[k], v) for k, v in model.state_dict().items())
    # the curves file holds the whole history once
    assert pd.read_csv(run.path / "curves.csv")["iteration"].tolist() == [r["iteration"] for r in h_ref.rows]


def test_session_limit_then_resume(tiny_cases, reference_run, tmp_path):
    _, h_ref, _ = reference_run
    run = RunFolder.create(tmp_path, "smoke", "test", "limited")
    trainer, _ = _tiny_trainer(tiny_cases, run=run, max_iterations_this_session=5)
    h = trainer.fit()
    assert not h.completed and h.iterations == 5
    trainer, _ = _tiny_trainer(tiny_cases, run=run)
    h = trainer.fit(resume=True)
    assert h.completed and h.rows[-1]["val_loss"] == h_ref.rows[-1]["val_loss"]
    trainer, _ = _tiny_trainer(tiny_cases, run=run)  # resuming a finished run changes nothing
    assert trainer.fit(resume=True).iterations == h_ref.iterations
    with pytest.raises(ParameterError, match="seed"):
        _tiny_trainer(tiny_cases, run=run, seed=9)[0].fit(resume=True)


def test_stages_freeze_and_switch_learning_rates(tiny_cases, reference_run):
    run, history, _ = reference_run
    seed_everything(0)
    model = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8, 16), dropout=0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    snap = {}

    def spy(trainer, event, info):
        if event == "stage_start" and info["stage"] == 1:
            snap.update({k: v.clone() for k, v in model.state_dict().items()})

    train = SliceDataset(tiny_cases[:3], ["T1"], ["GTVp"])
    Trainer(model, bce, train, batch_size=3, progress=False, callbacks=[spy],
            stages=[Stage("frozen-encoder", iterations=4, lr=1e-2, frozen=["down", "stem"]),
                    Stage("all", iterations=2, lr=1e-3)]).fit()
    enc = [k for k in before if k.startswith(("down", "stem")) and "running" not in k and "num_batches" not in k]
    dec = [k for k in before if k.startswith(("up", "head"))]
    assert all(torch.equal(before[k], snap[k]) for k in enc)            # frozen in stage 1
    assert any(not torch.equal(before[k], snap[k]) for k in dec)        # decoder trained
    assert any(not torch.equal(snap[k], model.state_dict()[k]) for k in enc)  # unfrozen in stage 2
    stages = [r["stage"] for r in history.rows]
    assert stages[0] == "warm" and stages[-1] == "all"
    assert history.rows[1]["lr"] == pytest.approx(0.9e-2)               # exponential decay
    with pytest.raises(ParameterError, match="no parameter name starts with 'encoder'"):
        Trainer(model, bce, train, iterations=1, frozen=["encoder"], progress=False).fit()


def test_stage_lr_scale_sets_per_layer_rates():
    """Plain SGD takes steps proportional to the rate, so a layer at lr_scale 0.25 moves exactly a
    quarter as far as it does at 1, from the same start on the same batch; the other layer moves alike."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(4, 1, 8, 8, generator=g)
    data = torch.utils.data.TensorDataset(xs, (xs > 0).float())

    def steps(**stage):
        seed_everything(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 1))
        start = [p.detach().clone() for p in model.parameters()]
        trainer = Trainer(model, bce, data, batch_size=4, iterations=1, optimizer="sgd", momentum=0.0, lr=0.1,
                          progress=False, **stage)
        trainer.fit()
        return [p.detach() - s for p, s in zip(model.parameters(), start)], trainer.optimizer.param_groups

    plain, _ = steps()
    scaled, groups = steps(lr_scale={"0.": 0.25})
    assert sorted(gr["lr"] for gr in groups) == pytest.approx([0.025, 0.1])
    for k, (a, b) in enumerate(zip(plain, scaled)):
        assert torch.count_nonzero(a) > 0
        torch.testing.assert_close(b, a * (0.25 if k < 2 else 1.0), rtol=1e-4, atol=1e-7)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 1))
    with pytest.raises(ParameterError, match="lr_scale names '2.'"):
        Stage("s", iterations=1, lr_scale={"2.": 0.5}).param_groups(model)
    with pytest.raises(ParameterError, match="lr_scale names '0.'"):  # frozen: not trainable
        stage = Stage("s", iterations=1, frozen=["0."], lr_scale={"0.": 0.5})
        stage.set_trainable(model)
        stage.param_groups(model)
    for bad in (0.0, -1.0, float("nan"), "x", True):
        with pytest.raises(ParameterError, match="lr_scale of '0.' must be a positive number"):
            Stage("s", iterations=1, lr_scale={"0.": bad})


def test_early_stopping_and_best_checkpoint(tiny_cases, tmp_path):
    run = RunFolder.create(tmp_path, "smoke", "test", "early")
    seed_everything(0)
    model = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8))
    train = SliceDataset(tiny_cases[:3], ["T1"], ["GTVp"])
    val = SliceDataset(tiny_cases[3:], ["T1"], ["GTVp"])
    h = Trainer(model, bce, train, val_data=val, batch_size=4, iterations=100, eval_every=1, lr=1e-9,
                early_stopping=2, min_delta=1.0, run=run, progress=False).fit()
    assert h.stopped_early == ["train"] and h.iterations == 3 and h.completed
    best = load_checkpoint(run.checkpoint_best)
    assert best["state"]["iteration"] == 1
    # restore_best="auto" with early stopping: the model holds the best weights
    assert all(torch.equal(best["model"][k], v) for k, v in model.state_dict().items())


def test_plain_dataset_and_iterations_per_epoch():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(10, 1, 8, 8, generator=g)
    ys = (xs > 0).float()
    data = torch.utils.data.TensorDataset(xs, ys)
    seed_everything(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    h = Trainer(model, bce, data, batch_size=4, epochs=2, iterations_per_epoch=5, lr=0.1,
                progress=False).fit()
    assert h.iterations == 10 and [r["epoch"] for r in h.rows] == [1.0, 2.0]
    assert h.rows[-1]["train_loss"] < h.rows[0]["train_loss"] and h.rows[0]["throughput"] > 0


def test_nan_loss_fails_clearly():
    data = torch.utils.data.TensorDataset(torch.full((4, 1, 4, 4), float("nan")), torch.zeros(4, 1, 4, 4))
    with pytest.raises(FloatingPointError, match="training loss is nan"):
        Trainer(torch.nn.Conv2d(1, 1, 1), bce, data, batch_size=2, iterations=2, progress=False).fit()


# ----------------------------------------------------------------------------- inference
def test_sliding_window_equals_whole_volume_for_pointwise_model():
    torch.manual_seed(0)
    model = torch.nn.Conv3d(2, 3, 1)
    image = np.random.default_rng(0).normal(size=(2, 13, 30, 27)).astype(np.float32)
    whole = torch.sigmoid(model(torch.from_numpy(image)[None]))[0].detach().numpy()
    for blend, overlap in (("gaussian", 0.5), ("constant", 0.25), ("gaussian", 0.0)):
        sw = predict_sliding_window(model, image, (8, 16, 16), overlap=overlap, blend=blend, batch_size=3)
        assert sw.shape == (3, 13, 30, 27)
        np.testing.assert_allclose(sw, whole, rtol=0, atol=2e-6)
    small = predict_sliding_window(model, image[:, :4, :10, :9], (8, 16, 16))  # padded and cropped back
    np.testing.assert_allclose(small, whole[:, :4, :10, :9], atol=2e-6)


class _Ones(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 1) + tuple(x.shape[2:]), 1.0)


def test_blending_weights_normalise():
    prob = predict_sliding_window(_Ones(), np.zeros((1, 11, 23, 19), np.float32), (6, 10, 10),
                                  overlap=0.6, activation=None)
    np.testing.assert_allclose(prob, 1.0, atol=1e-6)
    w = gaussian_weights((7, 9, 9))
    assert w.max() == pytest.approx(1.0) and w[3, 4, 4] == w.max() and w.min() > 0
    np.testing.assert_allclose(w, w[::-1, ::-1, ::-1])
    for size, patch, step in ((30, 16, 8), (16, 16, 8), (17, 16, 1), (100, 7, 3)):
        s = window_starts(size, patch, step)
        assert s[0] == 0 and s[-1] == size - patch and all(b - a <= step for a, b in zip(s, s[1:]))


def test_inference_runs_channels_last_and_leaves_the_model_as_it_was():
    from npcrepro.engine.device import channels_last_model, conv_memory_format

    torch.manual_seed(0)
    net3d = build("unet3d", in_channels=1, n_classes=1, widths=[4, 8]).eval()
    net2d = build("unet2d", in_channels=1, n_classes=1, widths=[4, 8]).eval()
    assert conv_memory_format(net3d) is torch.channels_last_3d
    assert conv_memory_format(net2d) is torch.channels_last
    assert conv_memory_format(torch.nn.Linear(2, 2)) is None
    image = np.random.default_rng(2).normal(size=(1, 8, 16, 16)).astype(np.float32)
    for net, run in ((net3d, lambda m, **k: predict_sliding_window(m, image, (8, 16, 16), **k)),
                     (net2d, lambda m, **k: predict_slices(m, image, **k)),
                     (net2d, lambda m, **k: predict_slice_tiles(m, image, (8, 8), **k))):
        plain = run(net, channels_last=False)
        fast = run(net, channels_last=True)
        np.testing.assert_allclose(fast, plain, atol=1e-5)
        assert all(p.is_contiguous() for p in net.parameters())  # converted back afterwards
    fmt = torch.channels_last_3d
    net3d.to(memory_format=fmt)  # a model already channels-last (as the Trainer leaves it) stays so
    with channels_last_model(net3d) as got:
        assert got is fmt
    assert all(p.is_contiguous(memory_format=fmt) for p in net3d.parameters() if p.dim() == 5)


def test_trainer_keeps_conv_models_channels_last_on_every_device():
    data = torch.utils.data.TensorDataset(torch.randn(4, 1, 8, 8), torch.zeros(4, 1, 8, 8))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Conv2d(2, 1, 1))
    Trainer(net, bce, data, batch_size=2, iterations=2, progress=False, device="cpu").fit()
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    Trainer(net, bce, data, batch_size=2, iterations=2, progress=False, device="cpu",
            channels_last=False).fit()
    assert net[0].weight.is_contiguous()


def test_predict_slices_matches_direct_calls():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 3, padding=1)
    image = np.random.default_rng(1).normal(size=(1, 5, 12, 12)).astype(np.float32)
    out = predict_slices(model, image, batch_size=2, context=1, activation="softmax")
    z = 0
    stack = np.concatenate([image[:, [0]], image[:, [0]], image[:, [1]]], axis=1)  # edge repeated
    direct = torch.softmax(model(torch.from_numpy(stack)), dim=1)[0].detach().numpy()
    np.testing.assert_allclose(out[:, z], direct, atol=1e-6)
    assert out.shape == (2, 5, 12, 12)
    with pytest.raises(DataError):
        predict_slices(model, image[0])


class _ImageMean(torch.nn.Module):
    """(N, C, y, x) -> (N, 1, y, x): each input's own mean everywhere, the way image pooling sees it."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[2:])


def test_slice_tiles_show_each_window_what_a_training_crop_showed():
    image = np.zeros((1, 3, 8, 16), np.float32)
    image[..., 8:] = 1.0
    whole = predict_slices(_ImageMean(), image, activation=None, channels_last=False)
    tiles = predict_slice_tiles(_ImageMean(), image, (8, 8), overlap=0.0, activation=None)
    assert np.allclose(whole, 0.5)  # the whole slice's mean, a statistic no 8 x 8 crop ever had
    assert np.allclose(tiles[..., :8], 0.0) and np.allclose(tiles[..., 8:], 1.0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 2, 1)  # pointwise: tiling, overlap and blending change nothing
    rand = np.random.default_rng(0).normal(size=(1, 3, 20, 28)).astype(np.float32)
    np.testing.assert_allclose(predict_slice_tiles(conv, rand, (8, 12), overlap=0.5),
                               predict_slices(conv, rand), atol=1e-6)
    via_case = predict_case(_ImageMean(), Case("c", {"T1": image[0]}, {}, (1.0, 1.0, 1.0)), ["T1"],
                            mode="2d", patch_size=(8, 8), overlap=0.0, activation=None, normalise=None)
    np.testing.assert_allclose(via_case, tiles)
    with pytest.raises(ParameterError, match="tile must be 2 positive ints"):
        predict_slice_tiles(conv, rand, (8, 8, 8))


def test_predict_case_maps_back_to_the_original_grid():
    from npcrepro.transforms import preprocess

    case = blob_case(0, (8, 32, 32))
    small, record = preprocess(case, crop_to_structure="GTVp", margin=1)
    model = _Ones()
    prob = predict_case(model, small, ["T1"], preprocessed=record, activation=None)
    assert prob.shape == (1,) + case.shape
    inside = np.zeros(case.shape, bool)
    inside[tuple(slice(a, b) for a, b in record.box)] = True
    assert (prob[0][inside] == 1).all() and (prob[0][~inside] == 0).all()
    prob3 = predict_case(torch.nn.Conv3d(1, 1, 1), case, ["T1"], mode="3d", patch_size=(4, 16, 16))
    assert prob3.shape == (1,) + case.shape
    with pytest.raises(ParameterError):
        predict_case(model, case, ["T1"], mode="3d")


# ----------------------------------------------------------------------------- run folders
def test_run_folder_layout(reference_run, tmp_path):
    run, history, _ = reference_run
    names = {p.name for p in run.path.iterdir()}
    assert {"environment.json", "curves.csv", "checkpoint_last.pt", "checkpoint_best.pt"} <= names
    rel = run.path.relative_to(run.path.parents[2])
    assert rel.parts[:2] == ("smoke", "test") and rel.parts[2].endswith("-ref")
    env = json.loads((run.path / "environment.json").read_text(encoding="utf-8"))
    assert {"python", "torch", "numpy", "npcrepro", "git", "device", "cpu", "gpu", "hostname"} <= set(env)
    curves = pd.read_csv(run.path / "curves.csv")
    assert list(curves.columns[:7]) == ["iteration", "epoch", "stage", "lr", "train_loss", "val_loss",
                                        "throughput"]
    ck = load_checkpoint(run.checkpoint_last)
    assert {"model", "optimizer", "schedule", "scaler", "rng", "state", "history"} <= set(ck)
    assert {"python", "numpy", "torch"} <= set(ck["rng"][0])
    # never overwrite: the same stamp twice gives a suffix
    a = RunFolder.create(tmp_path, "cpu", "p", "x", stamp="20240101-000000", params={"seed": 1})
    b = RunFolder.create(tmp_path, "cpu", "p", "x", stamp="20240101-000000")
    assert a.path != b.path and b.path.name.endswith("-2")
    assert a.read_params() == {"seed": 1}
    a.write_summary({"dice": np.float32(0.5), "bad": float("nan")})
    assert a.read_summary() == {"dice": 0.5, "bad": None}
    a.write_prediction("case1", "GTVp", np.ones((2, 3, 4), bool), blob_case(0, (2, 3, 4)).geometry)
    assert a.read_prediction("case1", "GTVp").dtype == np.uint8
    with pytest.raises(DataError, match="not found"):
        RunFolder.open(tmp_path / "nope")
    with pytest.raises(DataError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_run_folder_from_params_and_resume_checks(tmp_path):
    P = profiles.resolve("template", "smoke", out_dir=str(tmp_path))
    run = RunFolder.from_params(P, "unet2d")
    assert run.path.parent == tmp_path / "smoke" / "template"
    assert run.read_params()["seed"] == P.seed
    same = RunFolder.from_params(P.replace(resume=str(run.path)), "unet2d")
    assert same.path == run.path
    with pytest.raises(ParameterError, match="parameter 'seed' was 0, now 5"):
        RunFolder.from_params(P.replace(resume=str(run.path), seed=5))
    with pytest.raises(DataError, match="run folder not found"):
        RunFolder.from_params(P.replace(resume=str(tmp_path / "nope")))


class _Poison:
    """Unpickling this runs ``exec``: it writes ``target``. A shared checkpoint could hold it."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return exec, (f"open({self.target!r}, 'w').write('pwned')",)


def test_poisoned_checkpoint_is_refused_and_never_runs(tiny_cases, reference_run, tmp_path):
    run, _, _ = reference_run
    target = tmp_path / "pwned.txt"
    ck = torch.load(run.checkpoint_last, weights_only=True)
    ck["state"]["payload"] = _Poison(target)
    evil = RunFolder.create(tmp_path, "smoke", "test", "evil")
    torch.save(ck, evil.checkpoint_last)
    with pytest.raises(DataError, match="refused: .*builtins.exec.*weights_only=True") as err:
        load_checkpoint(evil.checkpoint_last)
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="refused"):
        _tiny_trainer(tiny_cases, run=evil)[0].fit(resume=True)
    assert not target.exists()


def test_checkpoint_holds_only_safe_types_and_old_format_is_named(reference_run, tmp_path):
    run, _, _ = reference_run
    ck = torch.load(run.checkpoint_last, weights_only=True)  # the real test: no unsafe global
    assert ck["format"] == 2 and torch.is_tensor(ck["rng"][0]["numpy"]["keys"])
    old = dict(ck, format=1)
    old["rng"] = [{"python": __import__("random").getstate(), "numpy": np.random.get_state(),
                   "torch": torch.get_rng_state()}]
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(DataError, match="older npcrepro \\(format 1"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({"format": 1}, tmp_path / "v1.pt")
    with pytest.raises(DataError, match="format 1\\); retrain"):
        load_checkpoint(tmp_path / "v1.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_failed_runs_are_marked_failed(tmp_path):
    run = RunFolder.create(tmp_path, "smoke", "t", "nan")
    assert run.status == "running"
    data = torch.utils.data.TensorDataset(torch.full((4, 1, 4, 4), float("nan")), torch.zeros(4, 1, 4, 4))
    with pytest.raises(FloatingPointError):
        Trainer(torch.nn.Conv2d(1, 1, 1), bce, data, batch_size=2, iterations=2, progress=False,
                run=run).fit()
    assert run.status == "failed" and not (run.path / "RUNNING").exists()
    assert "FloatingPointError: training loss is nan" in (run.path / "FAILED").read_text(encoding="utf-8")

    run.mark_done()
    assert run.status == "done" and not (run.path / "FAILED").exists()


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_a_process_that_ends_before_done_leaves_its_run_failed(tmp_path, how):
    import subprocess
    import sys

    script = ("import os, signal, sys\n"
              "from npcrepro.engine import RunFolder\n"
              f"run = RunFolder.create({str(tmp_path)!r}, 'smoke', 't', 'x')\n"
              "print(run.path, flush=True)\n"
              + ("os.kill(os.getpid(), signal.SIGKILL)\n" if how == "kill" else "sys.exit(1)\n"))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(__import__("os").environ, PYTHONPATH=str(Path(__file__).parents[1])))
    run = RunFolder(proc.stdout.strip())
    assert run.path.is_dir() and run.status == "failed", proc.stderr
    assert (run.path / "FAILED").exists() == (how == "exit")


# ----------------------------------------------------------------------------- dispatch
def _tiny_notebook(path: Path, body: str) -> str:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                             new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                               "language": "python"}})
    nbformat.write(nb, str(path))
    return str(path)


def test_run_jobs_process_pool_and_errors(tmp_path):
    ok = _tiny_notebook(tmp_path / "ok.ipynb", "assert x == 2")
    jobs = [Job(ok, str(tmp_path / "out" / "a.ipynb"), {"x": 2}),
            Job(ok, str(tmp_path / "out" / "b.ipynb"), {"x": 3})]
    res = run_jobs(jobs, max_workers=2, progress=False)
    assert [r.ok for r in res] == [True, False]
    assert (tmp_path / "out" / "a.ipynb").exists()
    assert res[1].error.startswith("AssertionError") and "\n" not in res[1].error
    with pytest.raises(ParameterError, match="valid"):
        run_jobs(jobs, backend="ray")
    for backend, module in (("dask", "dask"), ("submitit", "submitit")):
        try:
            __import__(module)
        except ImportError:
            with pytest.raises(ParameterError, match="pip install"):
                run_jobs(jobs, backend=backend)


def _signal_job(item):
    """A picklable job ``(name, folder)``: "c" leaves a file "c" in the folder; "b" waits up to 60 s
    for that file and returns whether it came; the others return at once."""
    import time

    name, folder = item
    if name == "c":
        (Path(folder) / "c").touch()
    if name == "b":
        t0 = time.time()
        while not (Path(folder) / "c").exists():
            if time.time() - t0 > 60:
                return False
            time.sleep(0.05)
    return True


def test_map_calls_starts_a_job_when_its_own_needs_are_done(tmp_path):
    from npcrepro.engine.dispatch import map_calls

    # "c" needs "a" only. With no barrier it runs while "b" still works, and "b" sees its file; with
    # a barrier after the first level, "c" could start only after "b" gave up waiting.
    items = [("a", str(tmp_path)), ("b", str(tmp_path)), ("c", str(tmp_path))]
    out = [(k[0], v) for k, v in map_calls(_signal_job, items, "process", workers=2, needs=[[], [], [0]])]
    assert dict(out) == {"a": True, "b": True, "c": True}
    assert [k for k, _ in out].index("c") < [k for k, _ in out].index("b")
    order = [k[0] for k, _ in map_calls(_signal_job, [("x", ""), ("y", "")], "serial", needs=[[1], []])]
    assert order == ["y", "x"]
    with pytest.raises(ParameterError, match="cycle"):
        list(map_calls(_signal_job, [("x", ""), ("y", "")], "serial", needs=[[1], [0]]))
    with pytest.raises(ParameterError, match="not in the list"):
        list(map_calls(_signal_job, [("x", "")], "serial", needs=[[3]]))


# ----------------------------------------------------------------------------- profiles and parameters
def test_resolve_profiles_and_overrides():
    P = profiles.resolve("template", "smoke", seed=3, lr=1)
    assert P.profile == "smoke" and P.seed == 3 and P.lr == 1.0 and isinstance(P.lr, float)
    assert P["device"] == "cpu" and P.paper == "template"
    cpu = profiles.resolve("template")
    assert cpu.iterations > P.iterations
    assert profiles.resolve("template", "smoke", iterations=None).iterations == P.iterations
    with pytest.raises(AttributeError):
        P.seed = 4
    assert P.replace(seed=5).seed == 5
    assert profiles.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("kwargs, match", [
    ({"foo": 1}, "unknown parameter 'foo' for template \\(valid: profile, data, device, seed"),
    ({"profile": "huge"}, "unknown profile 'huge' for template \\(valid: smoke, cpu, gpu, gpu-lite\\)"),
    ({"iterations": "many"}, "'iterations' of template must be int"),
    ({"seed": -1}, "'seed' must be an int in \\[0, 4294967295\\]"),
    ({"channel": "PET"}, "must be one of"),
    ({"device": "tpu"}, "device"),
    ({"n_cases": -1}, "'n_cases' of template must be >= 1, got -1"),
    ({"iterations": 0}, "'iterations' of template must be >= 1, got 0"),
    ({"lr": 0.0}, "'lr' of template must be > 0, got 0.0"),
    ({"widths": [8, 0]}, "'widths' of template must be >= 1, got \\[8, 0\\] \\(item 0\\)"),
])
def test_bad_parameters_fail_in_one_line(kwargs, match):
    with pytest.raises(ParameterError, match=match) as err:
        profiles.resolve("template", **kwargs)
    assert "\n" not in str(err.value)


def test_every_registered_profile_is_within_the_ranges():
    for paper in profiles.papers():
        for prof in profiles.profiles(paper):
            profiles.resolve(paper, prof)
    assert profiles.size_range("luo2020", "real_cases") == (0, None)  # 0 is registered: no track
    assert profiles.size_range("template", "n_cases") == (1, None)


def test_paths_are_absolute_in_params_json(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    P = profiles.resolve("template", "smoke", data="./mine", out_dir="out")
    assert P.data == str(tmp_path / "mine") and P.out_dir == str(tmp_path / "out")
    assert profiles.resolve("template", "smoke").data == "phantom"
    run = RunFolder.from_params(P, "x")
    assert run.read_params()["out_dir"] == str(tmp_path / "out")
    assert run.path.parent == tmp_path / "out" / "smoke" / "template"
    assert profiles.absolute_paths({"run": "leaderboard/2024-x", "resume": ""}, tmp_path) == \
        {"run": "leaderboard/2024-x", "resume": ""}  # a label, and a word, stay as they are


def test_unknown_paper_and_registration(monkeypatch):
    with pytest.raises(ParameterError, match="unknown paper 'nope'"):
        profiles.resolve("nope")
    profiles.papers()  # the registry loaded, then a copy that the test may change
    monkeypatch.setattr(profiles, "_SIZES", dict(profiles._SIZES))
    profiles.register_profile("_testpaper", "smoke", n_cases=2, epochs=1)
    profiles.register_profile("_testpaper", "cpu", n_cases=8, epochs=10, width=None)
    assert profiles.profiles("_testpaper") == ["smoke", "cpu"]
    assert profiles.resolve("_testpaper", "smoke").width is None
    with pytest.raises(ParameterError, match="common parameters"):
        profiles.register_profile("_testpaper", "cpu", seed=1)


def test_notebook_params_rejects_injected_unknown_names():
    ns = {"np": np, "json": json}
    before = set(ns)
    ns.update(profile="smoke", data="phantom", device="auto", seed=0, out_dir="runs")
    ns.update(seed=2, iterations=5, _=None, helper=lambda: 1)  # papermill's injected cell
    P = profiles.notebook_params("template", ns, before)
    assert P.seed == 2 and P.iterations == 5 and P.profile == "smoke"
    ns["foo"] = 1
    with pytest.raises(ParameterError, match="unknown parameter 'foo' \\(valid: profile, data"):
        profiles.notebook_params("template", ns, before)


def test_load_data_bad_path_is_one_line_data_error(tmp_path):
    P = profiles.resolve("template", "smoke", data=str(tmp_path / "missing"))
    with pytest.raises(DataError) as err:
        profiles.load_data(P)
    assert "missing" in str(err.value) and "\n" not in str(err.value)


def _fake_generate(calls):
    """Stands in for phantom.generate: tiny blob cases, recorded like the real generator's."""
    import npcrepro.phantom as phantom

    def generate(out_dir, n_cases, seed, *, preset="smoke", progress=True, overwrite=False, **params):
        calls.append((n_cases, seed, preset))
        return write_dataset(out_dir, [blob_case(i, (4, 16, 16), f"ph{i}") for i in range(n_cases)],
                             channels=["T1", "CT"], structures=["GTVp"],
                             extra=phantom.cohort_record(n_cases, seed, preset, **params))
    return generate


def test_load_data_generates_and_caches_the_phantom(tmp_path, monkeypatch):
    import npcrepro.phantom as phantom

    calls = []
    monkeypatch.setattr(phantom, "generate", _fake_generate(calls), raising=False)
    P = profiles.resolve("template", "smoke", out_dir=str(tmp_path), seed=7)
    ds = profiles.load_data(P)
    assert len(ds) == P.n_cases and calls == [(P.n_cases, 7, "smoke")]
    assert ds.root == profiles.phantom_cache_dir(P, "smoke", P.n_cases)
    again = profiles.load_data(P)
    assert again.root == ds.root and len(calls) == 1  # reused
    profiles.load_data(P, n_cases=2)
    assert len(calls) == 2


def test_phantom_cache_is_made_again_when_the_generator_or_a_parameter_changes(tmp_path, monkeypatch):
    import npcrepro.phantom as phantom
    import npcrepro.phantom.make as make

    calls = []
    monkeypatch.setattr(phantom, "generate", _fake_generate(calls), raising=False)
    P = profiles.resolve("template", "smoke", out_dir=str(tmp_path), seed=7)
    first = profiles.load_data(P).root
    extra = json.loads((first / "dataset.json").read_text(encoding="utf-8"))["npcrepro"]["extra"]
    assert extra["generator_fingerprint"] == phantom.generator_fingerprint()
    assert extra["params"]["ct_noise_hu"] == phantom.DEFAULTS["ct_noise_hu"]  # every parameter
    assert profiles.load_data(P, ct_noise_hu=1.0).root != first and len(calls) == 2
    # the generator's code changes (an edit of any of its sources): the old cache is not reused
    monkeypatch.setattr(make, "generator_fingerprint", lambda: "edited-sources")
    assert profiles.load_data(P).root != first and len(calls) == 3
    monkeypatch.undo()
    monkeypatch.setattr(phantom, "generate", _fake_generate(calls), raising=False)
    # a cache whose record does not match what its name promises is made again, in place
    meta = json.loads((first / "dataset.json").read_text(encoding="utf-8"))
    meta["npcrepro"]["extra"]["generator_version"] = 0
    (first / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    again = profiles.load_data(P)
    assert again.root == first and len(calls) == 4
    assert again.meta["npcrepro"]["extra"]["generator_version"] == phantom.GENERATOR_VERSION
    # no temporary folder is left; each cohort's lock file stays (see paths.build_once)
    assert sorted(p.name for p in first.parent.iterdir()
                  if p.name.startswith(".") and not p.name.endswith(".lock")) == []


def test_generator_fingerprint_changes_with_any_edit_of_its_sources(tmp_path, monkeypatch):
    import shutil

    import npcrepro.phantom.make as make

    copy = tmp_path / "npcrepro"
    shutil.copytree(make._PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(make, "_PACKAGE", copy)
    fingerprints = []
    for edited in (None, "phantom/scanners.py", "datasets/format.py", "io.py"):
        if edited:
            with open(copy / edited, "a", encoding="utf-8") as fh:
                fh.write("\n# an edit\n")
        make.generator_fingerprint.cache_clear()
        fingerprints.append(make.generator_fingerprint())
    (copy / "viz" / "runs.py").write_text("# not the generator", encoding="utf-8")
    make.generator_fingerprint.cache_clear()
    assert make.generator_fingerprint() == fingerprints[-1]
    make.generator_fingerprint.cache_clear()
    assert len(set(fingerprints)) == 4


# ----------------------------------------------------------------------------- the template notebook
@pytest.mark.slow
def test_template_notebook_runs_at_smoke_profile(run_notebook, run_folder):
    nb = run_notebook("template")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    match = re.search(r"run folder: (\S+)", text)
    assert match, text[-2000:]
    run = run_folder(match.group(1))
    assert run.parts[-4:-1] == ("runs", "smoke", "template")
    names = {p.name for p in run.iterdir()}
    assert {"params.json", "environment.json", "run.json", "splits.json", "metrics.csv", "training.csv",
            "unet2d", "DONE"} <= names
    job = run / "unet2d" / "fold_0" / "seed_0"
    assert {"curves.csv", "checkpoint_last.pt", "checkpoint_best.pt", "model.pt", "predictions"} <= {
        p.name for p in job.iterdir()}
    assert json.loads((run / "params.json").read_text(encoding="utf-8"))["profile"] == "smoke"
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name") for o in outputs}
    assert {"template_dice", "template_n_test"} <= glued


def test_template_notebook_is_committed_clean():
    import nbformat

    nb = nbformat.read(str(Path(__file__).parent.parent / "notebooks" / "template.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.get("id") != "npcrepro-setup"]  # Binder/Colab
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "_before = set(globals())" in code[0].source
    assert "parameters" in code[1].metadata.get("tags")
    assert "%matplotlib inline" in code[0].source
    for name, value in (("profile", '"cpu"'), ("data", '"phantom"'), ("device", '"auto"'),
                        ("seed", "0"), ("out_dir", '"runs"')):
        assert f"{name}: " in code[1].source and f" = {value}  #" in code[1].source.split(f"{name}: ")[1].split("\n")[0]
    assert "MPLBACKEND" not in json.dumps(nb)


def test_engine_benchmark_quick_runs(monkeypatch, capsys):
    from conftest import load_benchmark

    bench = load_benchmark("engine")
    monkeypatch.setattr(bench, "SIZE", 32)
    monkeypatch.setattr(bench, "DEPTH", 4)
    out = bench.main(quick=True, compile=False)
    assert out["train_bare_eager_sps"] > 0 and out["train_engine_eager_sps"] > 0
    assert out["infer_eager_ms_per_slice"] > 0 and "engine_overhead (bare/engine)" in out["ratios"]
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "ratio to matmul" in printed
    nets = {r["network"]: r for r in out["networks"]}
    assert {"mmfnet", "unet3d_cet1", "li2018_cnn"} <= set(nets)
    for r in nets.values():
        assert r["ms_per_iteration"] > 0 and r["gflop_per_iteration"] > 0
        assert r["ratio_to_matmul"] == pytest.approx(r["gflops"] / r["matmul_gflops"])
        assert 0 < r["conv_share"] <= 1


def test_environment_reads_package_versions_without_importing_them():
    """environment.json's versions come from the installed packages' metadata; a package is not
    imported for its version (monai took seconds per run folder)."""
    import subprocess
    import sys
    from importlib.metadata import version

    code = ("import sys; from npcrepro.engine.runs import environment; e = environment(); "
            "print(e['monai'], e['scipy'], e['SimpleITK'], 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [version("monai"), version("scipy"), version("SimpleITK"), "False"]


# ----------------------------------------------------------------------------- hard negatives
def _case_with_node(seed: int = 0) -> Case:
    """A 'tumour' blob and a 'node' blob far from it (the node: a hard negative, never a target)."""
    case = blob_case(seed, shape=(8, 48, 48))
    node = np.zeros(case.shape, bool)
    node[2:6, 38:44, 38:44] = True
    tumour = case.labels["GTVp"] & ~np.pad(np.ones((8, 12, 12), bool), ((0, 0), (36, 0), (36, 0)))
    return Case(case.name, case.images, {"GTVp": tumour, "GTVnd": node}, case.spacing)


def _holds(box, mask) -> bool:
    return bool(T.crop(mask, box).any())


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_hard_negatives_place_the_other_samples_on_the_named_structure(dims):
    """With fg_prob 0 and negative_prob 1 every training sample holds a node voxel (and never one
    drawn from nowhere); with negative_prob 0 the draws are those of a dataset without negatives."""
    case = _case_with_node()
    node = case.labels["GTVnd"]
    if dims == "3d":
        ds = PatchDataset([case], ["T1"], ["GTVp"], (4, 8, 8), samples_per_case=50, fg_prob=0.0,
                          negatives=["GTVnd"], negative_prob=1.0)
        boxes = [ds._plan(i, np.random.default_rng(i))[1] for i in range(50)]
        assert all(_holds(b, node) for b in boxes)
        plain = PatchDataset([case], ["T1"], ["GTVp"], (4, 8, 8), samples_per_case=50, fg_prob=0.3)
        same = PatchDataset([case], ["T1"], ["GTVp"], (4, 8, 8), samples_per_case=50, fg_prob=0.3,
                            negatives=["GTVnd"], negative_prob=0.0)
        assert [plain._plan(i, np.random.default_rng(i)) for i in range(50)] == \
               [same._plan(i, np.random.default_rng(i)) for i in range(50)]
    else:
        ds = SliceDataset([case], ["T1"], ["GTVp"], slices="all", size=(16, 16), random_crop=True,
                          crop_fg_prob=0.0, negatives=["GTVnd"], negative_prob=1.0)
        for i, (_, z) in enumerate(ds.items):
            box = ds._box(i, np.random.default_rng(i))
            if node[z].any():
                assert _holds(box, node[z])
        plain = SliceDataset([case], ["T1"], ["GTVp"], slices="all", size=(16, 16), random_crop=True)
        same = SliceDataset([case], ["T1"], ["GTVp"], slices="all", size=(16, 16), random_crop=True,
                            negatives=["GTVnd"], negative_prob=0.0)
        assert [plain._box(i, np.random.default_rng(i)) for i in range(len(plain))] == \
               [same._box(i, np.random.default_rng(i)) for i in range(len(same))]


def test_hard_negatives_share_and_refusals():
    """negative_prob is the share of all samples placed on a negative (fg_prob of them on tumour);
    a target named as a hard negative, or a share outside [0, 1], is refused in one line; a patient
    without the structure gets uniform samples."""
    case = _case_with_node(1)
    ds = PatchDataset([case], ["T1"], ["GTVp"], (4, 8, 8), samples_per_case=1, fg_prob=0.25,
                      negatives=["GTVnd"], negative_prob=0.5)
    plain = PatchDataset([case], ["T1"], ["GTVp"], (4, 8, 8), samples_per_case=1, fg_prob=0.25)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    share = np.mean([_holds(ds._plan(0, rng_a)[1], case.labels["GTVnd"]) for _ in range(2000)])
    base = np.mean([_holds(plain._plan(0, rng_b)[1], case.labels["GTVnd"]) for _ in range(2000)])
    assert base < 0.2 and abs(share - (0.5 + 0.25 * base)) < 0.05  # negatives, plus uniform boxes that hit
    with pytest.raises(ParameterError, match="both a target and a hard negative"):
        PatchDataset([case], ["T1"], ["GTVp"], (4, 8, 8), negatives=["GTVp"], negative_prob=0.5)
    with pytest.raises(ParameterError, match="negative_prob"):
        SliceDataset([case], ["T1"], ["GTVp"], negatives=["GTVnd"], negative_prob=1.5)
    bare = Case("bare", case.images, {"GTVp": case.labels["GTVp"]}, case.spacing)
    ds = PatchDataset([bare], ["T1"], ["GTVp"], (4, 8, 8), fg_prob=0.0, negatives=["GTVnd"],
                      negative_prob=1.0)
    assert ds.negatives == [None]
    ds._plan(0, np.random.default_rng(0))  # uniform, no error


def test_messages_say_what_is_wrong(tmp_path):
    """Resuming another chapter's run says so (not which parameter differs first); a raw pickle is
    named as such, in full words."""
    import pickle

    P = profiles.resolve("template", "smoke", out_dir=str(tmp_path))
    run = RunFolder.from_params(P, "x", paper="template")
    other = profiles.resolve("li2018", "smoke", out_dir=str(tmp_path), resume=str(run.path))
    with pytest.raises(ParameterError, match=r"it is a run of template, not of li2018$"):
        RunFolder.from_params(other, "x", paper="li2018")
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"model": [1.0, 2.0] * 200}))
    with pytest.raises(DataError) as err:
        load_checkpoint(raw)
    assert str(err.value).endswith("a raw pickle or another format), so it is not loaded")


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_file(tiny_cases, tmp_path, monkeypatch):
    """A full disk (ENOSPC while torch.save writes) fails the run and leaves neither a temporary
    checkpoint nor a RUNNING marker without FAILED."""
    import errno

    run = RunFolder.create(tmp_path, "smoke", "t", "full")
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # the bytes go down, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    trainer, _ = _tiny_trainer(tiny_cases, run=run)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    assert not list(run.path.glob(".*.tmp*")) and not list(run.path.glob("checkpoint_*.pt"))
    assert run.status == "failed" and (run.path / "FAILED").exists() and not (run.path / "RUNNING").exists()
