"""li2018: the Table 1 network, stepwise training, the paper's augmentation, the chapter notebook."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import npcrepro.models.score_fusion_fcn  # noqa: F401 - registers score_fusion_fcn
from chapter_contract import ChapterContract
from npcrepro.errors import DataError, ParameterError
from npcrepro.models import build
from npcrepro.models.score_fusion_fcn import STAGE_LAYERS, TABLE1, ScoreFusionFCN
from npcrepro.chapters.li2018 import methods as M
from npcrepro.chapters.li2018 import prepare as D
from npcrepro.chapters.li2018 import report as R

torch.set_num_threads(2)


# ----------------------------------------------------------------------------------------- Table 1
def test_every_layer_shape_matches_table1():
    net = build("score_fusion_fcn")
    trace = net.layer_shapes(144)
    assert [name for name, _ in trace] == [row[1] for row in TABLE1]
    for (name, shape), row in zip(trace, TABLE1):
        assert shape == row[5], f"{name}: {shape} != Table 1's {row[5]}"


def test_table1_shapes_spelled_out():
    shapes = dict(build("score_fusion_fcn").layer_shapes(144))
    assert shapes["Conv1"] == (80, 144, 144)
    assert shapes["Pool1"] == (80, 72, 72)
    assert shapes["Conv2"] == (120, 72, 72)
    assert shapes["Pool2"] == (120, 36, 36)
    assert shapes["Conv3"] == (500, 36, 36)
    assert shapes["Conv4"] == (300, 36, 36)
    assert shapes["Conv5"] == (100, 36, 36)
    assert shapes["Conv6"] == (1, 36, 36)
    assert shapes["Deconv1"] == (1, 72, 72)
    assert shapes["Concat1"] == (121, 72, 72)
    assert shapes["Conv7"] == (1, 72, 72)
    assert shapes["Deconv2"] == (1, 144, 144)
    assert shapes["Concat2"] == (81, 144, 144)
    assert shapes["Conv8"] == (1, 144, 144)


def test_kernels_strides_paddings_match_table1():
    net = ScoreFusionFCN()
    layers = {"Conv1": net.conv1, "Conv2": net.conv2, "Conv3": net.conv3, "Conv4": net.conv4,
              "Conv5": net.conv5, "Conv6": net.conv6, "Deconv1": net.deconv1, "Conv7": net.conv7,
              "Deconv2": net.deconv2, "Conv8": net.conv8, "Pool1": net.pool1, "Pool2": net.pool2}
    for block, name, k, s, p, _ in TABLE1:
        if name not in layers:
            continue
        m = layers[name]
        ks = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        st = m.stride if isinstance(m.stride, int) else m.stride[0]
        assert (ks, st) == (k, s), name
        if p is not None:
            pad = m.padding if isinstance(m.padding, int) else m.padding[0]
            assert pad == p, name


def test_stage_outputs_and_intermediate_maps():
    net = ScoreFusionFCN(width=0.25)
    x = torch.randn(2, 1, 144, 144)
    assert net(x, stage=1).shape == (2, 1, 36, 36)
    assert net(x, stage=2).shape == (2, 1, 72, 72)
    assert net(x, stage=3).shape == (2, 1, 144, 144)
    maps = net(x, maps=True)
    assert {k: tuple(v.shape[-2:]) for k, v in maps.items()} == {
        "score36": (36, 36), "deconv72": (72, 72), "score72": (72, 72),
        "deconv144": (144, 144), "score144": (144, 144)}
    assert torch.equal(maps["score144"], net(x))
    assert set(net(x, stage=1, maps=True)) == {"score36"}


def test_forward_backward_2d_batch():
    torch.manual_seed(0)
    net = build("score_fusion_fcn", width=0.25)
    x = torch.randn(3, 1, 144, 144, requires_grad=True)
    y = net(x)
    assert y.shape == (3, 1, 144, 144)
    torch.nn.functional.binary_cross_entropy_with_logits(y, (torch.rand_like(y) > 0.8).float()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_other_sizes_and_bad_input():
    net = ScoreFusionFCN(width=0.125)
    assert net(torch.randn(1, 1, 64, 96)).shape == (1, 1, 64, 96)
    with pytest.raises(ParameterError):
        net(torch.randn(1, 1, 66, 64))
    with pytest.raises(ParameterError):
        net(torch.randn(1, 1, 64, 64), stage=4)
    with pytest.raises(ParameterError):
        build("score_fusion_fcn", init="uniform")


def test_initialisations():
    torch.manual_seed(0)
    g = ScoreFusionFCN(width=0.25, init="gaussian")
    assert abs(float(g.conv3.weight.detach().std()) - 1.0) < 0.05  # the paper's N(0, 1)
    k = ScoreFusionFCN(width=0.25, init="kaiming")
    # fusion convs start as the identity on the upsampled score channel
    w7 = k.conv7.weight.detach()
    assert float(w7[0, 0]) == 1.0 and float(w7[0, 1:].abs().sum()) == 0.0
    x = torch.randn(1, 1, 144, 144)
    m = k(x, maps=True)
    assert torch.allclose(m["score72"], m["deconv72"])


# ----------------------------------------------------------------------------------------- stepwise training
def _trainable(net):
    return {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}


def test_set_stage_switches_trainable_layers():
    net = ScoreFusionFCN(width=0.125)
    net.set_stage(1)
    assert _trainable(net) == set(STAGE_LAYERS[1])
    net.set_stage(2)
    assert _trainable(net) == {"deconv1", "conv7"}
    net.set_stage(3)
    assert _trainable(net) == {"deconv2", "conv8"}
    net.set_stage(3, finetune=True)
    assert _trainable(net) == set().union(*STAGE_LAYERS.values())


def _synthetic_cases(n=3, z=4):
    from npcrepro.datasets import Case

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        images = rng.normal(size=(z, 144, 144)).astype(np.float32)
        masks = np.zeros((z, 144, 144), bool)
        masks[1:3, 60:90, 50:80] = True
        images[masks] += 3
        out.append(Case(f"c{i}", {D.DCE_CHANNEL: images}, {"GTVp": masks}, D.SPACING))
    return out


def _params(**kw):
    from npcrepro import profiles

    return profiles.resolve("li2018", "smoke", device="cpu", **kw)


def test_trainer_stages_train_only_their_layers_when_not_finetuning():
    from npcrepro import recipes
    from npcrepro.engine import Trainer

    P = _params()
    prepared = [D.prepare_case(c, P) for c in _synthetic_cases()]
    net = M.build_model("working", 0.125)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = {}

    def spy(trainer, event, info):
        if event == "stage_start":
            seen[info["stage"]] = _trainable(trainer.model)

    literal = {**recipes.load("li2018").PROFILES["cpu"], "finetune": False}
    stages = M.make_stages("working", (2, 2, 2), literal)
    Trainer(net, stages[0].loss, D.training_slices(prepared), stages=stages, batch_size=2,
            progress=False, device="cpu", callbacks=[spy]).fit()
    assert seen == {0: set(STAGE_LAYERS[1]), 1: {"deconv1", "conv7"}, 2: {"deconv2", "conv8"}}
    after = net.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == set().union(*STAGE_LAYERS.values())


def test_finetune_trains_earlier_layers_at_their_own_rate():
    """finetune=True: stages 2-3 train the earlier stages' layers too, the working method's at
    lr_finetune and the new layers at lr_fusion; the SGD modes keep one rate (the printed solver)."""
    from npcrepro import recipes

    P = {**recipes.load("li2018").PROFILES["cpu"], "finetune": True, "lr_fusion": 1e-2, "lr_finetune": 1e-5}
    net = M.build_model("working", 0.125)
    stages = M.make_stages("working", (1, 1, 1), P)
    layer = {id(p): n.split(".")[0] for n, p in net.named_parameters()}
    rates = []
    for st in stages:
        st.set_trainable(net)
        rates.append({float(f"{st.lr * g['lr_scale']:.6g}"): {layer[id(p)] for p in g["params"]}
                      for g in st.param_groups(net)})
    assert rates[0] == {1e-3: set(STAGE_LAYERS[1])}
    assert rates[1] == {1e-2: {"deconv1", "conv7"}, 1e-5: set(STAGE_LAYERS[1])}
    assert rates[2] == {1e-2: {"deconv2", "conv8"}, 1e-5: set(STAGE_LAYERS[1]) | {"deconv1", "conv7"}}
    assert all(st.lr_scale == {} for st in M.make_stages("faithful", (1, 1, 1), P))


def test_stage_rates_and_finetune_reading_follow_the_parameters():
    P = {"lr": 1e-3, "lr_fusion": 1e-2, "lr_finetune": 1e-4, "finetune": True}
    assert R.stage_rates(P) == ("lr 0.001 in stage 1; in stages 2-3 0.01 for the layers they add and 0.0001 for "
                                "the layers trained before")
    assert "finetune=True" in R.finetune_reading(P) and "0.0001" in R.finetune_reading(P)
    P["finetune"] = False
    assert R.stage_rates(P) == "lr 0.001 in stage 1, 0.01 for the few weights stages 2-3 add"
    assert "finetune=False" in R.finetune_reading(P) and "0.0001" not in R.finetune_reading(P)


def test_stage_targets_are_downsampled():
    stages = M.make_stages("working", (1, 1, 1))
    y = torch.zeros(1, 1, 144, 144)
    y[..., :72, :] = 1
    sizes = [tuple(st.target_fn(y).shape[-2:]) for st in stages]
    assert sizes == [(36, 36), (72, 72), (144, 144)]
    assert float(stages[0].target_fn(y).mean()) == pytest.approx(0.5)
    assert [st.forward_kwargs["stage"] for st in stages] == [1, 2, 3]


def test_faithful_mode_is_the_printed_recipe():
    from npcrepro.chapters.li2018.losses import CaffeSigmoidLoss

    for mode in ("faithful", "printed"):
        st = M.make_stages(mode, (1, 1, 1))[0]
        assert (st.optimizer, st.lr, st.momentum, st.weight_decay) == ("sgd", 1e-7, 0.9, 5e-4)
        assert st.schedule == {"kind": "step", "step_size": 100000, "gamma": 0.1}
        assert isinstance(st.loss, CaffeSigmoidLoss)
    # faithful: Caffe's small Gaussian filler (recipe value 0.01); printed: the paper's N(0, 1)
    for mode, std in (("faithful", 0.01), ("printed", 1.0)):
        net = M.build_model(mode, 0.25, init_std=0.01)
        assert net.init == "gaussian"
        w = net.conv3.weight.detach()
        assert float(w.std()) == pytest.approx(std, rel=0.05) and float(w.mean()) == pytest.approx(0, abs=std / 20)


def test_caffe_summed_loss_scales_with_pixels():
    """The hypothesis behind the faithful mode: Caffe's loss is summed over pixels, so its gradient is
    the mean loss's times the pixel count (144 x 144: lr 1e-7 acts like about 2e-3 on a mean loss)."""
    from npcrepro.chapters.li2018.losses import CaffeSigmoidLoss

    x = torch.randn(2, 1, 144, 144, requires_grad=True)
    y = (torch.rand(2, 1, 144, 144) > 0.8).float()
    CaffeSigmoidLoss()(x, y).backward()
    g_sum = x.grad.clone()
    x.grad = None
    torch.nn.functional.binary_cross_entropy_with_logits(x, y).backward()
    assert torch.allclose(g_sum, x.grad * 144 * 144, rtol=1e-4, atol=1e-8)
    assert 1e-7 * 144 * 144 == pytest.approx(2.07e-3, rel=0.01)
    with pytest.raises(ParameterError):
        M.make_stages("fast", (1, 1, 1))
    with pytest.raises(ParameterError):
        M.make_stages("working", (1, 2))


