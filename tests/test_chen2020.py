"""chen2020 (MMFNet): fusion block (Eqs. 4-13), self-transfer, the Table I/II rows, the chapter on
the experiment runner, its report and notebook."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from chapter_contract import ChapterContract
from hypothesis import given, settings
from hypothesis import strategies as st

from npcrepro import metrics, recipes
from npcrepro import transforms as T
from npcrepro.chapters.chen2020 import methods as C
from npcrepro.chapters.chen2020 import prepare as PR
from npcrepro.chapters.chen2020 import report as R
from npcrepro.datasets import Case, write_dataset
from npcrepro.chapters.chen2020.samplers import CentrePixelDataset, WindowDataset
from npcrepro.engine.experiment import JobContext, JobSpec, job_dir
from npcrepro.errors import DataError, ParameterError
from npcrepro.models import build, count_parameters
from npcrepro.models import attention3d as A
from npcrepro.models import mmfnet as M
from npcrepro.chapters.chen2020 import paper

MODULE = "npcrepro.chapters.chen2020.methods"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: tiny tensors gain nothing from two, and lose a lot on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------ toy data
def toy_case(i: int, shape=(12, 40, 40), spacing=(4.0, 1.0, 1.0)) -> Case:
    """A head-like ellipse with a spherical tumour: isointense on T1, bright on T2 and CET1."""
    rng = np.random.default_rng(i)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    cz, cy, cx = [(n - 1) / 2 for n in shape]
    body = ((y - cy) / 17) ** 2 + ((x - cx) / 15) ** 2 < 1
    tc = (cz + rng.integers(-2, 3), cy + rng.integers(-5, 6), cx + rng.integers(-5, 6))
    r = rng.uniform(4, 6)
    tumour = (((z - tc[0]) * 4 / 2.0) ** 2 + (y - tc[1]) ** 2 + (x - tc[2]) ** 2 < r ** 2) & body
    images = {}
    for k, (b, t) in {"T1": (100, 100), "T2": (80, 160), "CET1": (90, 170)}.items():
        a = np.where(body, b, 5.0) + np.where(tumour, t - b, 0)
        images[k] = (a + rng.normal(0, 8, shape)).astype(np.float32)
    return Case(f"toy{i:02d}", images, {"GTVp": tumour}, spacing, (0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chen") / "ds"
    write_dataset(root, [toy_case(i) for i in range(5)], channels=["T1", "T2", "CET1"], structures=["GTVp"])
    return root


@pytest.fixture(scope="module")
def prepared():
    return [PR.prepare(toy_case(i)) for i in range(3)]


#: Tiny sizes on the toy cases (no resampling).
TINY = dict(recipes.load("chen2020").PROFILES["gpu"], spacing_xy=None, crop=[8, 16, 16], offset=[2, 3, 3],
            width=0.25, batch_size=2, iterations_per_epoch=1, epochs=2, warmup_epochs=1, patience=2,
            patch_size=9, patch_batch_size=4, patch_samples_per_case=4, infer_batch=2, k_folds=3,
            max_folds=1, n_cases=None, methods="all", device="cpu", seed=0)


def job_context(run: Path, key: str, P=TINY) -> JobContext:
    """The context the runner gives ``key``'s job (fold 0, seed 0) in run folder ``run``."""
    return JobContext(C.CHAPTER, JobSpec(MODULE, key, 0, 0, str(run), dict(P), [], [], []), P)


# ------------------------------------------------------------------------------------------ fusion block
def test_fusion_block_shapes():
    feats = [torch.randn(2, 8, 4, 6, 6) for _ in range(3)]
    block = M.FusionBlock(8, 3)
    assert block(feats).shape == (2, 8, 4, 6, 6)
    assert block(torch.cat(feats, 1)).shape == (2, 8, 4, 6, 6)
    assert M.FusionBlock(8, 2, out_channels=5)(feats[:2]).shape == (2, 5, 4, 6, 6)
    ca = M.ChannelAttention3d(24, reduction=12)
    assert ca.hidden == 2 and ca.weights(torch.cat(feats, 1)).shape == (2, 24, 1, 1, 1)
    assert M.SpatialAttention3d().weights(torch.cat(feats, 1)).shape == (2, 1, 4, 6, 6)


