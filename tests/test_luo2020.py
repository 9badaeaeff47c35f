"""luo2020 chapter: two-stage U-Net + MSP block, FCN-8s, the chapter (prepare/methods/report), the
contract and the notebook."""
from __future__ import annotations

import pytest
import torch

import npcrepro.models.fcn  # noqa: F401  (registers fcn8s)
import npcrepro.models.two_stage_unet  # noqa: F401  (registers two_stage_unet)
import npcrepro.models.unet  # noqa: F401
from npcrepro.errors import DataError, ParameterError
from npcrepro.models import build, count_parameters
from npcrepro.models.fcn import FCN8s, bilinear_kernel
from npcrepro.models.two_stage_unet import MultiScalePooling, TwoStageUNet
from conftest import toy_ct_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = dict(stage1_widths=(4, 8, 8, 16, 16), stage2_widths=(4, 8, 8))


# ----------------------------------------------------------------------------------- MSP block
@pytest.mark.parametrize("fusion", ["concat", "mean"])
@pytest.mark.parametrize("shape", [(2, 6, 9, 13), (1, 6, 1, 1), (3, 6, 16, 16)])
def test_msp_keeps_shape(fusion, shape):
    blk = MultiScalePooling(2, 6, fusion=fusion).eval()
    y = blk(torch.randn(*shape))
    assert y.shape == shape


def test_msp_out_channels_and_3d():
    assert MultiScalePooling(2, 6, out_channels=10)(torch.randn(2, 6, 8, 8)).shape == (2, 10, 8, 8)
    assert MultiScalePooling(3, 4)(torch.randn(2, 4, 5, 6, 7)).shape == (2, 4, 5, 6, 7)


def test_msp_branches_are_average_pools():
    """Each branch is a stride-1 mean over a k x k window (border means count only voxels inside)."""
    blk = MultiScalePooling(2, 1, (1, 3), fusion="mean")
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    y = blk(x)
    # centre: mean of identity (12) and the 3x3 mean around (2, 2) (= 12)
    assert torch.isclose(y[0, 0, 2, 2], torch.tensor(12.0))
    # corner (0, 0): identity 0 and the mean of the 2x2 window inside the image, (0 + 1 + 5 + 6)/4
    assert torch.isclose(y[0, 0, 0, 0], torch.tensor((0 + 3.0) / 2))
    # a constant map stays constant under any pooling
    c = torch.full((1, 1, 7, 7), 2.5)
    assert torch.allclose(MultiScalePooling(2, 1, fusion="mean")(c), c)


def test_msp_has_no_pooling_parameters():
    blk = MultiScalePooling(2, 8, (1, 3, 5, 7), fusion="mean")
    assert count_parameters(blk) == 0
    # concat fusion: one 1x1 conv 4C -> C (no bias, BN follows) + BN affine
    blk = MultiScalePooling(2, 8, (1, 3, 5, 7))
    assert count_parameters(blk) == 4 * 8 * 8 + 2 * 8


@pytest.mark.parametrize("bad", [(2, 3), (0,), ()])
def test_msp_rejects_bad_kernels(bad):
    with pytest.raises(ParameterError):
        MultiScalePooling(2, 4, bad)


# ----------------------------------------------------------------------------------- two-stage model
@pytest.mark.parametrize("two_stage,msp", [(True, "both"), (True, "none"), (True, "stage1"), (True, "stage2"),
                                           (False, "stage1"), (False, "none")])
@pytest.mark.parametrize("hw", [(32, 32), (45, 37)])
def test_two_stage_shapes(two_stage, msp, hw):
    net = build("two_stage_unet", in_channels=1, n_classes=14, two_stage=two_stage, msp=msp, **SMALL).eval()
    with torch.no_grad():
        y = net(torch.randn(2, 1, *hw))
    assert y.shape == (2, 14) + hw
    stages = net.forward_stages(torch.randn(1, 1, *hw))
    assert len(stages) == (2 if two_stage else 1)
    assert all(s.shape == (1, 14) + hw for s in stages)


def test_two_stage_ablation_switches_change_structure():
    full = TwoStageUNet(1, 3, **SMALL)
    no_msp = TwoStageUNet(1, 3, msp="none", **SMALL)
    one = TwoStageUNet(1, 3, two_stage=False, **SMALL)
    assert sum(isinstance(m, MultiScalePooling) for m in full.modules()) == 2
    assert sum(isinstance(m, MultiScalePooling) for m in no_msp.modules()) == 0
    assert sum(isinstance(m, MultiScalePooling) for m in one.modules()) == 1  # "both" -> stage 1 only
    assert one.stage2 is None and one.msp == "stage1"
    assert count_parameters(no_msp) < count_parameters(full)
    # stage 2 reads the image and stage 1's probabilities
    assert full.stage2.stem[0][0].in_channels == 1 + 3
    assert TwoStageUNet(2, 3, stage2_input="probs", **SMALL).stage2.stem[0][0].in_channels == 3


def test_two_stage_deep_supervision_and_softmax():
    net = TwoStageUNet(1, 4, deep_supervision=True, multilabel=False, **SMALL)
    x = torch.randn(2, 1, 16, 16)
    out = net.train()(x)
    assert isinstance(out, tuple) and len(out) == 2 and out[0].shape == out[1].shape == (2, 4, 16, 16)
    assert net.eval()(x).shape == (2, 4, 16, 16)
    p = net.probabilities(torch.randn(1, 4, 3, 3))
    assert torch.allclose(p.sum(1), torch.ones(1, 3, 3))


