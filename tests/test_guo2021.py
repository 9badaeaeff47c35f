"""guo2021: CSCN networks (BUNet, ACDNet, fusion), the 3D baselines, three-view blocks, sliding-window
inference, preprocessing, the chapter's methods under the chapter contract, and the notebook under
papermill."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import npcrepro.models.cscn as cscn  # registers the networks
from chapter_contract import ChapterContract
from npcrepro import transforms as T
from npcrepro.chapters.guo2021 import methods as M
from npcrepro.chapters.guo2021 import report
from npcrepro.chapters.guo2021 import prepare as G
from npcrepro.chapters.guo2021 import samplers as D
from npcrepro.chapters.guo2021.losses import GuoLoss
from npcrepro.errors import DataError, ParameterError
from npcrepro.models import available, build

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def profiles_smoke(**overrides):
    from npcrepro import profiles

    return profiles.resolve("guo2021", "smoke", device="cpu", **overrides)


# ------------------------------------------------------------------------------------- networks
def test_registered_names():
    names = set(available())
    assert set(cscn.MODEL_NAMES.values()) <= names


@pytest.mark.parametrize("size", [(8, 24, 24), (24, 8, 24), (9, 13, 30)])
def test_bunet_shapes(size):
    net = build("bunet3d", widths=(4, 8, 16))
    out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, *size)


@pytest.mark.parametrize("in_channels", [1, 2])
@pytest.mark.parametrize("size", [(8, 24, 24), (7, 10, 26)])
def test_acdnet_shapes(in_channels, size):
    net = build("acdnet3d", in_channels=in_channels, stem=4, growth=2, layers=(1, 2, 1),
                dilations=(1, 2, 3))
    out = net(torch.randn(2, in_channels, *size))
    assert out.shape == (2, 2, *size)


def test_acdnet_dense_growth_and_gradients():
    net = cscn.ACDNet(1, 2, stem=4, growth=3, layers=(2, 1))
    block = net.down_blocks[0]
    assert block.out_channels == 4 + 2 * 3 and block.new_channels == 6
    assert len(block.layers[0].branches) == 3  # ASPP rates (1, 2, 3) before the bottleneck
    net(torch.randn(2, 1, 8, 12, 12)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("name,kw", [
    ("plaincnn3d", dict(width=4, depth=3)),
    ("deeplab3d", dict(width=4, aspp_channels=8, low_channels=4)),
    ("vnet3d", dict(widths=(4, 8, 16), n_convs=(1, 1, 2))),
    ("vnet3d", dict(widths=(4, 8), n_convs=(1, 2), norm="batch")),
])
@pytest.mark.parametrize("size", [(8, 24, 24), (9, 11, 13)])
def test_baseline_shapes(name, kw, size):
    net = build(name, **kw)
    out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, *size)


def test_plain_cnn_has_no_pooling():
    net = cscn.PlainCNN3D(width=4, depth=5)
    assert net.receptive_field == 11
    assert not any(isinstance(m, (torch.nn.MaxPool3d, torch.nn.AvgPool3d)) for m in net.modules())


@pytest.mark.parametrize("rate", [1, 2, 3])
def test_atrous_conv_equals_dilated_conv(rate):
    torch.manual_seed(0)
    a = cscn.AtrousConv3d(3, 4, 3, rate)
    ref = torch.nn.Conv3d(3, 4, 3, padding=rate, dilation=rate)
    ref.load_state_dict(a.state_dict())
    x1 = torch.randn(2, 3, 7, 10, 11, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = a(x1), ref(x2)
    assert y1.shape == y2.shape
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-3)


def test_cscn_fused_output_is_probability():
    net = build("cscn3d", bunet=dict(widths=(4, 8, 16)), acdnet=dict(stem=4, growth=2, layers=(1, 1)))
    net.eval()
    with torch.no_grad():
        fused, coarse, fine = net(torch.randn(2, 1, 8, 24, 24) * 5, return_all=True)
    assert fused.shape == coarse.shape == fine.shape == (2, 1, 8, 24, 24)
    for p in (fused, coarse, fine):
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    torch.testing.assert_close(fused, 0.5 * coarse + 0.5 * fine)


@given(c=st.floats(0, 1), f=st.floats(0, 1), w=st.floats(0, 1),
       rule=st.sampled_from(cscn.FUSIONS))
@settings(max_examples=60, deadline=None)
def test_fusion_rules_stay_in_unit_interval(c, f, w, rule):
    t = cscn.fuse_probabilities(torch.tensor([c]), torch.tensor([f]), rule, w)
    a = cscn.fuse_probabilities(np.array([c]), np.array([f]), rule, w)
    assert 0.0 <= float(t) <= 1.0 and 0.0 <= float(a[0]) <= 1.0
    lo, hi = min(c, f), max(c, f)
    assert lo - 1e-5 <= float(t) <= hi + 1e-5  # every rule is a (generalised) mean of the two


def test_fusion_rejects_unknown_rule():
    with pytest.raises(ParameterError):
        cscn.fuse_probabilities(torch.zeros(1), torch.zeros(1), "median")


def test_parameter_table():
    table = cscn.parameter_table()
    assert set(table["model"]) == set(cscn.MODEL_NAMES.values()) - {"cscn3d"}
    assert (table["parameters"] > 0).all()


# ------------------------------------------------------------------------------------- views, blocks
@pytest.mark.parametrize("view", D.VIEWS)
def test_view_round_trip(view):
    a = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    v = D.to_view(a, view)
    assert v.shape[1] == (3, 4, 5)[D.VIEW_AXIS[view]]  # the view's axis comes first
    np.testing.assert_array_equal(D.from_view(v, view), a)
    assert D.to_view(np.zeros(D.view_shape((8, 24, 24), view)), view).shape == (8, 24, 24)


def _toy_blocks(shape=(30, 40, 36), n=2, **kw):
    rng = np.random.default_rng(0)
    vols, tgts, ws = [], [], []
    for _ in range(n):
        t = np.zeros(shape, bool)
        t[10:16, 15:25, 12:20] = True
        vols.append(rng.normal(size=(1,) + shape).astype(np.float32))
        tgts.append(t)
        ws.append(np.where(t, 3.0, 1.0).astype(np.float32))
    return D.MultiViewBlocks(vols, tgts, ws, (8, 24, 24), **kw)


@given(seed=st.integers(0, 2**32 - 1), shape=st.tuples(st.integers(24, 40), st.integers(24, 40),
                                                      st.integers(24, 40)),
       fg=st.sampled_from([0.0, 0.5, 1.0]))
@settings(max_examples=40, deadline=None)
def test_block_sampler_covers_views_and_stays_inside(seed, shape, fg):
    ds = _toy_blocks(shape, samples_per_case=9, fg_prob=fg)
    rng = np.random.default_rng(seed)
    seen = set()
    for i in range(len(ds)):
        ci, view, box = ds.locate(i, rng)
        seen.add(view)
        assert tuple(b - a for a, b in box) == D.view_shape(ds.patch, view)
        for (a, b), n in zip(box, ds.volumes[ci].shape[1:]):
            assert 0 <= a < b <= n
    assert seen == set(D.VIEWS)


def test_block_items_are_canonical_with_weights():
    ds = _toy_blocks(samples_per_case=6, fg_prob=1.0)
    rng = np.random.default_rng(1)
    views = []
    for i in range(6):
        x, y = ds.get(i, rng)
        assert x.shape == (1, 8, 24, 24) and y.shape == (2, 8, 24, 24)
        assert y[0].sum() > 0  # centred on the tumour
        np.testing.assert_array_equal(y[1].numpy()[y[0].numpy() > 0], 3.0)
        views.append(ds.locate(i, np.random.default_rng(0))[1])
    assert set(views) == set(D.VIEWS)
    x1, _ = ds[3]
    x2, _ = ds[3]
    torch.testing.assert_close(x1, x2)  # validation blocks are fixed


def test_small_volumes_are_padded_for_every_view():
    ds = _toy_blocks(shape=(20, 30, 26), samples_per_case=3, fg_prob=0.0)
    assert ds.volumes[0].shape[1:] == (24, 30, 26)
    for i in range(3):
        x, _ = ds.get(i, np.random.default_rng(i))
        assert x.shape == (1, 8, 24, 24)


def test_blocks_on_hard_negatives():
    """With fg_prob 0 and negative_prob 1 every block holds a node voxel (the node far from the
    tumour); with the nodes given but negative_prob 0, or not given, the blocks are the same."""
    shape = (30, 40, 36)
    node = np.zeros(shape, bool)
    node[2:5, 30:36, 28:34] = True
    ds = _toy_blocks(shape, n=1, samples_per_case=30, fg_prob=0.0, negatives=[node], negative_prob=1.0)
    rng = np.random.default_rng(0)
    for i in range(30):
        _, _, box = ds.locate(i, rng)
        assert node[tuple(slice(a, b) for a, b in box)].any()
    plain = _toy_blocks(shape, n=1, samples_per_case=30, fg_prob=0.3)
    unused = _toy_blocks(shape, n=1, samples_per_case=30, fg_prob=0.3, negatives=[node], negative_prob=0.0)
    assert [plain.locate(i, np.random.default_rng(i)) for i in range(30)] == \
           [unused.locate(i, np.random.default_rng(i)) for i in range(30)]
    with pytest.raises(DataError, match="negatives"):
        _toy_blocks(shape, n=1, negatives=[node[:-1]], negative_prob=0.5)
    with pytest.raises(ParameterError, match="negative_prob"):
        _toy_blocks(shape, n=1, negatives=[node], negative_prob=2.0)


def test_prepared_case_carries_its_nodes_on_the_working_grid():
    """prepare_case resamples and crops the hard negatives with the target; a patient without them,
    or a run that asks for none, has None."""
    from npcrepro.chapters.guo2021.prepare import prepare_case
    from npcrepro.datasets import Case

    img = np.random.default_rng(0).normal(100, 10, (20, 40, 40)).astype(np.float32)
    img[4:16, 6:34, 6:34] += 300  # the "body"
    t = np.zeros(img.shape, bool)
    t[8:12, 15:22, 15:22] = True
    n = np.zeros(img.shape, bool)
    n[8:12, 26:30, 26:30] = True
    case = Case("c", {"CET1": img}, {"GTVp": t, "GTVnd": n}, (2.0, 1.0, 1.0))
    p = prepare_case(case, channel="CET1", spacing_mm=1.0, box_mm=(30, 36, 36), negatives=["GTVnd"])
    assert p.negative is not None and p.negative.shape == p.target.shape
    assert p.negative.sum() == pytest.approx(2 * n.sum(), rel=0.3)  # z resampled from 2 mm to 1 mm
    assert not (p.negative & p.target).any()
    assert prepare_case(case, channel="CET1", spacing_mm=1.0, box_mm=(30, 36, 36)).negative is None
    bare = Case("b", {"CET1": img}, {"GTVp": t}, (2.0, 1.0, 1.0))
    assert prepare_case(bare, channel="CET1", spacing_mm=1.0, box_mm=(30, 36, 36),
                        negatives=["GTVnd"]).negative is None


def test_block_sampler_rejects_mismatched_shapes():
    with pytest.raises(DataError):
        D.MultiViewBlocks([np.zeros((1, 30, 30, 30))], [np.zeros((30, 30, 29), bool)],
                          [np.ones((30, 30, 30))])


def test_guo_loss_matches_distance_weighted_focal():
    from npcrepro.losses import DistanceWeightedFocalLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 4, 6, 6)
    mask = (torch.rand(2, 1, 4, 6, 6) > 0.7).float()
    weight = 1 + 3 * mask[:, 0]
    got = GuoLoss(2.0)(logits, torch.cat([mask, weight[:, None]], 1))
    want = DistanceWeightedFocalLoss(2.0, activation="softmax")(logits, mask.long(), weight=weight)
    torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------- inference
class _Pointwise(torch.nn.Module):
    """A 1x1x1 'network': the same answer however the volume is windowed."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.head.weight[:] = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1, 1)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(x)