@pytest.mark.parametrize("pools", [("avg",), ("max",), ("std",), ("avg", "max"), ("avg", "max", "std")])
@pytest.mark.parametrize("shared", [True, False])
def test_each_statistic_path_can_be_switched(pools, shared):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 3, 5, 5, requires_grad=True)
    ca = M.ChannelAttention3d(12, reduction=4, pools=pools, shared_mlp=shared)
    assert len(ca.mlps) == (1 if shared else len(pools))
    sa = M.SpatialAttention3d(pools)
    assert sa.conv.in_channels == len(pools)
    (sa(ca(x)).sum()).backward()
    assert torch.isfinite(x.grad).all()
    for mlp in ca.mlps:  # every MLP in use receives a gradient
        assert mlp[0].weight.grad is not None and mlp[0].weight.grad.abs().sum() > 0


def test_std_path_changes_the_output():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 2, 4, 4)
    with_std = M.ChannelAttention3d(6, reduction=2, pools=("avg", "max", "std"))
    without = M.ChannelAttention3d(6, reduction=2, pools=("avg", "max"))
    without.mlps[0].load_state_dict(with_std.mlps[0].state_dict())
    without.mlps[1].load_state_dict(with_std.mlps[1].state_dict())
    assert not torch.allclose(with_std.weights(x), without.weights(x))


def test_bad_pools_are_rejected():
    with pytest.raises(ParameterError):
        M.ChannelAttention3d(6, pools=("avg", "median"))
    with pytest.raises(ParameterError):
        M.SpatialAttention3d(())
    with pytest.raises(ParameterError):
        M.MMFNet(fusion="sum")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.01, 5.0), st.sampled_from([True, False]))
def test_channel_attention_weights_in_open_unit_interval(seed, scale, shared):
    # float64, and the modules' initial weights seeded too: in float32 a sigmoid rounds to exactly 1
    # from a logit of about 17, which these inputs reach (up to 24 over 2,400 draws), so the property
    # failed on the rounding, once in a while, not on the attention
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, 24, 3, 4, 4, generator=g) * scale).double()
    w = M.ChannelAttention3d(24, shared_mlp=shared).double().weights(x)
    assert ((w > 0) & (w < 1)).all()
    ws = M.SpatialAttention3d().double().weights(x)
    assert ((ws > 0) & (ws < 1)).all()


def test_std_pool_is_eq10():
    x = torch.randn(2, 5, 3, 4, 4)
    got = A.pool_statistic(x, "std", (2, 3, 4)).flatten()
    mean = x.mean((2, 3, 4), keepdim=True)
    want = ((x - mean) ** 2).mean((2, 3, 4)).sqrt().flatten()
    assert torch.allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("dims", [(1,), (2, 3, 4)])
def test_pools_match_the_reference_statistics_and_their_gradients(dims):
    """The pooling's own autograd (closed-form sd backward, max with indices) gives the values and
    gradients of the textbook formulas, in NCDHW and channels-last alike."""
    torch.manual_seed(0)
    base = torch.randn(2, 6, 3, 4, 5) * 2 + 1
    refs = {"std": lambda t: (t.var(dims, unbiased=False, keepdim=True) + A.STD_EPS).sqrt(),
            "max": lambda t: t.amax(dims, keepdim=True), "avg": lambda t: t.mean(dims, keepdim=True)}
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x = base.clone().contiguous(memory_format=layout).requires_grad_(True)
        for kind, ref in refs.items():
            got, want = A.pool_statistic(x, kind, dims), ref(x)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-5), kind
            g = torch.randn_like(want)
            (grad_got,), (grad_want,) = torch.autograd.grad(got, x, g), torch.autograd.grad(want, x, g)
            assert torch.allclose(grad_got, grad_want, atol=1e-5), kind
    x64 = torch.randn(1, 3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: A.pool_statistic(t, "std", dims), (x64,))