def test_two_stage_rejects_bad_arguments():
    for kw in (dict(msp="middle"), dict(two_stage=False, msp="stage2"), dict(stage2_input="x"),
               dict(multilabel=False, n_classes=1)):
        with pytest.raises(ParameterError):
            build("two_stage_unet", **{**SMALL, **kw})
    net = TwoStageUNet(1, 2, **SMALL)
    with pytest.raises(ValueError, match="4D"):
        net(torch.randn(1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="input channel"):
        net(torch.randn(1, 3, 8, 8))


def test_two_stage_trains_one_step():
    from npcrepro.losses import DiceFocalLoss

    torch.manual_seed(0)
    net = TwoStageUNet(1, 3, **SMALL)
    x = torch.randn(2, 1, 32, 32)
    y = (torch.rand(2, 3, 32, 32) > 0.7).float()
    loss_fn = DiceFocalLoss(beta=0.5, alpha=0.25, gamma=2.0, activation="sigmoid")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss = loss_fn(net(x), y)
    opt.zero_grad()
    loss.backward()
    # gradients reach both stages and the MSP fusion
    assert net.stage1.stem[0][0].weight.grad.abs().sum() > 0
    assert net.stage2.stem[0][0].weight.grad.abs().sum() > 0
    assert net.stage1.bottleneck.fuse[0].weight.grad.abs().sum() > 0
    opt.step()
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("stage1") for k in changed) and any(k.startswith("stage2") for k in changed)
    assert torch.isfinite(loss)


def test_detach_stage1_stops_stage2_gradient():
    net = TwoStageUNet(1, 2, detach_stage1=True, **SMALL)
    x = torch.randn(2, 1, 16, 16)
    outs = net.forward_stages(x)
    outs[1].sum().backward()
    assert net.stage1.stem[0][0].weight.grad is None or net.stage1.stem[0][0].weight.grad.abs().sum() == 0
    assert net.stage2.stem[0][0].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------- FCN-8s
@pytest.mark.parametrize("hw", [(64, 64), (50, 70)])
@pytest.mark.parametrize("k", [1, 14])
def test_fcn8s_shapes(hw, k):
    net = build("fcn8s", in_channels=1, n_classes=k, widths=(4, 8, 8, 16, 16), fc_channels=16, fc_kernel=3).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, *hw)).shape == (2, k) + hw


def test_fcn8s_skips_and_upsampling():
    net = FCN8s(1, 2, (4, 8, 8, 16, 16), fc_channels=16, fc_kernel=3)
    # pool3 / pool4 scores start at zero, deconvolutions start bilinear (FCN's initialisation)
    assert net.score_pool3.weight.abs().sum() == 0 and net.score_pool4.weight.abs().sum() == 0
    assert torch.equal(net.up8.weight, bilinear_kernel(2, 16))
    # a bilinear x2 kernel maps a constant map to a constant interior
    up = torch.nn.functional.conv_transpose2d(torch.ones(1, 1, 6, 6), bilinear_kernel(1, 4), stride=2, padding=1)
    assert up.shape == (1, 1, 12, 12) and torch.allclose(up[0, 0, 1:-1, 1:-1], torch.ones(10, 10))
    # the skips carry information: pool3 path gets gradient
    x = torch.randn(1, 1, 64, 64)
    net(x).sum().backward()
    assert net.score_pool3.weight.grad.abs().sum() > 0 and net.score_pool4.weight.grad.abs().sum() > 0


def test_fcn8s_defaults_are_vgg16():
    net = FCN8s(3, 21, norm=None, dropout=0.5)
    convs = [m for m in net.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13 and [c.out_channels for c in convs][-1] == 512
    # VGG16 conv layers (14.7M) + fc6 7x7x512x4096 + fc7 4096x4096 + scores
    n = count_parameters(net)
    assert 134_000_000 < n < 135_000_000


def test_fcn8s_rejects_bad_arguments():
    with pytest.raises(ParameterError):
        build("fcn8s", widths=(4, 8, 16))
    with pytest.raises(ParameterError):
        build("fcn8s", fc_kernel=4)
    with pytest.raises(ValueError):
        FCN8s(1, 2, (4, 8, 8, 16, 16), fc_channels=8, pad_input=False)(torch.randn(1, 1, 40, 40))


@pytest.mark.parametrize("name", ["unet2d", "fcn8s", "two_stage_unet"])
def test_all_chapter_models_output_one_map_per_structure(name):
    kw = {"unet2d": dict(widths=(4, 8, 16)), "fcn8s": dict(widths=(4, 8, 8, 16, 16), fc_channels=8, fc_kernel=3),
          "two_stage_unet": SMALL}[name]
    net = build(name, in_channels=1, n_classes=14, **kw).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 40, 48)).shape == (1, 14, 40, 48)


# ----------------------------------------------------------------------------------- chapter

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from chapter_contract import ChapterContract  # noqa: E402

from npcrepro import papers, recipes  # noqa: E402
from npcrepro.chapters.luo2020 import figures as LF  # noqa: E402
from npcrepro.chapters.luo2020 import methods as LM  # noqa: E402
from npcrepro.chapters.luo2020 import prepare as LP  # noqa: E402
from npcrepro.chapters.luo2020 import report as LR  # noqa: E402

LOSS = dict(beta=0.9, focal_alpha=0.75, focal_gamma=2.0, dice_eps=0.5, batch_dice=True)


def test_structure_mapping_covers_the_papers_14():
    assert len(LP.STRUCTURES) == 14
    assert list(LP.STRUCTURES) == list(papers.info("luo2020").dataset["structures"])
    assert LP.STRUCTURES["locref"] == "GTVp" and LP.STRUCTURES["CTV2"] == "CTVp"
    assert LP.structures_for(list(LP.STRUCTURES.values()) + ["Body"]) == list(LP.STRUCTURES.values())
    assert LP.structures_for(["PTV70", "Mandible", "Brainstem"]) == ["Brainstem", "Mandible", "PTV70"]
    assert LP.structures_for(["A", "B"]) == ["A", "B"]