def test_sliding_window_over_whole_volume_matches_direct():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 30, 41, 37)).astype(np.float32)
    net = _Pointwise()
    prob = M.predict_views(net, image, (8, 24, 24), overlap=0.5, batch_size=3, device="cpu")
    direct = torch.softmax(net(torch.from_numpy(image)[None]), 1)[0, 1].detach().numpy()
    assert prob.shape == image.shape[1:]
    np.testing.assert_allclose(prob, direct, atol=1e-5)


def test_sliding_window_with_trained_shapes_and_range():
    net = build("bunet3d", widths=(4, 8, 16)).eval()
    image = np.random.default_rng(1).normal(size=(1, 26, 33, 29)).astype(np.float32)
    prob = M.predict_views(net, image, (8, 24, 24), overlap=0.25, device="cpu")
    assert prob.shape == (26, 33, 29)
    assert prob.min() >= 0 and prob.max() <= 1


# ------------------------------------------------------------------------------------- preprocessing
def test_prepare_phantom_case_round_trip():
    from npcrepro import metrics, phantom

    case = phantom.make_case(3, preset="smoke", modalities=("T1",))
    prep = G.prepare_case(case, channel="T1", spacing_mm=4.0, box_mm=(96.0, 160.0, 140.0))
    assert prep.shape == (24, 40, 35)
    assert prep.work_spacing == (4.0, 4.0, 4.0)
    assert abs(float(prep.image.mean())) < 1.0
    assert prep.target.any() and prep.weight.min() == 1.0 and prep.weight[prep.target].min() >= 5.0
    back = T.invert(prep.target.astype(np.float32), prep.record, order="linear") >= 0.5
    assert back.shape == case.shape
    assert metrics.dice(back, case.labels["GTVp"]) > 0.8
    assert prep.rater2 is not None
    assert prep.case is case and prep.reference.shape == case.shape