def test_max_pool_of_a_tie_sends_the_whole_gradient_to_one_element():
    x = torch.zeros(1, 2, 1, 2, 2, requires_grad=True)  # a dead (all-zero) channel
    (grad,) = torch.autograd.grad(A.pool_statistic(x, "max", (2, 3, 4)).sum(), x)
    assert grad.sum().item() == pytest.approx(2.0) and int((grad != 0).sum()) == 2


def test_fusion_block_follows_eqs_4_to_13():
    torch.manual_seed(1)
    block = M.FusionBlock(4, 3, reduction=3).eval()
    feats = [torch.randn(1, 4, 3, 5, 5) for _ in range(3)]
    f_ori = torch.cat(feats, 1)
    dims = (2, 3, 4)
    stats = [f_ori.mean(dims), f_ori.amax(dims), (f_ori.var(dims, unbiased=False) + A.STD_EPS).sqrt()]
    wc = torch.sigmoid(sum(m(s) for m, s in zip(block.channel.mlps, stats)))[..., None, None, None]  # Eq. 7
    f_c = wc * f_ori  # Eq. 4
    maps = torch.cat([f_c.mean(1, keepdim=True), f_c.amax(1, keepdim=True),
                      (f_c.var(1, unbiased=False, keepdim=True) + A.STD_EPS).sqrt()], 1)
    f_s = torch.sigmoid(block.spatial.conv(maps)) * f_c  # Eqs. 11, 5
    f_r = block.fuse.reduce(f_s + f_ori)  # Eq. 12
    want = f_r + block.fuse.body(f_r)  # Eq. 13
    assert torch.allclose(block(feats), want, atol=1e-5)
    assert block.fuse.body[1].kernel_size == (1, 3, 3) and block.fuse.reduce.kernel_size == (1, 1, 1)


# ------------------------------------------------------------------------------------------ networks
def test_mmfnet_paper_widths_and_shapes():
    net = build("mmfnet", modalities=("T1", "T2", "CET1"))
    assert [e.widths for e in net.encoders.values()] == [(8, 16, 32, 64)] * 3
    assert net.encoders["T1"].out_channels == 64
    assert [c.out_channels for c in net.decoder.ups] == [64, 32, 16, 8]
    x = torch.randn(1, 3, 16, 32, 32)
    assert net(x).shape == (1, 1, 16, 32, 32)
    assert net(torch.randn(1, 3, 10, 20, 28)).shape == (1, 1, 10, 20, 28)  # padded and cropped back
    with pytest.raises(ValueError):
        net(torch.randn(1, 2, 16, 32, 32))


def test_single_encoder_has_three_times_the_encoder_width():
    net = M.SingleEncoderNet(3).eval()
    assert net.encoder.widths == (24, 48, 96, 192)
    assert net(torch.randn(1, 3, 16, 16, 16)).shape == (1, 1, 16, 16, 16)


def test_patch_cnn_dense_equals_patch_by_patch():
    torch.manual_seed(0)
    net = M.PatchCNN(3, patch_size=9, kernel_size=5, branches="per_channel").eval()
    x = torch.randn(1, 3, 14, 15)
    dense = net(x)
    assert dense.shape == (1, 1, 6, 7)
    for i, j in [(0, 0), (3, 5), (5, 6)]:
        patch = x[:, :, i:i + 9, j:j + 9]
        assert torch.allclose(net(patch)[0, 0, 0, 0], dense[0, 0, i, j], atol=1e-5)
    with pytest.raises(ParameterError):
        M.PatchCNN(1, patch_size=10)


# ------------------------------------------------------------------------------------------ self-transfer
def _batch(n=2, shape=(8, 16, 16), m=3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, m, *shape, generator=g), (torch.rand(n, 1, *shape, generator=g) > 0.7).float()