def test_cpu_leaves_out_the_optic_nerves_and_chiasm_and_gpu_keeps_all_14():
    from npcrepro import profiles

    small = {"OpticNerve_L", "OpticNerve_R", "Chiasm"}
    every = list(LP.STRUCTURES.values())
    for prof, expected in (("smoke", 11), ("cpu", 11), ("gpu", 14), ("gpu-lite", 14)):
        P = profiles.resolve("luo2020", prof)
        got = LM.CHAPTER.structures_for(P)
        assert len(got) == expected and list(got) == [s for s in every if s in got]  # the paper's order
        assert (small & set(got)) == (set() if expected == 11 else small)
        net = LM.CHAPTER.build(LM.CHAPTER.method("unet", P), P).eval()
        with torch.no_grad():
            assert net(torch.zeros(1, 1, 32, 32)).shape[1] == expected  # one output per structure
    # a dataset's own structures are filtered the same way; the OpenKBP names are untouched
    assert LP.structures_for(every + ["Body"], sorted(small)) == [s for s in every if s not in small]
    assert LP.structures_for(["PTV70", "Brainstem"], sorted(small)) == ["Brainstem", "PTV70"]
    with pytest.raises(DataError, match="no structures besides Chiasm"):
        LP.structures_for(["Chiasm"], ["Chiasm"])


def test_phantom_has_every_mapped_structure():
    from npcrepro import phantom

    assert set(LP.STRUCTURES.values()) <= set(phantom.STRUCTURES)


def test_audit_flags_the_papers_table1():
    audit = LR.audit_table(papers.reported("luo2020", table="Table 1"))
    assert list(audit.index) == ["U-Net", "FCN-8", "Mask R-CNN", "Ours"]
    assert not audit["consistent"].any()
    assert (audit["JSC"] > audit["DSC"]).all() and not audit["F1 = DSC"].any()
    assert np.isclose(audit.loc["Ours", "JSC implied by DSC"], 0.8251 / (2 - 0.8251))


def test_audit_accepts_a_consistent_table():
    d = 0.8
    rep = pd.DataFrame({"method": ["A"] * 3, "metric": ["dsc", "f1", "jaccard"], "value": [d, d, d / (2 - d)]})
    assert LR.audit_table(rep)["consistent"].all()
    with pytest.raises(Exception):
        LR.audit_table(rep[rep["metric"] != "f1"])


def test_literal_schedule_underflows():
    # 1e-3 * 0.9**110 = 9.2e-9 < 1e-8 <= 1e-3 * 0.9**109
    assert LR.lr_underflow(1e-3, 0.9, 10, below=1e-8) == 1100
    tab = LR.lr_schedule_table(1e-3, 0.9, 10, slices=7112, batch_sizes=(8,), at_epochs=(0, 1, 100))
    assert list(tab["iteration"]) == [0, 889, 88900]
    assert tab["lr (literal)"].iloc[0] == 1e-3 and tab["lr (literal)"].iloc[1] < 1e-7
    assert tab["float32 value"].iloc[2] == 0.0


def test_schedule_spec_modes():
    assert LM.schedule_spec({"lr_schedule": "literal"}, 300) == {"kind": "exponential", "every": 10, "gamma": 0.9}
    assert LM.schedule_spec({"lr_schedule": "scaled", "lr_decays": 10}, 300)["every"] == 30
    cos = LM.schedule_spec({"lr_schedule": "cosine", "warmup": 0.1, "cycles": 2}, 300)
    assert cos == {"kind": "cosine", "unit": "iteration", "total": 300, "warmup": 15, "cycles": 2}
    assert "cosine decay to 0, 2 times" in LM.schedule_text({"lr_schedule": "cosine", "warmup": 0.1, "cycles": 2}, 300)
    assert LM.schedule_text({"lr_schedule": "scaled", "lr_decays": 10}, 300) == "x0.9 every 30 iterations, 10 decays over the run"
    warm = LM.schedule_spec({"lr_schedule": "scaled", "lr_decays": 10, "warmup": 0.1}, 300)
    assert warm == {"kind": "exponential", "every": 30, "gamma": 0.9, "warmup": 30}
    from npcrepro.engine.schedules import make_schedule

    rule = make_schedule(warm, total=300)
    assert [round(rule.factor_at(t, 0), 4) for t in (0, 14, 29, 30, 59, 60)] == [
        round(1 / 30, 4), 0.5, 1.0, 0.9, 0.9, 0.81]
    assert LM.schedule_text({"lr_schedule": "scaled", "warmup": 0.1}, 300).startswith(
        "a linear warm-up over the first 30 iterations, then x0.9 every 30")
    with pytest.raises(ParameterError):
        LM.schedule_spec({"lr_schedule": "plateau"}, 300)


def test_loss_stagewise_and_batch_dice():
    from npcrepro.chapters.luo2020.losses import BatchDiceFocalLoss

    torch.manual_seed(0)
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    y = (torch.rand(3, 4, 8, 8) > 0.7).float()
    loss = LM.make_loss(LOSS)
    a, b = loss(x, y), loss((x, x), y)
    assert torch.isclose(a, b)
    c = loss((x, torch.zeros_like(x)), y)
    assert torch.isclose(c, 0.5 * (a + loss(torch.zeros_like(x), y)))
    c.backward()
    assert torch.isfinite(x.grad).all()
    # a near-perfect prediction has a near-zero Dice part; batch Dice ignores a channel empty in one slice
    perfect = (y * 2 - 1) * 20
    dice_only = BatchDiceFocalLoss(beta=1.0)
    assert dice_only(perfect, y) < 1e-3
    y2 = y.clone()
    y2[0, 0] = 0
    per_slice = BatchDiceFocalLoss(beta=1.0, batch_dice=False)((y2 * 2 - 1) * 20, y2)
    assert per_slice < 1e-2 and dice_only((y2 * 2 - 1) * 20, y2) < 1e-3
    with pytest.raises(Exception):
        dice_only(torch.randn(1, 2, 3, 4, 4), torch.zeros(1, 2, 3, 4, 4))