# ----------------------------------------------------------------------------------------- augmentation
def test_augmentation_has_the_papers_variants():
    assert D.ROTATION_ANGLES == (-10, -8, -6, -4, -2, 0, 2, 4, 6, 8, 10)
    assert len(D.CONTRAST_VARIANTS) == 33 and len(D.NOISE_VARIANTS) == 2
    assert D.N_VARIANTS == 726 == 11 * 33 * 2


def test_augmentation_draws_the_11_rotation_angles():
    aug = D.Li2018Augment()
    rng = np.random.default_rng(0)
    angles = {aug.draw(rng)[0] for _ in range(2000)}
    assert angles == set(range(-10, 11, 2))


def test_augmentation_rotates_image_and_mask_together():
    aug = D.Li2018Augment()
    img = np.zeros((144, 144), np.float32)
    img[40:100, 60:70] = 1.0
    mask = img > 0.5
    for angle in D.ROTATION_ANGLES:
        out, m = aug.apply(img, mask, angle, contrast=1, noise=0)  # s = 0 %, gamma 1: plain rescale
        assert out.shape == m.shape == (144, 144) and m.dtype == bool
        assert abs(int(m.sum()) - int(mask.sum())) <= 0.05 * mask.sum()
        assert out[m].mean() > 0.9 and out[~m].mean() < 0.1
    rot, _ = aug.apply(img, mask, 10, 1, 0)
    assert not np.array_equal(rot > 0.5, mask)