def test_self_transfer_copies_encoders_and_warmup_keeps_them_frozen():
    from npcrepro.engine import Stage, Trainer
    from npcrepro.losses import DiceLoss

    torch.manual_seed(0)
    singles = {m: M.MMFNet((m,), fusion="concat", width=0.5) for m in ("T1", "T2", "CET1")}
    for s in singles.values():  # make the "pre-trained" encoders differ from any fresh init
        with torch.no_grad():
            for p in s.parameters():
                p.add_(0.1)
        s.encoders[s.modalities[0]].blocks[0][1][1].running_mean.fill_(0.3)
    net = M.MMFNet(width=0.5)
    assert M.transfer_encoders(net, singles) == ["T1", "T2", "CET1"]
    for m, s in singles.items():
        a, b = net.encoders[m].state_dict(), s.encoders[m].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    before_enc = {k: v.clone() for k, v in net.encoders.state_dict().items()}
    before_dec = {k: v.clone() for k, v in net.decoder.state_dict().items()}

    x, y = _batch()
    data = torch.utils.data.TensorDataset(x, y)
    warm = Stage("warmup", iterations=3, lr=1e-3, frozen=M.encoder_prefixes(net),
                 forward_kwargs={"freeze_encoders": True})
    Trainer(net, DiceLoss(eps=1.0), data, stages=[warm], batch_size=2, progress=False,
            device="cpu").fit()
    after = net.encoders.state_dict()
    assert all(torch.equal(before_enc[k], after[k]) for k in before_enc)  # weights and BN statistics
    assert any(not torch.equal(before_dec[k], v) for k, v in net.decoder.state_dict().items())
    assert all(p.requires_grad is False for p in net.encoders.parameters())

    tune = Stage("finetune", iterations=2, lr=1e-4)
    Trainer(net, DiceLoss(eps=1.0), data, stages=[tune], batch_size=2, progress=False, device="cpu").fit()
    assert any(not torch.equal(before_enc[k], v) for k, v in net.encoders.state_dict().items())


def test_self_transfer_rejects_mismatched_encoders():
    net = M.MMFNet(width=0.5)
    with pytest.raises(ParameterError, match="differ"):
        M.transfer_encoders(net, {"T1": M.MMFNet(("T1",), fusion="concat", width=1.0)})
    with pytest.raises(ParameterError, match="no 'CT' encoder"):
        M.transfer_encoders(net, {"CT": M.MMFNet(("CT",), fusion="concat", width=0.5)})


def test_paper_scale_parameter_counts_are_stable():
    counts = {k: count_parameters(C.build_row(k)) for k in ("single_t1", "multi_encoder_mm", "base_mmfnet",
                                                            "mmfnet_full", "single_encoder_mm")}
    assert counts["mmfnet_full"] > counts["base_mmfnet"]  # three MLPs instead of one
    assert counts["single_t1"] < counts["mmfnet_full"] < counts["single_encoder_mm"]


def test_network_is_the_leaderboard_build():
    """``network`` builds what the leaderboard built with ``build_row(key, width=width)``."""
    for key, n in (("unet3d_cet1", 1), ("multi_mlp_std", 3)):
        for profile in ("smoke", "cpu", "gpu"):
            net = C.network(key, width=0.5, in_channels=n, profile=profile)
            ref = C.build_row(key, width=0.5)
            assert count_parameters(net) == count_parameters(ref)
            assert [tuple(p.shape) for p in net.parameters()] == [tuple(p.shape) for p in ref.parameters()]
    with pytest.raises(ParameterError, match="input channel"):
        C.network("unet3d_cet1", width=0.5, in_channels=3)
    with pytest.raises(ParameterError, match="unknown profile"):
        C.network("unet3d_cet1", width=0.5, in_channels=1, profile="huge")