def test_prepare_names_missing_inputs():
    from npcrepro import phantom

    case = phantom.make_case(3, preset="smoke", modalities=("T1",))
    with pytest.raises(DataError, match="CET1"):
        G.prepare_case(case, channel="CET1")


def test_otsu_separates_two_modes():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 1, 500), rng.normal(10, 1, 500)])
    assert 2 < T.otsu_threshold(v) < 8


def test_profiles_registered_and_methods_checked():
    from npcrepro import profiles

    P = profiles.resolve("guo2021", "smoke")
    assert P.patch == [8, 24, 24]
    gpu = profiles.parameters("guo2021", "gpu")  # the paper's protocol: 5 rounds of 87/9/24
    assert (gpu["n_cases"], gpu["k_folds"], gpu["n_val"], gpu["iterations"]) == (120, 5, 9, 50000)
    with pytest.raises(ParameterError):
        profiles.resolve("guo2021", "smoke", channel="PET")
    with pytest.raises(ParameterError):
        M.selected({"methods": "CSCN,UNet"})


def test_divergence_is_recorded(monkeypatch):
    from npcrepro.engine import Trainer

    def boom(self, resume=False):
        raise FloatingPointError("training loss is nan")

    monkeypatch.setattr(Trainer, "fit", boom)
    ds = _toy_blocks(samples_per_case=3)
    P = profiles_smoke()
    model = M.build_model("V-Net", P["width"], 1, P["acd_layers"])
    facts = M.fit_network(model, ds, ds, P, dict(device="cpu", seed=0, progress=False))
    assert facts["status"] == "diverged"