def test_imadjust_saturates_tails():
    x = np.linspace(0, 1, 10000, dtype=np.float32).reshape(100, 100)
    y = D.imadjust(x, 10, 90)
    assert y.min() == 0 and y.max() == 1
    assert np.mean(y == 0) == pytest.approx(0.10, abs=0.01) and np.mean(y == 1) == pytest.approx(0.10, abs=0.01)
    assert np.all(D.imadjust(np.ones((4, 4))) == 0)
    assert D.imadjust(x, 0, 100, 2.0)[50, 50] == pytest.approx(float(x[50, 50]) ** 2, abs=1e-3)


def test_dataset_items_are_zscored():
    P = _params()
    ds = D.training_slices([D.prepare_case(c, P) for c in _synthetic_cases(2)])
    assert len(ds) == 4  # two tumour slices per case
    for i in (0, 3):
        x, y = ds.get(i, np.random.default_rng(i))
        assert x.shape == y.shape == (1, 144, 144)
        assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1) < 1e-3


# ----------------------------------------------------------------------------------------- data, tables
def test_parameters_validation():
    from npcrepro import profiles

    assert profiles.resolve("li2018", "cpu").n_cases == 29
    assert profiles.resolve("li2018", "gpu").cv == "loocv" and profiles.resolve("li2018", "gpu").n_cases == 29
    assert profiles.resolve("li2018", "cpu", n_cases=6, k=3).k == 3
    assert profiles.resolve("li2018", "cpu", iterations=[5, 1, 1]).iterations == [5, 1, 1]
    with pytest.raises(ParameterError, match="one of"):
        profiles.resolve("li2018", "cpu", methods="fast")
    with pytest.raises(ParameterError, match="valid"):
        profiles.resolve("li2018", "laptop")
    with pytest.raises(ParameterError, match="valid"):
        profiles.resolve("li2018", "cpu", epochs=3)