# ------------------------------------------------------------------------------------------ rows
def test_rows_match_the_paper_tables():
    assert [r["key"] for r in paper.TABLE_I_ROWS if r["key"] in C.ROWS] == [r["key"] for r in paper.TABLE_I_ROWS]
    assert all(C.SAME_AS.get(r["key"], r["key"]) in C.ROWS for r in paper.TABLE_II_ROWS)
    assert C.select_rows("baseline,mmfnet_full,multi_encoder_mm") == ["multi_encoder_mm", "mmfnet_full"]
    assert len(C.select_rows("all")) == len(C.ROWS) == 26
    assert C.ROWS["multi_encoder_mm"].tables == (C.TABLE_I, C.TABLE_II)
    with pytest.raises(ParameterError, match="unknown chen2020 row"):
        C.select_rows("mmfnet_plus")


def test_self_transfer_rows_run_after_their_pretrainings():
    assert C.ROWS["mmfnet_full"].after == ("single_t1", "single_t2", "single_cet1")
    assert C.ROWS["multi_mlp_std"].after == ()
    names = [m.name for m in C.CHAPTER.methods(dict(TINY, methods="mmfnet_full"))]
    assert names == ["single_t1", "single_t2", "single_cet1", "mmfnet_full"]
    ms = {m.name: m for m in C.CHAPTER.methods(dict(TINY, methods="all"))}
    assert len(ms) == 26 and all(set(m.after) <= set(ms) for m in ms.values())
    assert ms["mmfnet_full"].info["family"] == "mmfnet" and ms["single_t2"].info["modalities"] == ["T2"]


def _save_singles(run: Path, modalities, width: float) -> None:
    for m in modalities:
        d = job_dir(run, f"single_{m.lower()}", 0, 0)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(M.MMFNet((m,), fusion="concat", width=width).state_dict(), d / "model.pt")


@pytest.mark.parametrize("key", list(C.ROWS))
def test_every_row_builds_and_trains_one_step(key, prepared, tmp_path):
    row = C.ROWS[key]
    P = dict(TINY, epochs=1, warmup_epochs=1, patience=None)
    if row.self_transfer:
        _save_singles(tmp_path, row.modalities, P["width"])
    ctx = job_context(tmp_path, key, P)
    model = C.CHAPTER.fit(row.method(), prepared[:2], prepared[2:], ctx)
    assert ctx.facts["iterations"] >= 1 and np.isfinite(ctx.facts["best_val_loss"])
    prob = C.predict_working(model, row, prepared[2], P)
    assert prob.shape == prepared[2].image.shape[1:] and 0 <= prob.min() and prob.max() <= 1
    full = C.CHAPTER.predict(row.method(), model, prepared[2], ctx)["GTVp"]
    assert full.shape == toy_case(2).shape and full.dtype == np.float32


def test_self_transfer_row_needs_its_pretrainings(prepared, tmp_path):
    ctx = job_context(tmp_path, "mmfnet_full")
    with pytest.raises(DataError, match="single_t1"):
        C.CHAPTER.fit(C.ROWS["mmfnet_full"].method(), prepared[:2], prepared[2:], ctx)
    with pytest.raises(ParameterError, match="does not declare"):
        job_context(tmp_path, "multi_mlp_std").model_of("single_t1")


# ------------------------------------------------------------------------------------------ data
def test_otsu_and_intra_body_normalisation():
    rng = np.random.default_rng(0)
    img = np.where(np.arange(1000) < 400, rng.normal(10, 2, 1000), rng.normal(100, 10, 1000))
    t = T.otsu_threshold(img)
    assert (img[:400] < t).all() and (img[400:] > t).all()
    case = toy_case(0)
    body = T.body_mask(case.images["T1"])
    out = T.intra_body_normalise(case.images["T1"], body)
    assert abs(out[body].mean()) < 1e-3 and abs(out[body].std() - 1) < 1e-3
    clipped = T.intra_body_normalise(case.images["T2"], clip_range=PR.CLIP_RANGES["T2"])
    assert clipped.min() >= -3 and clipped.max() <= 2
    assert T.body_mask(case.images["T1"], opening=True).sum() <= body.sum()