def test_build_method_every_key_and_table():
    S = dict(stage1_widths=[4, 8, 8, 16, 16], stage2_widths=[4, 8, 8], fcn_widths=[4, 8, 8, 16, 16],
             fcn_channels=8)
    for key in LM.METHODS:
        net = LM.build_method(key, S, 5).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 1, 32, 32)).shape == (1, 5, 32, 32)
    mt = LR.method_table(S, 5)
    assert mt.loc["Ours", "parameters"] > mt.loc["U-Net", "parameters"]
    with pytest.raises(ParameterError):
        LM.method_label("maskrcnn")


def test_column_channel_tells_left_from_right():
    from npcrepro.models.blocks import WithColumnCoordinate

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x)
            return x[:, :1]

    x = torch.zeros(2, 1, 3, 5)
    WithColumnCoordinate(Probe())(x)
    assert seen[0].shape == (2, 2, 3, 5)
    assert torch.allclose(seen[0][1, 1, 2], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    # a mirrored image no longer gives the mirrored input: the column channel is not flipped with it
    assert not torch.equal(seen[0][:, 1], seen[0][:, 1].flip(-1))
    with pytest.raises(DataError):
        WithColumnCoordinate(Probe())(torch.zeros(1, 3, 5))

    S = dict(stage1_widths=[4, 8, 8, 16, 16], stage2_widths=[4, 8, 8], coord_channel=True)
    for key in ("unet", "ours"):
        net = LM.build_method(key, S, 5).eval()
        assert isinstance(net, WithColumnCoordinate)
        assert next(net.parameters()).shape[1] == 2  # the first convolution takes CT + column
        with torch.no_grad():
            assert net(torch.randn(1, 1, 32, 32)).shape == (1, 5, 32, 32)
    # the cpu recipe sets it; the leaderboard's single-structure network leaves it out
    assert recipes.load("luo2020").PROFILES["cpu"]["coord_channel"] is True
    assert next(LM.network("ours", profile="cpu").parameters()).shape[1] == 1
    assert recipes.load("luo2020").PROFILES["gpu"]["coord_channel"] is False


def test_cpu_batches_show_every_structure_and_gpu_keeps_epochs():
    from npcrepro import profiles
    from npcrepro.engine import epoch_plan
    from npcrepro.phantom import make_case

    cpu, gpu = (profiles.parameters("luo2020", p) for p in ("cpu", "gpu"))
    assert cpu["sampling"] == "cover" and gpu["sampling"] == "uniform"
    structures = list(LP.STRUCTURES.values())
    cases = [make_case(i, preset="smoke") for i in range(2)]
    data = LP.slice_dataset(cases, structures, (48, 48), sampling=cpu["sampling"])
    assert data.cover.shape == (len(data), 14)
    present = data.cover.any(axis=0)
    assert present.sum() >= 12  # the smoke phantom's 48 x 48 crops show (nearly) all 14
    plan = epoch_plan(len(data), int(cpu["batch_size"]), 50, seed=0, stage=0, epoch=0, cover=data.cover)
    assert (data.cover[plan].any(axis=1) == present).all()
    assert LP.slice_dataset(cases, structures, (48, 48), sampling=gpu["sampling"]).cover is None


def test_cpu_profile_trains_table1_networks_and_leaves_the_ablation_to_gpu():
    from npcrepro import profiles

    S = dict(stage1_widths=[4, 8, 8, 16, 16], stage2_widths=[4, 8, 8], fcn_widths=[4, 8, 8, 16, 16],
             fcn_channels=8)
    cpu, gpu = (profiles.parameters("luo2020", p)["methods"] for p in ("cpu", "gpu"))
    assert set(gpu) == set(LM.METHODS)
    assert set(cpu) == {"unet", "ours"} and not set(cpu) & set(recipes.load("luo2020").GPU_ONLY)
    # the gpu profiles train every corner of the 2 x 2 ablation (the paper's two claims)
    assert {k for pairs in LR.CLAIMS.values() for pair in pairs for k in pair} <= set(gpu)
    trained = LR.method_table(dict(S, methods=cpu), 5)["trained at this profile"]
    assert not trained["FCN-8"] and not trained["Two-stage, no MSP"] and trained["Ours"]
    assert trained.sum() == len(cpu)


def test_claims_text_says_why_a_profile_tests_no_claim():
    empty = pd.DataFrame(columns=["claim", "comparison", "difference A - B", "p (Wilcoxon)"])
    text = LR.claims_text(empty, "0 of 2", "cpu")
    assert "not tested at the cpu profile" in text["stage"] and "gpu-lite" in text["reading"]
    claims = pd.DataFrame([
        {"claim": "a second stage helps", "comparison": "Ours vs One-stage + MSP", "difference A - B": 0.05,
         "p (Wilcoxon)": 0.01, "patients": 8, "verdict": "holds"},
        {"claim": "the MSP block helps", "comparison": "Ours vs Two-stage, no MSP", "difference A - B": -0.02,
         "p (Wilcoxon)": 0.2, "patients": 8, "verdict": "not shown"}])
    text = LR.claims_text(claims, "3 of 5", "gpu")
    assert text["stage"] == "+0.050 (Ours vs One-stage + MSP, Wilcoxon p = 0.01: holds)"
    assert text["msp"].startswith("-0.020") and text["msp"].endswith(": not shown)")
    assert "Over 8 test patients, 1 of 2" in text["reading"] and "3 of 5" in text["summary"]


def test_leaderboard_network_follows_the_profile():
    from npcrepro import recipes

    cpu = LM.network("ours", width=1.5, in_channels=2, profile="cpu")
    gpu = LM.network("ours", width=1.5, in_channels=2, profile="gpu")
    assert count_parameters(gpu) > count_parameters(cpu)
    sizes = recipes.load("luo2020").PROFILES["cpu"]
    same = LM.build_method("ours", {**sizes, "coord_channel": False}, 1, 2)
    assert count_parameters(same) == count_parameters(cpu)
    # the chapter's own cpu network also takes the column channel: one more input channel's weights
    assert count_parameters(LM.build_method("ours", sizes, 1, 2)) > count_parameters(cpu)
    assert cpu.stage1.stem[0][0].in_channels == 2
    fcn = LM.network("fcn8", width=0.5, in_channels=1, profile="smoke").eval()
    with torch.no_grad():
        p = torch.sigmoid(fcn(torch.randn(1, 1, 32, 32)))
    assert p.shape == (1, 1, 32, 32)
    # the chapter's output initialisation (prior 0.01), as the chapter builds the network: at the
    # cpu budget FCN-8s with the layers' default started near 0.5 and scored 0.42 DSC in the leaderboard
    assert sizes["prior"] == 0.01 and 0.005 < float(p.mean()) < 0.02
    with pytest.raises(ParameterError):
        LM.network("unet", width=1.0, in_channels=1)
    with pytest.raises(ParameterError):
        LM.network("ours", width=1.0, in_channels=1, profile="huge")


def test_maskrcnn_note_is_an_optional_import():
    import importlib.util

    ok, note = LR.maskrcnn_note()
    assert ok == (importlib.util.find_spec("torchvision") is not None)
    assert "Mask R-CNN" in note


def test_score_case_with_crop_box():
    case = toy_ct_case("t", 0)
    structures = ["CTVp", "GTVp", "Parotid_L", "Eye_L"]
    prepared = LP.prepare(case, structures, (16, 16))
    assert list(prepared.idx) == [1, 2, 3, 4]
    (y0, y1), (x0, x1) = prepared.box
    ref = np.stack([case.labels[s][prepared.idx] if s in case.labels else np.zeros((4,) + case.shape[1:], bool)
                    for s in structures]).astype(np.float32)
    probs = LP.to_grid(ref[:, :, y0:y1, x0:x1], prepared)   # perfect inside the box, nothing outside
    assert all(p.shape == case.shape for p in probs.values())
    assert not probs["CTVp"][0].any() and not probs["CTVp"][5].any()   # unlabelled slices: background
    masks = {s: p >= 0.5 for s, p in probs.items()}
    rows = {r["structure"]: r for r in LM.score_rows(probs, masks, prepared)}
    # Parotid_L reaches y = 19 > y1 - 1: what the model never saw counts as missed
    assert rows["CTVp"]["dice"] == 1.0 and rows["GTVp"]["dice"] == 1.0
    assert 0 < rows["Parotid_L"]["dice"] < 1
    assert rows["Eye_L"]["ref_empty"] and rows["Eye_L"]["dice"] == 1.0
    for r in rows.values():
        assert r["f1"] == r["dice"] and r["jaccard"] <= r["dice"] + 1e-12
        assert r["case"] == "t" and r["n_slices"] == 4


def test_laterality_table_flags_a_network_that_marks_both_sides():
    from types import SimpleNamespace

    import pandas as pd

    def row(method, structure, pred, tp, ref=100):
        return {"method": method, "case": "c", "structure": structure, "dice": 2 * tp / (pred + ref),
                "precision": tp / pred if pred else 0.0, "ref_voxels": ref, "pred_voxels": pred,
                "ref_empty": False}

    metrics = pd.DataFrame([
        row("a", "Eye_L", 200, 95), row("a", "Eye_R", 190, 90),      # both eyes marked for each eye
        row("b", "Eye_L", 100, 90), row("b", "Eye_R", 110, 95),      # each eye on its own side
        row("a", "GTVp", 100, 80), row("b", "Parotid_L", 100, 80)])  # no pair: not in the table
    res = SimpleNamespace(metrics=metrics, structures=["GTVp", "Eye_L", "Eye_R", "Parotid_L"],
                          methods=["a", "b"], label={"a": "A", "b": "B"}.get)
    t = LR.laterality_table(res).set_index(["structure", "method"])
    assert list(t.index) == [("Eye_L", "A"), ("Eye_L", "B"), ("Eye_R", "A"), ("Eye_R", "B")]
    assert t.loc[("Eye_L", "A"), "predicted / reference volume"] == pytest.approx(2.0)
    assert t.loc[("Eye_R", "A"), "precision"] == pytest.approx(90 / 190)
    assert t.loc[("Eye_L", "B"), "DSC"] == pytest.approx(2 * 90 / 200)
    assert t["both sides"].tolist() == [True, False, True, False]
    grid = LR.laterality_grid(LR.laterality_table(res))
    assert list(grid.index) == ["Eye_L", "Eye_R"] and list(grid.columns) == ["A", "B"]
    assert grid.loc["Eye_L", "A"] == "2.00 (both sides)" and grid.loc["Eye_L", "B"] == "1.00"
    assert LR.laterality_table(SimpleNamespace(metrics=metrics, structures=["GTVp"], methods=["a"],
                                               label={"a": "A"}.get)).empty


def test_run_end_to_end_on_a_toy_dataset(tmp_path):
    from npcrepro import chapters, profiles
    from npcrepro.datasets import write_dataset

    structures = ["CTVp", "GTVp", "Parotid_L"]
    cases = [toy_ct_case(f"c{i}", i) for i in range(3)]
    write_dataset(tmp_path / "ds", cases, channels=["CT"], structures=structures)
    P = profiles.resolve("luo2020", "smoke", data=str(tmp_path / "ds"), out_dir=str(tmp_path / "runs"),
                         device="cpu", image_size=[16, 16], iterations=2, batch_size=2, methods=["unet", "ours"],
                         k_folds=3, max_folds=2)
    res = chapters.run(P, name="toy", progress=False)
    m = res.metrics
    assert res.structures == ["GTVp", "CTVp", "Parotid_L"]          # the paper's order
    assert set(m["method"]) == {"unet", "ours"} and m["fold"].nunique() == 2
    assert len(m) == 2 * 2 * len(structures)            # folds x methods x structures (1 test case per fold)
    assert (m["f1"] == m["dice"]).all() and m["auc"].between(0, 1).all()
    assert set(res.training["method"]) == {"unet", "ours"} and (res.training["iterations"] == 2).all()
    assert res.label("ours") == "Ours"
    assert LR.fold_means(res).shape == (2, 2)
    assert list(LR.means(res).index) == ["U-Net", "Ours"]
    abl = LR.ablation_table(res)
    assert np.isnan(abl.loc["one stage", "MSP"]) and np.isfinite(abl.loc["two stages", "MSP"])
    assert LR.claims_table(res).empty  # no pair of the 2 x 2 design was run completely
    table = LR.comparison(res)
    assert "(reproduced)" in table.frame.loc[("dsc", "Ours"), "reproduced"]
    assert "not reproduced" in table.frame.loc[("dsc", "Mask R-CNN"), "reproduced"]
    pst = LR.per_structure_table(res)
    assert list(pst.columns) == ["U-Net", "Ours"] and pst.index[0] == "locref (GTVp)"
    assert list(LR.training_table(res).index) == ["U-Net", "Ours"]
    import matplotlib

    matplotlib.use("Agg")
    for fig in (LF.fig_qualitative(res), LF.fig_dsc_per_fold(res), LF.fig_boxplots(res),
                LF.fig_case(cases[0], structures)):
        assert fig.axes


def test_profiles_resolve():
    from npcrepro import profiles

    for prof in ("smoke", "cpu", "gpu"):
        P = profiles.resolve("luo2020", prof)
        assert set(P.methods) <= set(LM.METHODS) and P.workers == 1
        assert P.seeds == {"smoke": 1, "cpu": 2, "gpu": 3}[prof]  # claims rest on several trainings
        # the paper's 5 folds; the cpu profile runs one fold of 2, so that 20 of its 40 patients are tested
        assert P.k_folds == (2 if prof == "cpu" else 5)
    P = profiles.resolve("luo2020", "cpu")
    assert P.n_cases // P.k_folds >= 20 and P.max_folds == 1
    with pytest.raises(ParameterError):
        profiles.resolve("luo2020", "cpu", lr_schedule="plateau")
    with pytest.raises(ParameterError):
        LM.CHAPTER.methods(profiles.resolve("luo2020", "smoke", methods=["maskrcnn"]))


def test_cached_openkbp_without_a_source_is_none():
    from npcrepro.datasets.adapters.cached import cached_openkbp

    assert cached_openkbp("unused", 0) is None


class Testluo2020Contract(ChapterContract):
    chapter = "luo2020"
    overrides = {"methods": ["unet", "ours"], "iterations": 6}
    kill_at = 3  # eval_every = iterations // 10 -> 1: a checkpoint at every iteration


@pytest.mark.slow
def test_notebook_smoke(run_notebook):
    nb = run_notebook("luo2020")
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Mask R-CNN" in text and "run folder" in text
    glued = {o["metadata"]["scrapbook"]["name"] for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []) if "scrapbook" in o.get("metadata", {})}
    assert {"luo_audit_bad", "luo_dsc_ours", "luo_stage_gain", "luo_msp_gain", "luo_total_minutes"} <= glued