def test_methods_follow_modes():
    ch = M.CHAPTER
    assert [m.name for m in ch.methods(_params())] == ["working", "faithful", "printed"]
    assert ch.method("faithful", _params()).folds == 1 and ch.method("printed", _params()).folds == 1
    assert [m.name for m in ch.methods(_params(methods="working"))] == ["working"]
    only = ch.methods(_params(methods="faithful"))
    assert [m.name for m in only] == ["faithful", "printed"] and only[0].folds is None
    assert [m.name for m in ch.methods(_params(faithful_folds=0))] == ["working"]
    # gpu: every fold
    from npcrepro import profiles

    gpu = profiles.resolve("li2018", "gpu", device="cpu")
    assert [m.folds for m in ch.methods(gpu)] == [None, None, None]


def test_faithful_runs_on_every_fold_at_gpu():
    from npcrepro import recipes

    prof = recipes.load("li2018").PROFILES
    assert prof["gpu"]["faithful_folds"] is None and prof["cpu"]["faithful_folds"] >= 1


def test_lesions_under_1_cm_are_excluded():
    from npcrepro import papers, recipes

    assert papers.info("li2018").recipe["exclusion"]["value"] == 10.0
    assert all(p["min_lesion_mm"] == 10.0 for p in recipes.load("li2018").PROFILES.values())
    m = np.zeros((3, 40, 40), bool)
    m[1, 10:16, 10:13] = True                       # 6 x 3 voxels of 1.5 mm: 9 mm across
    assert D.lesion_extent_mm(m, (3.0, 1.5, 1.5)) == pytest.approx(9.0)
    m[2, 10:18, 12] = True                          # projected over z: 8 voxels = 12 mm
    assert D.lesion_extent_mm(m, (3.0, 1.5, 1.5)) == pytest.approx(12.0)
    assert D.lesion_extent_mm(np.zeros((2, 4, 4), bool), (1, 1, 1)) == 0.0