def test_prepare_centres_and_clips(prepared):
    p = prepared[0]
    assert p.image.shape[0] == 3 and p.channels == ("T1", "T2", "CET1")
    for i, c in enumerate(p.channels):
        lo, hi = PR.CLIP_RANGES[c]
        assert p.image[i].min() >= lo and p.image[i].max() <= hi
    assert abs(p.center[1] - 19.5) < 2 and abs(p.center[2] - 19.5) < 2
    kept = PR.prepare(toy_case(0), keep=(24, 28))
    assert kept.image.shape == (3, 12, 24, 28) and kept.target.sum() == p.target.sum()
    assert np.array_equal(T.invert(kept.target, kept.record), p.reference)  # maps back exactly
    (y0, y1), (x0, x1) = T.center_box(p.image.shape[2:], (24, 28), p.center[1:])
    assert np.array_equal(kept.image, p.image[:, :, y0:y1, x0:x1])
    assert kept.center == (p.center[0], p.center[1] - y0, p.center[2] - x0)
    resampled = PR.prepare(toy_case(0), spacing_xy=2.0, keep=(16, 16))
    back = T.invert(resampled.target, resampled.record)
    assert back.shape == p.reference.shape and metrics.dice(back, p.reference) > 0.7
    bad = toy_case(1)
    del bad.images["T2"]
    with pytest.raises(DataError, match="T2"):
        PR.prepare(bad)