# ----------------------------------------------------------------------------------- Eq. 4, the split audit
def test_pooled_dsc_adds_patients_sums_by_hand():
    """Eq. 4 pooled over a fold's test slices = the sums of its patients added, not their mean DSC."""
    from types import SimpleNamespace

    import pandas as pd

    from npcrepro import metrics as M

    rng = np.random.default_rng(0)
    p1, p2 = rng.random((3, 4, 4)), rng.random((2, 4, 4))
    g1, g2 = rng.random((3, 4, 4)) > 0.6, np.zeros((2, 4, 4), bool)   # patient 2 lacks the structure
    rows = []
    for name, p, g in (("a", p1, g1), ("b", p2, g2)):
        s = M.soft_dice_sums(p, g)
        pred = p >= 0.5
        rows.append({"method": "unet", "fold": 0, "seed": 0, "case": name, "structure": "GTVp",
                     "dice": M.dice(pred, g), "ref_empty": not g.any(), "tp": int((pred & g).sum()),
                     "pred_voxels": int(pred.sum()), "ref_voxels": int(g.sum()),
                     **{f"soft_{k}": v for k, v in s.items()}})
    res = SimpleNamespace(metrics=pd.DataFrame(rows), label=lambda k: {"unet": "U-Net"}[k], path="toy")
    out = LR.pooled_dsc(res)
    assert len(out) == 1 and out["label"].iloc[0] == "U-Net"
    p, g = np.concatenate([p1, p2]), np.concatenate([g1, g2])
    assert out["soft_dsc"].iloc[0] == pytest.approx(2 * np.sum((p * g) ** 2) / (np.sum(p ** 2) + g.sum()))
    assert out["soft_dsc_dot"].iloc[0] == pytest.approx(M.soft_dice(p, g, numerator="dot"))
    assert out["hard_dsc"].iloc[0] == pytest.approx(M.dice(p >= 0.5, g))
    # the false positives of patient b lower the pooled value below patient a's own
    assert out["soft_dsc"].iloc[0] < M.soft_dice(p1, g1, numerator="printed")
    with pytest.raises(DataError, match="soft_pg2"):
        LR.pooled_dsc(SimpleNamespace(metrics=pd.DataFrame(rows).drop(columns=["soft_pg2"]), path="old"))