def test_cases_drop_small_lesions(tmp_path):
    from npcrepro.datasets import Case, open_dataset, write_dataset

    cases = []
    for i, side in enumerate((4, 10, 3, 12)):      # 4, 10, 3, 12 voxels of 1 mm across
        lab = np.zeros((2, 16, 16), bool)
        lab[1, 2:2 + side, 2:4] = True
        cases.append(Case(f"c{i}", {"DCE_034": np.zeros((2, 16, 16), np.float32)}, {"GTVp": lab}, (3.0, 1.0, 1.0)))
    write_dataset(tmp_path / "ds", cases, channels=["DCE_034"], structures=["GTVp"], name="t",
                  description="t", source="test")
    ds = open_dataset(tmp_path / "ds")
    assert M.CHAPTER.cases(ds, _params(n_cases=None, min_lesion_mm=10.0)) == ["c1", "c3"]
    assert M.CHAPTER.cases(ds, _params(n_cases=1, min_lesion_mm=10.0)) == ["c1"]
    assert M.CHAPTER.cases(ds, _params(n_cases=None, min_lesion_mm=0.0)) == ["c0", "c1", "c2", "c3"]


def test_network_for_the_leaderboard():
    net = M.network("li2018", width=0.5, in_channels=2, profile="smoke")
    assert net.width == 0.25 and net.init == "kaiming"
    assert net(torch.randn(1, 2, 144, 144)).shape == (1, 1, 144, 144)


def test_slices_from_a_case_are_144_with_tumour_and_invert():
    from npcrepro.datasets import Case

    z, y, x = np.mgrid[:24, :200, :180]
    gtv = ((z - 12) / 6.0) ** 2 + ((y - 120) / 15.0) ** 2 + ((x - 60) / 12.0) ** 2 < 1
    case = Case("p1", {"CET1": (gtv * 2.0 + 1).astype(np.float32)}, {"GTVp": gtv}, (2.5, 1.0, 1.0))
    p = D.prepare_case(case, _params(data="/somewhere", slices_per_patient=3))
    assert p.images.shape[1:] == p.masks.shape[1:] == (144, 144) and p.channel == "CET1"
    assert len(p.zs) == 3 and all(p.masks[z].any() for z in p.zs)
    back = D.T.invert(p.masks.astype(np.float32), p.record, order="linear") > 0.5
    assert back.shape == case.shape
    from npcrepro import metrics
    assert metrics.dice(back, gtv) > 0.9
    with pytest.raises(Exception):
        D.prepare_case(Case("p2", {"T2": gtv.astype(np.float32)}, {}, (1.0, 1.0, 1.0)), _params())
    with pytest.raises(DataError, match="no GTVp voxels"):  # one clear error, from the case's name
        D.prepare_case(Case("p2", {"T2": gtv.astype(np.float32)}, {}, (1.0, 1.0, 1.0)), _params())


def test_raters_are_scored_on_the_slices_the_network_is(tmp_path):
    from npcrepro.datasets import Case, write_dataset
    from npcrepro.evaluation import rater_agreement

    z, y, x = np.mgrid[:20, :144, :144]
    gtv = (np.abs(z - 10) <= 4) & ((y - 72) ** 2 + (x - 72) ** 2 < 20 ** 2)  # slices 6-14
    r1, r2 = gtv.copy(), gtv.copy()
    r2[6:8] = False  # rater 2 leaves out the tumour's first two slices, outside the three evaluated
    labels = {"GTVp_rater1": r1, "GTVp_rater2": r2, "GTVp": gtv}
    case = Case("p1", {D.DCE_CHANNEL: gtv.astype(np.float32)}, labels, D.SPACING)
    ds = write_dataset(tmp_path / "ds", [case], channels=[D.DCE_CHANNEL], structures=list(labels), source="test")
    P = _params(slices_per_patient=3)
    part = D.scored_part(ds.load("p1"), P)
    zs = D.prepare_case(case, P).zs
    assert part.shape[0] == len(zs) == 3 and np.array_equal(part.labels["GTVp_rater2"], r2[zs])
    t = M.CHAPTER.rater_agreement(ds, ["p1"], ["GTVp"], P)
    assert t.loc[0, "pairwise_dice"] == pytest.approx(1.0)  # the raters agree on every evaluated slice
    whole = rater_agreement(ds, ["p1"], ["GTVp"])
    assert whole.loc[0, "pairwise_dice"] == pytest.approx(2 * 7 / (9 + 7))  # the whole slab: 7 of 9 slices