def test_windows_slide_along_z_and_augment_reproducibly(prepared):
    ds = WindowDataset(prepared[:1], ("T1", "CET1"), 8, (16, 16), 4, offset=(2, 3, 3), flip=True,
                       rotate_deg=5)
    assert [z for _, z in ds.items] == [0, 4]  # 12 slices, windows of 8, step 4
    x, y = ds[0]
    assert x.shape == (2, 8, 16, 16) and y.shape == (1, 8, 16, 16)
    a = ds.get(1, np.random.default_rng(3))
    b = ds.get(1, np.random.default_rng(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    two = WindowDataset(prepared[:1], ("T1",), 1, (16, 16), 1, two_d=True)
    assert len(two) == 12 and two[5][0].shape == (1, 16, 16)
    pix = CentrePixelDataset(prepared[:1], ("T1", "T2", "CET1"), 9, (16, 16), samples_per_case=8)
    x, y = pix[0]
    assert x.shape == (3, 9, 9) and y.shape == (1, 1, 1)
    with pytest.raises(DataError, match="PET"):
        WindowDataset(prepared[:1], ("PET",), 8, (16, 16), 4)


def test_marching_cubes_surface_encloses_the_mask_in_mm():
    """A ball of radius 6 voxels on an anisotropic grid: the mesh's enclosed volume (divergence
    theorem) and area are the ball's within a few per cent, its extent in mm is the ball's, and an
    empty mask has no triangles."""
    spacing = (3.0, 2.0, 1.0)  # z, y, x mm
    z, y, x = np.mgrid[:8, :14, :26]
    r_mm = 7.0
    ball = ((z - 4) * 3.0) ** 2 + ((y - 7) * 2.0) ** 2 + ((x - 13) * 1.0) ** 2 <= r_mm ** 2
    t = R.surface_triangles(ball, spacing)
    assert t.ndim == 3 and t.shape[1:] == (3, 3)
    volume = abs(np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum()) / 6.0
    assert volume == pytest.approx(ball.sum() * 6.0, rel=0.05)                    # mm^3, 6 mm^3 voxels
    area = 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1).sum()
    assert 4 * np.pi * r_mm ** 2 <= area <= 1.25 * 4 * np.pi * r_mm ** 2  # staircase on 3 mm slices adds area
    assert t[..., 0].min() == pytest.approx(13 - 7, abs=1.0) and t[..., 0].max() == pytest.approx(13 + 7, abs=1.0)
    assert t[..., 2].min() == pytest.approx(4 * 3.0 - 7, abs=3.0)                  # z in mm
    assert len(R.surface_triangles(np.zeros((2, 2, 2), bool), (1, 1, 1))) == 0


def test_dice_loss_follows_eq1():
    """Eq. 1 as printed: 1 - 2 (sum pg + eps) / (sum p + sum g + eps), eps = 1, per window; the
    smoothed form puts eps once on top. Both differ by eps / (sum p + sum g + eps)."""
    from npcrepro import recipes
    from npcrepro.errors import ParameterError

    assert all(p["dice_form"] == "eq1" for p in recipes.load("chen2020").PROFILES.values())
    logits = torch.full((2, 1, 4, 8, 8), -30.0)          # predicts nothing
    target = torch.zeros(2, 1, 4, 8, 8)
    target[0, 0, 1:3, 2:6, 2:6] = 1                       # window 0: 32 tumour voxels; window 1: none
    eq1 = C.make_loss("seg", "eq1")
    smooth = C.make_loss("seg", "smoothed")
    eq1.reduction = smooth.reduction = "none"
    assert eq1(logits, target)[:, 0].tolist() == pytest.approx([1 - 2 / 33, -1.0], abs=1e-6)
    assert smooth(logits, target)[:, 0].tolist() == pytest.approx([1 - 1 / 33, 0.0], abs=1e-6)
    with pytest.raises(ParameterError):
        C.make_loss("seg", "eq2")


def test_patient_metrics_perfect_and_empty(prepared):
    ref = np.zeros((4, 8, 8), bool)
    ref[1:3, 2:6, 2:6] = True
    # Eq. 1 as printed, eps = 1 inside the factor 2: 32 reference voxels
    assert C.dice_loss(ref.astype(float), ref) == pytest.approx(1 - 2 * 33 / 65)
    assert C.dice_loss(np.zeros(ref.shape), ref) == pytest.approx(1 - 2 / 33)
    assert C.dice_loss(np.zeros(ref.shape), np.zeros(ref.shape, bool)) == pytest.approx(-1)
    p = prepared[0]
    ref = p.reference
    rows = C.CHAPTER.score(C.ROWS["mmfnet_full"].method(), p, {"GTVp": ref.astype(np.float32)},
                           {"GTVp": ref}, None)
    assert len(rows) == 1 and rows[0]["case"] == p.name and rows[0]["structure"] == "GTVp"
    n = int(ref.sum())
    assert rows[0]["dice"] == 1 and rows[0]["ap"] == 1
    assert rows[0]["dice_loss"] == pytest.approx(1 - 2 * (n + 1) / (2 * n + 1))
    rows = C.CHAPTER.score(C.ROWS["mmfnet_full"].method(), p, {"GTVp": np.zeros(ref.shape, np.float32)},
                           {"GTVp": np.zeros(ref.shape, bool)}, None)
    assert rows[0]["dice"] == 0 and rows[0]["pred_empty"]


# ------------------------------------------------------------------------------------------ the run
def test_run_report_and_figures(toy_dir, tmp_path):
    from npcrepro import chapters, profiles

    P = profiles.resolve("chen2020", "smoke", data=str(toy_dir), out_dir=str(tmp_path), device="cpu",
                         methods="multi_encoder_mm,mmfnet_full", spacing_xy=1.0, crop=[8, 16, 16],
                         offset=[2, 3, 3], n_cases=5, iterations_per_epoch=1)
    res = chapters.run(P, name="toy", progress=False)
    m = res.metrics
    assert res.methods == ["single_t1", "single_t2", "single_cet1", "multi_encoder_mm", "mmfnet_full"]
    assert set(m["method"]) == set(res.methods)
    assert len(m) == 5 * len(res.test_cases())
    assert m[["dice", "ap"]].apply(lambda c: c.between(0, 1).all()).all()
    assert m["dice_loss"].between(-1, 1).all()
    assert res.done and (res.path / "splits.json").exists()
    case = R.figure_case(res)
    assert res.prediction("mmfnet_full", case).shape == toy_case(0).shape
    t1 = R.comparison(res, C.TABLE_I)
    assert list(t1.frame["method"]) == [r["label"] for r in paper.TABLE_I_ROWS]  # a column, not an index row
    t1f = t1.frame.set_index("method")
    # the column names say reported or reproduced; the cells hold the number alone
    assert " ± " in t1f.loc[paper.FULL, "DSC reproduced"] and "(" not in t1f.loc[paper.FULL, "DSC reproduced"]
    assert "not reproduced" in t1f.loc["U-net (T1)", "AP reproduced"]
    assert "0.719" == t1f.loc[paper.FULL, "DSC reported"]
    t2 = R.comparison(res, C.TABLE_II).frame.set_index("method")
    assert " ± " in t2.loc["Multi-encoder multi-modality network (baseline)", "DSC reproduced"]
    q = R.three_questions(res)
    n = len(res.test_cases())
    assert q["n"].tolist() == [n, 0, 0]  # multi_mlp_std was not run: questions 2 and 3 say so
    # a handful of test patients decides nothing (a Wilcoxon p over n < 6 patients is never below 0.05)
    assert q["verdict"].tolist() == ["not decidable at this sample size", "not run", "not run"]
    s = R.summary_table(res)
    assert list(s.index) == res.methods and s.loc["single_t1", "tables"] == "(pre-training)"
    import matplotlib

    matplotlib.use("Agg")
    R.fig_slices(res, "mmfnet_full", case)
    R.fig_tp_fp_fn(res, None, case)
    # Figs. 8 and 10 (3D) and the per-sequence contrast of the run's patients
    assert len(R.fig_3d_cases(res, "mmfnet_full", n=2).axes) == 4
    assert len(R.fig_3d_methods(res, res.methods, case).axes) == 1 + len(res.methods)
    con = R.sequence_contrast(res)
    assert list(con["sequence"]) == ["T1", "T2", "CET1"]
    assert (con["patients"] == len(set(m["case"]))).all()
    assert con["AUC mean"].between(0, 1).all() and con["|AUC - 0.5| mean"].between(0, 0.5).all()
    R.fig_curves(res)


def test_profiles_answer_the_three_questions():
    from npcrepro import profiles

    for prof in ("smoke", "cpu"):
        keys = [m.name for m in C.CHAPTER.methods(profiles.resolve("chen2020", prof))]
        assert {"single_t1", "single_t2", "single_cet1"} <= set(keys)  # best single sequence
        assert "multi_encoder_mm" in keys  # plain multi-encoder
        assert "multi_mlp_std" in keys and "mmfnet_full" in keys  # fusion block without / with self-transfer
    assert len(C.CHAPTER.methods(profiles.resolve("chen2020", "gpu"))) == len(C.ROWS)


# ------------------------------------------------------------------------------------------ contract
class Testchen2020Contract(ChapterContract):
    chapter = "chen2020"
    overrides = {"methods": "single_t1,multi_encoder_mm"}
    kill_at = 3  # after the checkpoint at the end of epoch 1 (2 updates per epoch at smoke)


# ------------------------------------------------------------------------------------------ notebook
@pytest.mark.slow
def test_notebook_smoke(run_notebook, run_folder):
    nb = run_notebook("chen2020")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", "")) for o in outputs)
    assert "Traceback" not in text
    match = re.search(r"run folder: (\S+)", text)
    assert match, text[-2000:]
    run = run_folder(match.group(1))
    assert run.parts[-4:-1] == ("runs", "smoke", "chen2020")
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert info["status"] == "done" and "mmfnet_full" in [m["name"] for m in info["methods"]]
    assert (run / "mmfnet_full" / "fold_0" / "seed_0" / "model.pt").exists()
    glued = {o["metadata"]["scrapbook"]["name"] for o in outputs if "scrapbook" in o.get("metadata", {})}
    assert {"chen2020_full_dsc", "chen2020_best_single_dsc", "chen2020_n_patients", "chen2020_updates",
            "chen2020_warmup_updates", "chen2020_folds"} <= glued


def test_notebook_is_committed_clean():
    import nbformat

    nb = nbformat.read(Path(__file__).resolve().parent.parent / "notebooks" / "chen2020.ipynb", as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            assert c.execution_count is None and not c.outputs