def test_location_prior_per_structure_is_scored_as_the_networks_are(monkeypatch):
    """The OpenKBP track's reference that reads no image: per structure, the mean of the training and
    validation masks of the patients that have it (never a test mask), scored on each test patient's
    labelled slices for the structures its reference has; each network is judged against it per
    patient (its structures averaged first)."""
    from types import SimpleNamespace

    import pandas as pd

    from npcrepro.datasets.splits import Fold

    shape = (3, 2, 2)

    def mask(*voxels):
        m = np.zeros(shape, bool)
        for v in voxels:
            m[v] = True
        return m

    labels = {"a": {"Brainstem": mask((0, 0, 0), (0, 0, 1)), "PTV63": mask((1, 0, 0))},
              "b": {"Brainstem": mask((0, 0, 0))},                         # no PTV63
              "c": {"Brainstem": mask((0, 0, 0), (2, 1, 1)), "PTV63": mask()},  # an empty PTV63 counts as none
              # labelled slice 0 only: the prior's voxel on slice 2 is not scored
              "t0": {"Brainstem": mask((0, 0, 0), (0, 1, 0)), "PTV63": mask()},
              # a Larynx no training patient has: the prior predicts none of it
              "t1": {"Brainstem": mask((0, 0, 0)), "PTV63": mask((1, 0, 0), (1, 1, 1)), "Larynx": mask((1, 1, 0))}}
    structures = ["Brainstem", "PTV63", "Larynx"]
    read = []

    def load(name, channels, structures):
        read.append(name)
        return SimpleNamespace(name=name, shape=shape,
                               labels={s: m for s, m in labels[name].items() if s in structures})

    ds = SimpleNamespace(structures=structures, load=load)
    run = SimpleNamespace(dataset=lambda: ds, structures=structures,
                          splits=lambda: [Fold(["a", "b"], ["c"], ["t0", "t1"])], methods=["unet"],
                          label={"unet": "U-Net"}.get,
                          params={"data": "/data/openkbp", "real_prior_threshold": 0.5})
    # at 0.5 the Brainstem prior is (0,0,0) alone (3 of 3); PTV63's is a's mask (1 of 1 patient that has it)
    prior = LP.location_prior(run, 0.5)
    assert set(read) == {"a", "b", "c", "t0", "t1"} and set(prior["method"]) == {LR.PRIOR}
    assert list(zip(prior["case"], prior["structure"])) == [("t0", "Brainstem"), ("t1", "Brainstem"),
                                                            ("t1", "PTV63"), ("t1", "Larynx")]
    assert prior["dice"].tolist() == pytest.approx([2 / 3, 1.0, 2 / 3, 0.0])
    # at 0.3 the Brainstem prior adds (0,0,1) and (2,1,1) (1 of 3 each); t0 is scored on slice 0 only
    assert LP.location_prior(run, 0.3)["dice"].iloc[0] == pytest.approx(0.5)
    assert LM.CHAPTER.reference(run)["dice"].tolist() == pytest.approx(prior["dice"].tolist())
    for other in ({"data": "phantom"}, {"split_unit": "slice"}, {"real_prior_threshold": None}):
        assert LM.CHAPTER.reference(SimpleNamespace(params={**run.params, **other})) is None

    nets = pd.DataFrame([{"method": "U-Net", "case": c, "structure": s, "dice": 0.9, "seeds": 2}
                         for c, s in zip(prior["case"], prior["structure"])])
    monkeypatch.setattr(LR, "scored", lambda results: nets)
    table = LR.prior_table(run, 0.5).set_index("network")
    # per patient: t0 2/3, t1 (1 + 2/3 + 0) / 3 = 5/9
    assert table.loc["U-Net", f"{LR.PRIOR} DSC"] == pytest.approx((2 / 3 + 5 / 9) / 2)
    assert table.loc["U-Net", "difference"] == pytest.approx(0.9 - (2 / 3 + 5 / 9) / 2)
    assert table.loc["U-Net", "seeds"] == 2 and table.loc["U-Net", "patients network higher"] == "2 of 2"
    assert table.loc["U-Net", "verdict (network higher)"] == "not decidable at this sample size"
    text = LR.prior_sentence(table.reset_index(), 0.5)
    assert text.startswith("A location prior that reads no image (per structure") and "on the same 2 held-out" in text
    # per structure, the prior's column beside the network's: Brainstem (2/3 + 1) / 2, PTV63 2/3, Larynx 0
    by_structure = LR.per_structure_table(run, reference=prior)
    assert list(by_structure.columns) == ["U-Net", LR.PRIOR]
    assert by_structure[LR.PRIOR].tolist() == pytest.approx([5 / 6, 2 / 3, 0.0, 0.5])
    # the track's headline mean has the prior table's unit: patients, not (patient, structure) pairs
    uneven = nets.assign(dice=[0.3, 0.9, 0.6, 0.0])
    monkeypatch.setattr(LR, "scored", lambda results: uneven)
    assert LR.means(run, ["dice"]).loc["U-Net", "dice"] == pytest.approx(0.45)
    assert LR.means(run, ["dice"], per_patient=True).loc["U-Net", "dice"] == pytest.approx((0.3 + 0.5) / 2)
    assert LR.prior_table(run, 0.5).set_index("network").loc["U-Net", "network DSC"] == pytest.approx(0.4)