def test_pixel_unit_slices_are_resized_to_144():
    from npcrepro.datasets import Case

    mask = np.zeros((1, 512, 512), bool)
    mask[0, 200:300, 220:330] = True
    case = Case("s1", {"T2": mask * 1.0 + 0.5}, {"GTVp": mask}, (1.0, 1.0, 1.0))
    p = D.prepare_case(case, _params(data="/real"), spacing_known=False)
    assert p.images.shape == (1, 144, 144)
    back = D.T.invert(p.masks.astype(np.float32), p.record, order="linear") > 0.5
    assert back.shape == (1, 512, 512) and (back & mask).sum() / mask.sum() > 0.9


def test_tables_have_the_papers_layout():
    import pandas as pd

    rep = R.table2_reported()
    assert rep.shape == (30, 7) and rep.index[-1] == "Mean±Std"
    assert rep.loc["1", "Dice similarity coefficient"] == "0.83"
    assert rep.loc["Mean±Std", "'Recall' = TP/(TP+FP)"] == "0.88±0.07"
    per_case = pd.DataFrame({"case": ["a", "b", "c"], "dice": [0.8, 0.9, 0.7], "jaccard": [0.6, 0.8, 0.5],
                             "precision": [0.9, 0.9, 0.8], "recall": [0.7, 0.9, 0.6],
                             "percent_match": [0.7, 0.9, 0.6], "corresponding_ratio": [0.6, 0.85, 0.5],
                             "volume_pred_cm3": [1.0, 2.0, 3.0], "volume_ref_cm3": [1.1, 2.1, 3.1],
                             "dice_36": [0.5, 0.6, 0.4], "dice_72": [0.7, 0.8, 0.6]})
    t2 = R.table2(per_case)
    assert list(t2.columns)[1:] == list(rep.columns) and t2.loc["Mean±Std", "Dice similarity coefficient"] == "0.80±0.10"
    t3 = R.table3(per_case)
    assert t3.loc["This reproduction (CNN)", "Source"] == "reproduced"
    assert t3.loc["Zhou et al. [7]", "Percent match: Mean ± SD"] == "0.79±0.07"
    class Run:  # what the comparison reads of a run on the phantom
        chapter, profile, data_label, cohort, held_out = "li2018", "smoke", "phantom", "evaluation", 0
        params = {"phantom_preset": "smoke", "n_cases": 3}

    cmp = R.comparison(Run(), per_case)
    assert cmp.frame.loc[("dsc", "CNN"), "reproduced"] == "0.80 ± 0.10 (reproduced)"
    assert "digital phantom (smoke preset, 3 cases, evaluation cohort, DCE frame 35) data, smoke profile" in cmp.caption


# ----------------------------------------------------------------------------------------- the chapter
@pytest.mark.slow
def test_notebook_runs_with_smoke_profile(run_notebook, run_folder):
    nb = run_notebook("li2018")
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Mean±Std" in text
    assert "Traceback" not in text
    match = re.search(r"run folder: (\S+)", text)
    assert match, text[-2000:]
    run = run_folder(match.group(1))
    assert run.parts[-4:-1] == ("runs", "smoke", "li2018")
    names = {p.name for p in run.iterdir()}
    assert {"params.json", "environment.json", "run.json", "splits.json", "metrics.csv", "training.csv",
            "working", "faithful", "printed", "DONE", "raters.csv"} <= names  # the DCE phantom keeps its raters
    job = run / "working" / "fold_0" / "seed_0"
    assert {"curves.csv", "checkpoint_last.pt", "model.pt", "predictions"} <= {p.name for p in job.iterdir()}
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    glued = {o.get("metadata", {}).get("scrapbook", {}).get("name") for o in outputs}
    assert {"li_dsc", "li_n_patients", "li_scheme", "li_real", "li_real_prior"} <= glued
    if "real T2 slices, " in text:  # the real extract was found: the no-image reference is beside the network
        assert re.search(r"location prior \(no image; .*\): DSC [\d.]+ ± [\d.]+ over the same \d+ held-out slices",
                         text), text[-3000:]