# ------------------------------------------------------------------------------------- the chapter
def test_methods_cascade_runs_after_bunet():
    ms = M.CHAPTER.methods(profiles_smoke())
    assert [m.name for m in ms] == list(M.METHODS)
    assert {m.name: m.after for m in ms}["CSCN"] == ("BUNet",)
    assert all(m.after == () for m in ms if m.name != "CSCN")
    only = M.CHAPTER.methods(profiles_smoke(methods="CSCN"))
    assert [m.name for m in only] == ["CSCN", "BUNet"]  # the coarse stage comes with the cascade
    assert [m.name for m in M.CHAPTER.methods(profiles_smoke(methods="V-Net,CNN"))] == ["CNN", "V-Net"]


def test_cascade_network_holds_both_stages():
    P = profiles_smoke()
    net = M.CHAPTER.build(M.CHAPTER.method("CSCN", P), P)
    bunet = M.build_model("BUNet", P["width"], 1, P["acd_layers"])
    net.bunet.load_state_dict(bunet.state_dict())  # the trained BUNet drops in
    out = net.acdnet(torch.randn(1, 2, 8, 24, 24))
    assert out.shape == (1, 2, 8, 24, 24)  # image + coarse map in, 2-class logits out


@pytest.mark.parametrize("name,in_channels", [("CNN", 1), ("V-Net", 1), ("BUNet", 1), ("CSCN", 2),
                                              ("ACDNet_cascade", 2)])
def test_network_for_the_leaderboard(name, in_channels):
    from npcrepro import recipes

    width = 0.5
    net = M.network(name, width=width, in_channels=in_channels, profile="cpu")
    layers = recipes.load("guo2021").PROFILES["cpu"]["acd_layers"]
    want = (M.build_model("ACDNet_cascade", width, in_channels - 1, layers) if name in ("CSCN", "ACDNet_cascade")
            else M.build_model(name, width, in_channels, layers))
    assert type(net) is type(want)
    assert [p.shape for p in net.parameters()] == [p.shape for p in want.parameters()]
    out = net(torch.randn(1, in_channels, 8, 24, 24))
    assert out.shape == (1, 2, 8, 24, 24)