def test_location_prior_refuses_a_split_by_slice_and_mixed_grids():
    from types import SimpleNamespace

    from npcrepro.datasets.splits import Fold

    big, small = np.ones((2, 2, 2), bool), np.ones((1, 2, 2), bool)
    sizes = {"a": big, "b": small, "t": big}
    ds = SimpleNamespace(structures=["Brainstem"], load=lambda name, channels, structures: SimpleNamespace(
        shape=sizes[name].shape, labels={"Brainstem": sizes[name]}))
    run = SimpleNamespace(dataset=lambda: ds, structures=["Brainstem"], splits=lambda: [Fold(["a", "b"], [], ["t"])])
    with pytest.raises(DataError, match="masks of one size"):
        LP.location_prior(run, 0.5)
    parts = [LP.part_name("a", 0, 2, side) for side in ("train", "test")]
    sliced = SimpleNamespace(dataset=lambda: ds, structures=["Brainstem"],
                             splits=lambda: [Fold(parts[:1], [], parts[1:])])
    with pytest.raises(DataError, match="split by patient"):
        LP.location_prior(sliced, 0.5)


def test_slice_level_split_through_the_runner(tmp_path):
    """split_unit='slice': every patient trains and is tested in every fold, on disjoint slices;
    the split audit table counts the leak and the patient-level run has none."""
    from npcrepro import chapters, profiles
    from npcrepro.datasets import write_dataset

    structures = ["CTVp", "GTVp", "Parotid_L"]
    cases = [toy_ct_case(f"c{i}", i) for i in range(3)]
    write_dataset(tmp_path / "ds", cases, channels=["CT"], structures=structures)
    P = profiles.resolve("luo2020", "smoke", data=str(tmp_path / "ds"), out_dir=str(tmp_path / "runs"),
                         device="cpu", image_size=[16, 16], iterations=2, batch_size=2, methods=["unet"],
                         k_folds=3, max_folds=2)
    pat = chapters.run(P, name="patient", progress=False)
    SP = LM.split_audit_params(P, ["unet"], 2)
    assert SP.split_unit == "slice" and SP.max_folds == 2 and SP.k_folds == 3
    sl = chapters.run(SP, name="slice", progress=False)
    # the audit's run sits under <out_dir>/audit/: readers of <out_dir>/<profile>/ see the chapter's run only
    from npcrepro.engine.results import find_results
    from npcrepro.viz.runs import list_runs

    assert sl.path.is_relative_to(tmp_path / "runs" / LM.AUDIT_DIR)
    assert [r.path for r in find_results(tmp_path / "runs", "smoke")] == [pat.path]
    assert [v.path for v in list_runs(tmp_path / "runs", "smoke")] == [pat.path]
    with pytest.raises(ParameterError):
        LM.split_audit_params(P, [], 1)
    folds = sl.splits()
    assert len(folds) == 2
    for k, f in enumerate(folds):
        assert [LP.parse_part(n) for n in f.test] == [LP.SlicePart(f"c{i}", k, 3, "test") for i in range(3)]
        m = sl.metrics[sl.metrics["fold"] == k]
        assert set(m["case"]) == {"c0", "c1", "c2"}            # every patient tested ...
        n_test = int(m.groupby("case")["n_slices"].first().sum())
        train = int(sl.training.loc[sl.training["fold"] == k, "train_slices"].iloc[0])
        assert n_test + train == 3 * 4                          # ... on slices it was not trained on
    # the two folds test disjoint slices of each patient: 4 labelled slices -> parts of 2, 1, 1
    assert sorted(sl.metrics.groupby(["fold", "case"])["n_slices"].first().groupby("case").sum()) == [3, 3, 3]
    audit = LR.split_audit_table(pat, sl, ["unet"])
    per_fold = audit[audit["fold"] != "mean"]
    assert (per_fold.loc[per_fold["split"] == "patient-level", "patients on both sides"] == 0).all()
    assert (per_fold.loc[per_fold["split"] == "slice-level", "patients on both sides"] == 3).all()
    assert set(audit.loc[audit["fold"] == "mean", "split"]) == {"patient-level", "slice-level"}
    assert set(LR.split_leak(audit)) == {"U-Net"}
    dt = LR.dsc_table(pat, papers.reported("luo2020", table="Table 1"))
    assert dt.loc["U-Net", "DSC (reported)"] == pytest.approx(0.7528)
    assert np.isnan(dt.loc["Mask R-CNN", "soft DSC, Eq. 4 as printed"])
    for col in ("soft DSC, Eq. 4 as printed", "soft DSC, Eq. 4 dot reading", "hard DSC, same pooling"):
        assert 0 <= dt.loc["U-Net", col] <= 1
    assert dt.loc["U-Net", "soft DSC, Eq. 4 as printed"] <= dt.loc["U-Net", "soft DSC, Eq. 4 dot reading"] + 1e-12
    cmp = LR.comparison(pat)
    assert f"{dt.loc['U-Net', 'soft DSC, Eq. 4 as printed']:.3f}" in cmp.frame.loc[("dsc", "U-Net"), "reproduced"]


def test_loss_follows_eq1_as_printed_by_default():
    from npcrepro.losses import TwoSidedDiceLoss

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    y = (torch.rand(2, 3, 8, 8) > 0.7).float()
    printed = LM.make_loss(dict(LOSS))
    assert printed.base.dice.literal and not LM.make_loss(dict(LOSS, dice_form="normalised")).base.dice.literal
    # batch Dice: the printed two-sided term over the batch, per structure
    d = TwoSidedDiceLoss(eps=0.5, activation="sigmoid", literal=True)(x.transpose(0, 1)[None], y.transpose(0, 1)[None])
    p = torch.sigmoid(x)
    fg = ((p * y).sum((0, 2, 3)) + 0.5) / (p.sum((0, 2, 3)) + y.sum((0, 2, 3)) + 0.5)
    bg = (((1 - p) * (1 - y)).sum((0, 2, 3)) + 0.5) / ((1 - p).sum((0, 2, 3)) + (1 - y).sum((0, 2, 3)) + 0.5)
    assert torch.isclose(d, (1 - fg - bg).mean())
    with pytest.raises(ParameterError):
        LM.make_loss(dict(LOSS, dice_form="squared"))