def test_notebook_is_committed_clean():
    import nbformat

    nb = nbformat.read(str(Path(__file__).parent.parent / "notebooks" / "li2018.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.get("id") != "npcrepro-setup"]  # Binder/Colab
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[1].metadata.get("tags")
    src = "".join(c.source for c in code)
    for plumbing in ("RunFolder", "mark_done", "write_summary", "pipelines"):
        assert plumbing not in src


# ----------------------------------------------------------------------------------------- the contract
class Testli2018Contract(ChapterContract):
    chapter = "li2018"
    overrides = {"n_cases": 3, "iterations": [2, 2, 2], "faithful_folds": 1}
    kill_at = 4  # inside stage 2, after the checkpoint of iteration 3


def test_faithful_table_and_verdict_from_a_run(tmp_path):
    """The faithful-recipe table has one row per SGD mode and fold, and the verdict counts a fold as
    trained only with a finite loss and a DSC of at least 0.1 and half the working DSC."""
    import pandas as pd

    class Run:
        methods = ["working", "faithful", "printed"]
        metrics = pd.DataFrame({"method": ["working"] * 2 + ["faithful"] * 2 + ["printed"] * 2,
                                "fold": [0, 1] * 3, "dice": [0.8, 0.6, 0.5, 0.0, 0.0, 0.0],
                                "dice_36": [0.7, 0.5, 0.4, 0.0, 0.0, 0.0]})
        training = pd.DataFrame({"method": ["faithful", "faithful", "printed", "printed"], "fold": [0, 1, 0, 1],
                                 "iterations": [200, 200, 12, 12], "diverged": [None, None, "nan", "nan"],
                                 "loss_first": [900.0, 900.0, float("nan"), float("nan")],
                                 "loss_stage1": [450.0, 880.0, float("nan"), float("nan")],
                                 "loss_stage3": [9000.0, 12000.0, float("nan"), float("nan")]})

    ft = R.faithful_table(Run())
    assert list(ft["mode"]) == ["faithful", "faithful", "printed", "printed"]
    assert list(ft["loss finite"]) == [True, True, False, False]
    assert ft["stage-1 loss change (%)"].iloc[0] == pytest.approx(-50.0)
    assert list(ft["working DSC (same patients)"].iloc[:2]) == [0.8, 0.6]
    v = R.faithful_verdict(ft)
    assert "finite loss on 2 of 2" in v and "on 1 of 2" in v and "DSC 0.25" in v
    assert "finite loss on 0 of 2" in R.faithful_verdict(ft, "printed")


# ----------------------------------------------------------------------------- real T2: the no-image reference
def test_location_prior_of_a_real_t2_run_scores_each_held_out_slice(npc_t2_dir, tmp_path):
    from npcrepro import chapters
    from npcrepro.metrics.prior import prior_scores
    from npcrepro.profiles import resolve

    P = resolve("li2018", profile="smoke", out_dir=str(tmp_path), real_data=str(npc_t2_dir), seeds=1)
    res, _ = chapters.run_track(P, "real_t2")
    prior = R.location_prior(res, P.real_prior_threshold)
    fold = res.splits()[0]
    assert list(prior["case"]) == list(fold.test) and set(prior["fold"]) == {0}
    masks = {}
    for n in (*fold.train, *fold.test):
        p = R.prepared_case(res, n)
        masks[n] = p.masks[p.zs]
        assert masks[n].shape[1:] == (D.SIZE, D.SIZE)
    want = prior_scores([masks[n] for n in fold.train], {n: masks[n] for n in fold.test}, P.real_prior_threshold,
                        pool_slices=True)
    assert prior.set_index("case")["dice"].to_dict() == pytest.approx(want)
    assert prior["dice"].between(0, 1).all()