def test_coarse_input_is_a_new_array():
    from npcrepro import phantom

    case = phantom.make_case(3, preset="smoke", modalities=("T1",))
    prep = G.prepare_case(case, channel="T1", spacing_mm=4.0, box_mm=(96.0, 160.0, 140.0))
    before = prep.image.copy()
    vol = G.with_coarse(prep, np.ones(prep.shape, np.float32))
    assert vol.shape == (2, *prep.shape)
    vol[:] = 7
    np.testing.assert_array_equal(prep.image, before)


class Testguo2021Contract(ChapterContract):
    chapter = "guo2021"
    overrides = {"methods": "CSCN"}  # BUNet, then CSCN after it: the cascade through `after`
    kill_at = 3  # after the checkpoint of iteration 2 (eval_every at smoke)


# ------------------------------------------------------------------------------------- notebook
@pytest.mark.slow
def test_notebook_smoke(run_notebook):
    nb = run_notebook("guo2021")
    text = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "(reported)" in text and "(reproduced)" in text
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))


def test_notebook_is_committed_clean():
    import nbformat

    from npcrepro.paths import repo_root

    nb = nbformat.read(str(repo_root() / "notebooks" / "guo2021.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.get("id") != "npcrepro-setup"]  # Binder/Colab
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert "_before = set(globals())" in code[0].source
    assert "parameters" in code[1].metadata.get("tags")
    text = "\n".join(c.source for c in nb.cells)
    assert "chapters.run(P" in text and "npcrepro.pipelines" not in text
    assert "RunFolder" not in text and "mark_done" not in text and "write_summary" not in text
    assert 'recipes.deviations("guo2021", P.profile)' in text


# ----------------------------------------------------------------------------------------- issue 22
def test_cross_fit_accuracy_curve_and_views(tmp_path):
    """cross_fit = 2 trains two extra BUNets inside the CSCN job (each without half the training
    patients); every network writes its Fig. 4 accuracy curve; every patient gets the DSC of each
    single view and of the views' mean (what multi-view averaging adds)."""
    from npcrepro import chapters, profiles
    from npcrepro.chapters.guo2021.samplers import VIEWS

    P = profiles.resolve("guo2021", "smoke", out_dir=str(tmp_path), device="cpu", methods="CSCN",
                         cross_fit=2, n_cases=6)
    res = chapters.run(P, name="cf", progress=False)
    job = res.job_dir("CSCN", 0, 0)
    assert (job / "crossfit_0").is_dir() and (job / "crossfit_1").is_dir()
    tr = res.training.set_index("method")
    assert int(tr.loc["CSCN", "cross_fit"]) == 2 and tr.loc["CSCN", "cross_fit_cpu_seconds"] > 0
    for method in ("BUNet", "CSCN"):
        acc = report.accuracy_curve(res, method, 0)
        assert list(acc["iteration"]) == [2, 4]
        assert acc[["train_accuracy", "val_accuracy"]].apply(lambda c: c.between(0, 1).all()).all()
    m = res.metrics
    for v in VIEWS:
        assert m[f"dice_{v}"].between(0, 1).all()
    views = report.view_table(res)
    assert list(views["method"]) == ["CSCN", "BUNet"]
    best = views[["axial", "coronal", "sagittal"]].max(axis=1)
    assert (views["gain over best view"] - (views["views averaged"] - best)).abs().max() < 2e-3
    assert report.fig_accuracy(res) is not None
    hl = report.headline(res)  # methods left out are named as such in the prose, not as a blank
    assert hl["vnet_outcome"].startswith("was not trained at the smoke profile")
    assert hl["vnet_dsc"] == hl["cnn_dsc"] == "— (not trained at this profile)" and hl["cscn_dsc"][0].isdigit()
    with pytest.raises(Exception, match="cross_fit"):
        chapters.run(P.replace(cross_fit=5), name="bad", progress=False)


def test_view_fusion_is_a_named_deviation():
    from npcrepro import recipes

    devs = {d["parameter"]: d for d in recipes.deviations("guo2021", "gpu")}
    assert devs["view_fusion"]["paper"] == "decoder" and "upsampling" in devs["view_fusion"]["why"]
    assert recipes.load("guo2021").PROFILES["gpu"]["cross_fit"] == 3
