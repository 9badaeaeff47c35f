"""Tests of npcrepro.metrics: hand-computed cases, reference libraries, properties, empty masks."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage
from scipy.spatial.distance import cdist

from npcrepro import metrics as M
from npcrepro.errors import DataError, ParameterError

ANISO = (3.0, 0.98, 0.7)


def blob(shape, sigma, thr, seed):
    """Smoothed random field thresholded at ``thr`` standard deviations: lesion-like masks."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return f > thr * f.std()


def realistic_pairs():
    """(pred, ref, spacing) cases: 3D anisotropic lesions, masks touching the border, 2D."""
    out = []
    for seed in range(4):
        ref = blob((16, 40, 36), (1, 3, 3), 1.0, seed)
        pred = ndimage.binary_dilation(np.roll(ref, (1, 2, -1), axis=(0, 1, 2)), iterations=seed % 2)
        pred ^= blob((16, 40, 36), (1, 2, 2), 2.2, 100 + seed)  # add/remove small islands
        out.append((pred, ref, ANISO))
    out.append((blob((10, 20, 20), (1, 2, 2), 0.0, 7), blob((10, 20, 20), (1, 2, 2), 0.0, 8), (2.5, 1.0, 1.0)))
    out.append((blob((64, 64), 3, 0.8, 9), blob((64, 64), 3, 0.8, 10), (0.98, 0.5)))
    return out


# ---------------------------------------------------------------------------- overlap, by hand


def test_confusion_and_overlap_by_hand():
    pred = np.zeros((3, 4), bool)
    ref = np.zeros((3, 4), bool)
    pred[0, :4] = True  # 4 voxels
    ref[0, :2] = True  # 2 voxels, both inside pred
    assert M.confusion(pred, ref) == (2, 2, 0, 8)
    assert M.dice(pred, ref) == pytest.approx(4 / 6)
    assert M.jaccard(pred, ref) == pytest.approx(0.5)
    assert M.precision(pred, ref) == pytest.approx(0.5)
    assert M.recall(pred, ref) == pytest.approx(1.0)
    assert M.f1(pred, ref) == pytest.approx(4 / 6)
    assert M.percent_match(pred, ref) == pytest.approx(1.0)
    assert M.corresponding_ratio(pred, ref) == pytest.approx((2 - 0.5 * 2) / 2)
    # swapped roles: precision and recall swap, CR changes
    assert M.precision(ref, pred) == pytest.approx(1.0)
    assert M.recall(ref, pred) == pytest.approx(0.5)
    assert M.corresponding_ratio(ref, pred) == pytest.approx(2 / 4)


def test_corresponding_ratio_can_be_negative_and_3d():
    ref = np.zeros((2, 3, 3), bool)
    pred = np.zeros((2, 3, 3), bool)
    ref[0, 0, 0] = True
    pred[0, 0, 0] = True
    pred[1] = True  # 9 false positives
    tp, fp, fn, tn = M.confusion(pred, ref)
    assert (tp, fp, fn, tn) == (1, 9, 0, 8)
    assert M.corresponding_ratio(pred, ref) == pytest.approx(1 - 4.5)


def test_f1_equals_harmonic_mean_and_dice():
    pred, ref, _ = realistic_pairs()[0]
    p, r = M.precision(pred, ref), M.recall(pred, ref)
    assert M.f1(pred, ref) == pytest.approx(2 * p * r / (p + r))
    assert M.f1(pred, ref) == pytest.approx(M.dice(pred, ref))


def test_volume_and_area():
    m = np.zeros((4, 5, 5), bool)
    m[1:3, 1:3, 1:4] = True  # 12 voxels
    assert M.volume(m, (3.0, 0.98, 0.98)) == pytest.approx(12 * 3 * 0.98 * 0.98 / 1000)
    assert M.volume(np.ones((10, 10), np.uint8), (2.0, 0.5)) == pytest.approx(100 * 1.0 / 100)
    assert M.volume(np.zeros((2, 2, 2)), (1, 1, 1)) == 0.0


def test_integer_and_float_masks_accepted():
    a = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    b = np.array([[0.0, 1.0], [0.0, 1.0]])
    assert M.dice(a, b) == pytest.approx(4 / 5)


# ---------------------------------------------------------------------------- validation


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(DataError, match=r"\(3, 4\).*\(4, 3\)"):
        M.dice(np.zeros((3, 4)), np.zeros((4, 3)))
    with pytest.raises(DataError):
        M.hausdorff(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)), (1, 1, 1))


@pytest.mark.parametrize(
    "call",
    [
        lambda: M.dice(np.array([[0, 2]]), np.array([[0, 1]])),  # not binary
        lambda: M.dice(np.array([[np.nan, 1.0]]), np.array([[0, 1]])),
        lambda: M.dice(np.zeros(5), np.zeros(5)),  # 1D
        lambda: M.hausdorff(np.ones((2, 2, 2)), np.ones((2, 2, 2)), (1, 1)),  # spacing length
        lambda: M.assd(np.ones((2, 2)), np.ones((2, 2)), (1, -1)),  # negative spacing
        lambda: M.volume(np.ones((2, 2)), (1, 1, 1)),
        lambda: M.auc(np.zeros((2, 2)), np.zeros((2, 3))),
        lambda: M.auc(np.array([np.nan, 0.0]), np.array([0, 1])),
        lambda: M.soft_dice(np.array([1.5, 0.0]), np.array([1, 0])),
    ],
)
def test_bad_input_raises_data_error(call):
    with pytest.raises(DataError):
        call()


def test_bad_parameters():
    m = np.ones((3, 3), bool)
    with pytest.raises(ParameterError):
        M.hausdorff(m, m, percentile=101)
    with pytest.raises(ParameterError):
        M.surface_dice(m, m, tolerance_mm=-1)
    with pytest.raises(ValueError):  # both errors are ValueErrors
        M.evaluate_case(m, m, worst_distance=float("nan"))


# ---------------------------------------------------------------------------- surfaces, by hand


def test_two_voxels_along_z_anisotropic():
    a = np.zeros((8, 3, 3), bool)
    b = np.zeros((8, 3, 3), bool)
    a[1, 1, 1] = True
    b[4, 1, 1] = True  # 3 voxels away along z, 3 mm each
    sp = (3.0, 1.0, 1.0)
    assert M.hausdorff(a, b, sp) == pytest.approx(9.0)
    assert M.hausdorff(a, b, sp, percentile=95) == pytest.approx(9.0)
    assert M.assd(a, b, sp) == pytest.approx(9.0)
    assert M.surface_dice(a, b, sp, tolerance_mm=8.9) == 0.0
    assert M.surface_dice(a, b, sp, tolerance_mm=9.0) == 1.0
    # the axis order matters: the same spacing read as (x, y, z) would give 3 mm
    assert M.hausdorff(a, b, (1.0, 1.0, 3.0)) == pytest.approx(3.0)


def test_2d_diagonal_distance():
    a = np.zeros((6, 6), bool)
    b = np.zeros((6, 6), bool)
    a[0, 0] = True
    b[3, 4] = True
    assert M.hausdorff(a, b) == pytest.approx(5.0)
    assert M.hausdorff(a, b, (2.0, 0.5)) == pytest.approx(math.sqrt(36 + 4))
    assert M.assd(a, b, 2.0) == pytest.approx(10.0)  # scalar spacing = isotropic


def test_directed_distances_percentile_and_medpy_convention_by_hand():
    pred = np.zeros((3, 7), bool)
    ref = np.zeros((3, 7), bool)
    pred[1, 0:5] = True  # a thin line: every voxel is a boundary voxel
    ref[1, 0] = True
    d_pr, d_rp = M.surface_distances(pred, ref)
    np.testing.assert_allclose(np.sort(d_pr), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(d_rp, [0])
    assert M.hausdorff(pred, ref) == pytest.approx(4.0)
    # per-direction percentile then max: percentile([0..4], 95) = 3.8
    assert M.hausdorff(pred, ref, percentile=95) == pytest.approx(3.8)
    # pooled (medpy) would be percentile([0, 0, 1, 2, 3, 4], 95) = 3.75
    assert np.percentile(np.r_[d_pr, d_rp], 95) == pytest.approx(3.75)
    assert M.assd(pred, ref) == pytest.approx(0.5 * (2.0 + 0.0))
    assert M.surface_dice(pred, ref, tolerance_mm=1.0) == pytest.approx(3 / 6)


def test_surface_uses_face_connectivity():
    plus = np.zeros((5, 5), bool)
    plus[2, 1:4] = True
    plus[1:4, 2] = True  # 5-pixel plus: its centre has all 4 face neighbours
    d, _ = M.surface_distances(plus, plus)
    assert d.size == 4  # with 8-connectivity erosion the centre would be a boundary pixel too
    cube = np.zeros((6, 6, 6), bool)
    cube[1:5, 1:5, 1:5] = True
    d, _ = M.surface_distances(cube, cube)
    assert d.size == 64 - 8


def test_array_edge_counts_as_background():
    full = np.ones((4, 4), bool)
    d, _ = M.surface_distances(full, full)
    assert d.size == 12  # the outer ring, as with border_value=0 / MONAI / medpy


def brute_force_distances(pred, ref, sp):
    """Reference: uncropped edges and all-pairs distances."""
    ep = pred & ~ndimage.binary_erosion(pred)
    er = ref & ~ndimage.binary_erosion(ref)
    cp = np.argwhere(ep) * sp
    cr = np.argwhere(er) * sp
    dist = cdist(cp, cr)
    return dist.min(axis=1), dist.min(axis=0)


@pytest.mark.parametrize("seed", range(3))
def test_cropping_matches_uncropped_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape = (6, 12, 10)
    pred = blob(shape, 1.2, 0.6, seed)
    ref = blob(shape, 1.2, 0.6, seed + 50)
    pred[:, 0, :] |= rng.random((6, 10)) > 0.5  # touch the array border
    sp = np.array([2.5, 0.9, 1.3])
    d_pr, d_rp = M.surface_distances(pred, ref, sp)
    b_pr, b_rp = brute_force_distances(pred, ref, sp)
    np.testing.assert_allclose(d_pr, b_pr, rtol=0, atol=1e-9)
    np.testing.assert_allclose(d_rp, b_rp, rtol=0, atol=1e-9)


def test_kdtree_path_for_far_apart_surfaces_matches_brute_force():
    shape = (40, 120, 120)  # two small blobs in opposite corners: box mostly empty
    pred = np.zeros(shape, bool)
    ref = np.zeros(shape, bool)
    pred[1:3, 2:5, 2:6] = True
    ref[36:39, 110:118, 112:115] = True
    sp = np.array(ANISO)
    d_pr, d_rp = M.surface_distances(pred, ref, sp)
    b_pr, b_rp = brute_force_distances(pred, ref, sp)
    np.testing.assert_allclose(d_pr, b_pr, atol=1e-9)
    np.testing.assert_allclose(d_rp, b_rp, atol=1e-9)


# ---------------------------------------------------------------------------- empty masks


def test_empty_mask_rules():
    z = np.zeros((4, 5, 6), bool)
    m = z.copy()
    m[1:3, 2:4, 2:4] = True
    sp = (3.0, 1.0, 2.0)
    diag = math.sqrt((4 * 3) ** 2 + 5**2 + (6 * 2) ** 2)
    both = M.evaluate_case(z, z, sp)
    for k in ("dice", "jaccard", "precision", "recall", "f1", "percent_match", "corresponding_ratio", "nsd"):
        assert both[k] == 1.0, k
    assert both["hd"] == both["hd95"] == both["assd"] == 0.0
    assert both["pred_empty"] and both["ref_empty"]
    for pred, ref, flag in ((z, m, "pred_empty"), (m, z, "ref_empty")):
        one = M.evaluate_case(pred, ref, sp)
        for k in ("dice", "jaccard", "precision", "recall", "f1", "percent_match", "corresponding_ratio", "nsd"):
            assert one[k] == 0.0, (flag, k)
        assert one["hd"] == one["hd95"] == one["assd"] == pytest.approx(diag)
        assert one[flag] and not one["ref_empty" if flag == "pred_empty" else "pred_empty"]
        assert M.hausdorff(pred, ref, sp) == pytest.approx(diag)
        assert M.assd(pred, ref, sp, worst_distance=50.0) == 50.0
        assert M.evaluate_case(pred, ref, sp, worst_distance=373.0)["hd95"] == 373.0
        assert M.surface_dice(pred, ref, sp) == 0.0
        assert M.dice(pred, ref) == 0.0
    assert M.hausdorff(z, z, sp) == 0.0 and M.assd(z, z) == 0.0 and M.surface_dice(z, z) == 1.0
    assert M.surface_distances(z, m)[0].size == 0


def test_probability_measures_single_class_reference():
    prob = np.linspace(0, 1, 20).reshape(4, 5)
    assert M.auc(prob, np.zeros((4, 5))) == 0.5
    assert M.auc(prob, np.ones((4, 5))) == 0.5
    assert M.average_precision(prob, np.ones((4, 5))) == pytest.approx(1.0)
    assert M.average_precision(prob * 0.4, np.zeros((4, 5))) == 1.0  # nothing reaches 0.5
    assert M.average_precision(prob, np.zeros((4, 5))) == 0.0
    assert M.soft_dice(np.zeros((4, 5)), np.zeros((4, 5))) == 1.0
    assert M.soft_dice(prob, np.zeros((4, 5))) == 0.0
    res = M.evaluate_case(prob > 2, np.zeros((4, 5), bool), (1.0, 1.0), prob=prob * 0.4)
    assert res["auc"] == 0.5 and res["auc_defined"] is False
    assert res["ap"] == 1.0 and res["ap_defined"] is False
    assert res["soft_dice"] == 0.0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pred=hnp.arrays(bool, st.sampled_from([(3, 4, 5), (6, 7)])),
    data=st.data(),
)
def test_never_nan(pred, data):
    ref = data.draw(hnp.arrays(bool, pred.shape))
    prob = data.draw(hnp.arrays(np.float64, pred.shape, elements=st.sampled_from([0.0, 0.3, 0.5, 1.0])))
    res = M.evaluate_case(pred, ref, (2.0,) * pred.ndim, prob=prob)
    for k, v in res.items():
        if isinstance(v, float):
            assert math.isfinite(v), k


# ---------------------------------------------------------------------------- evaluate_*


def test_evaluate_case_matches_single_functions():
    pred, ref, sp = realistic_pairs()[1]
    prob = ndimage.gaussian_filter(pred.astype(float), 1.0)
    res = M.evaluate_case(pred, ref, sp, prob=prob, tolerance_mm=1.5)
    assert res["dice"] == M.dice(pred, ref)
    assert res["hd"] == pytest.approx(M.hausdorff(pred, ref, sp))
    assert res["hd95"] == pytest.approx(M.hausdorff(pred, ref, sp, 95))
    assert res["assd"] == pytest.approx(M.assd(pred, ref, sp))
    assert res["nsd"] == pytest.approx(M.surface_dice(pred, ref, sp, 1.5))
    assert res["volume_ref_cm3"] == pytest.approx(M.volume(ref, sp))
    assert res["auc"] == pytest.approx(M.auc(prob, ref)) and res["auc_defined"]
    assert res["ap"] == pytest.approx(M.average_precision(prob, ref))
    assert res["soft_dice"] == pytest.approx(M.soft_dice(prob, ref))
    assert not res["pred_empty"] and not res["ref_empty"]
    res2d = M.evaluate_case(*realistic_pairs()[-1])
    assert "area_ref_cm2" in res2d and "volume_ref_cm3" not in res2d


def test_evaluate_labels_dicts_missing_structure():
    pred, ref, sp = realistic_pairs()[0]
    other = np.roll(ref, 5, axis=2)
    df = M.evaluate_labels({"GTVp": pred}, {"GTVp": ref, "GTVnd": other}, sp)
    assert list(df["structure"]) == ["GTVp", "GTVnd"]
    assert df.columns[0] == "structure"
    row = df.set_index("structure").loc["GTVnd"]
    assert row["pred_empty"] and not row["ref_empty"]
    assert row["dice"] == 0.0 and row["hd"] > 50  # the diagonal, not NaN
    assert df.set_index("structure").loc["GTVp", "dice"] == pytest.approx(M.dice(pred, ref))


def test_evaluate_labels_label_maps():
    ref = np.zeros((4, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[1:3, 1:4, 1:4] = 1
    ref[1:3, 6:9, 6:9] = 2
    pred[1:3, 1:4, 2:5] = 1
    pred[0, 0, 0] = 3
    names = {0: "background", 1: "brainstem", 2: "parotid_l", 3: "parotid_r", 4: "chiasm"}
    df = M.evaluate_labels(pred, ref, (3, 1, 1), names).set_index("structure")
    assert list(df.index) == ["brainstem", "parotid_l", "parotid_r", "chiasm"]
    assert df.loc["brainstem", "dice"] == pytest.approx(M.dice(pred == 1, ref == 1))
    assert df.loc["parotid_l", "pred_empty"] and df.loc["parotid_l", "dice"] == 0
    assert df.loc["parotid_r", "ref_empty"] and df.loc["parotid_r", "precision"] == 0
    assert df.loc["chiasm", "pred_empty"] and df.loc["chiasm", "ref_empty"]
    # without names: labels present in either map
    df2 = M.evaluate_labels(pred, ref, (3, 1, 1))
    assert sorted(df2["structure"]) == ["1", "2", "3"]
    with pytest.raises(DataError, match="not in names"):
        M.evaluate_labels(pred, ref, (3, 1, 1), {1: "brainstem"})


# ---------------------------------------------------------------------------- probability, by hand


def test_auc_ap_soft_dice_by_hand():
    prob = np.array([0.1, 0.4, 0.35, 0.8])
    ref = np.array([0, 0, 1, 1])
    assert M.auc(prob, ref) == pytest.approx(0.75)
    # thresholds 0.8 (P 1, R .5), 0.4 (P .5, R .5), 0.35 (P 2/3, R 1)
    assert M.average_precision(prob, ref) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    tied = np.array([0.5, 0.5, 0.5, 0.9])
    assert M.auc(tied, np.array([0, 1, 0, 1])) == pytest.approx(0.75)  # ties count one half
    assert M.soft_dice(np.array([0.5, 1.0, 0.0]), np.array([1, 1, 0])) == pytest.approx(3 / 3.25)
    hard = np.array([[1, 0], [1, 1]])
    assert M.soft_dice(hard.astype(float), np.array([[1, 1], [0, 1]])) == pytest.approx(
        M.dice(hard, np.array([[1, 1], [0, 1]]))
    )


def test_auc_rank_formula_literal():
    """luo2020 Eq. 5 computed literally with scipy's average ranks."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    prob = np.round(rng.random(500), 1)
    ref = rng.random(500) < 0.3
    r = rankdata(prob)
    n0, n1 = ref.sum(), (~ref).sum()
    expected = (r[ref].sum() - n0 * (n0 + 1) / 2) / (n0 * n1)
    assert M.auc(prob, ref) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_auc_ap_match_sklearn_with_ties(seed):
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    shape = (6, 20, 20) if seed % 2 else (30, 30)
    ref = rng.random(shape) < 0.2
    prob = np.clip(ref * 0.3 + rng.random(shape) * 0.8, 0, 1)
    prob = np.round(prob, 1 + seed % 2)  # many ties
    assert M.auc(prob, ref) == pytest.approx(skm.roc_auc_score(ref.ravel(), prob.ravel()), abs=1e-6)
    assert M.average_precision(prob, ref) == pytest.approx(
        skm.average_precision_score(ref.ravel(), prob.ravel()), abs=1e-6
    )


# ---------------------------------------------------------------------------- MONAI and medpy


def _monai_onehot(mask):
    import torch

    return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))


@pytest.mark.parametrize("case", range(len(realistic_pairs())))
def test_distances_match_monai(case):
    mm = pytest.importorskip("monai.metrics")
    mu = pytest.importorskip("monai.metrics.utils")
    import torch

    pred, ref, sp = realistic_pairs()[case]
    P, R = _monai_onehot(pred), _monai_onehot(ref)
    spl = list(sp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m_hd = mm.compute_hausdorff_distance(P, R, spacing=spl).item()
        m_hd95 = mm.compute_hausdorff_distance(P, R, percentile=95, spacing=spl).item()
        m_asd = 0.5 * (
            mm.compute_average_surface_distance(P, R, spacing=spl).item()
            + mm.compute_average_surface_distance(R, P, spacing=spl).item()
        )
        m_nsd = mm.compute_surface_dice(P, R, [2.0], spacing=spl).item()
        _, (m_pr, m_rp), _ = mu.get_edge_surface_distance(
            torch.from_numpy(pred), torch.from_numpy(ref), spacing=spl, symmetric=True
        )
    d_pr, d_rp = M.surface_distances(pred, ref, sp)
    # same surfaces, same distances (MONAI returns float32)
    np.testing.assert_allclose(np.sort(d_pr), np.sort(m_pr.numpy().astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(np.sort(d_rp), np.sort(m_rp.numpy().astype(np.float64)), rtol=1e-6)
    res = M.evaluate_case(pred, ref, sp, tolerance_mm=2.0)
    assert res["hd"] == pytest.approx(m_hd, rel=1e-6)
    assert res["assd"] == pytest.approx(m_asd, rel=1e-6)
    assert res["nsd"] == pytest.approx(m_nsd, abs=1e-6)
    # HD95: the same convention (per-direction percentile, then max) on MONAI's own distances
    # agrees to 1e-6; MONAI's final value comes from a float32 torch.quantile, hence rel 1e-5.
    conv = max(np.percentile(m_pr.numpy().astype(np.float64), 95), np.percentile(m_rp.numpy().astype(np.float64), 95))
    assert res["hd95"] == pytest.approx(conv, rel=1e-6)
    assert res["hd95"] == pytest.approx(m_hd95, rel=1e-5)


def test_medpy_pools_hd95_and_assd_but_agrees_on_hd():
    mb = pytest.importorskip("medpy.metric.binary")
    n_diff = n_diff_assd = 0
    for pred, ref, sp in realistic_pairs():
        assert M.hausdorff(pred, ref, sp) == pytest.approx(mb.hd(pred, ref, voxelspacing=sp), rel=1e-9)
        directed = 0.5 * (mb.asd(pred, ref, voxelspacing=sp) + mb.asd(ref, pred, voxelspacing=sp))
        assert M.assd(pred, ref, sp) == pytest.approx(directed, rel=1e-9)
        d_pr, d_rp = M.surface_distances(pred, ref, sp)
        # medpy 0.5's assd pools both directions (a surface-size-weighted mean), like MONAI's
        # symmetric=True
        assert mb.assd(pred, ref, voxelspacing=sp) == pytest.approx(np.r_[d_pr, d_rp].mean(), rel=1e-9)
        pooled = np.percentile(np.r_[d_pr, d_rp], 95)
        assert mb.hd95(pred, ref, voxelspacing=sp) == pytest.approx(pooled, rel=1e-9)
        n_diff += abs(M.hausdorff(pred, ref, sp, 95) - pooled) > 1e-3
        n_diff_assd += abs(M.assd(pred, ref, sp) - np.r_[d_pr, d_rp].mean()) > 1e-6
    # our HD95 and ASSD differ from medpy's in general
    assert n_diff >= len(realistic_pairs()) - 1
    assert n_diff_assd >= len(realistic_pairs()) - 1
    # the hand case of test_directed_distances_percentile_and_medpy_convention_by_hand
    pred = np.zeros((3, 7), bool)
    ref = np.zeros((3, 7), bool)
    pred[1, 0:5] = True
    ref[1, 0] = True
    assert mb.hd95(pred, ref) == pytest.approx(3.75)
    assert M.hausdorff(pred, ref, percentile=95) == pytest.approx(3.8)


# ---------------------------------------------------------------------------- properties

masks_small = st.sampled_from([(5, 6), (3, 4, 5)]).flatmap(
    lambda shape: st.tuples(hnp.arrays(bool, shape), hnp.arrays(bool, shape))
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks_small)
def test_symmetry_and_bounds(pair):
    a, b = pair
    sp = (1.5, 0.7) if a.ndim == 2 else (2.0, 1.0, 0.6)
    for fn in (M.dice, M.jaccard):
        v = fn(a, b)
        assert 0.0 <= v <= 1.0
        assert v == pytest.approx(fn(b, a))
    for fn in (M.precision, M.recall, M.f1, M.percent_match):
        assert 0.0 <= fn(a, b) <= 1.0
    assert M.corresponding_ratio(a, b) <= 1.0
    assert M.hausdorff(a, b, sp) == pytest.approx(M.hausdorff(b, a, sp))
    assert M.hausdorff(a, b, sp, 95) == pytest.approx(M.hausdorff(b, a, sp, 95))
    assert M.hausdorff(a, b, sp, 95) <= M.hausdorff(a, b, sp) + 1e-12
    assert M.assd(a, b, sp) == pytest.approx(M.assd(b, a, sp))
    assert M.assd(a, b, sp) >= 0
    nsd = M.surface_dice(a, b, sp, 1.0)
    assert 0.0 <= nsd <= 1.0 and nsd == pytest.approx(M.surface_dice(b, a, sp, 1.0))
    assert M.jaccard(a, b) <= M.dice(a, b) + 1e-12


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masks_small)
def test_identity_is_perfect(pair):
    a, _ = pair
    res = M.evaluate_case(a, a, (1.0,) * a.ndim, prob=a.astype(float))
    for k in ("dice", "jaccard", "precision", "recall", "f1", "percent_match", "corresponding_ratio", "nsd"):
        assert res[k] == 1.0
    assert res["hd"] == res["hd95"] == res["assd"] == 0.0
    assert res["soft_dice"] == 1.0
    if res["auc_defined"]:
        assert res["auc"] == 1.0 and res["ap"] == 1.0


# ---------------------------------------------------------------------------- luo2020 Eq. 4, both readings
def test_soft_dice_eq4_printed_and_dot_by_hand():
    """2 sum (p g)^2 / (sum p^2 + sum g^2) (as printed) and 2 sum p g / (...) (the dot reading)."""
    prob = np.array([0.5, 1.0, 0.0, 0.2])
    ref = np.array([1, 1, 0, 0])
    # sum p^2 = .25 + 1 + 0 + .04 = 1.29; sum g^2 = 2
    assert M.soft_dice(prob, ref, numerator="printed") == pytest.approx(2 * (0.25 + 1.0) / 3.29)
    assert M.soft_dice(prob, ref, numerator="dot") == pytest.approx(2 * 1.5 / 3.29)
    assert M.soft_dice(prob, ref) == M.soft_dice(prob, ref, numerator="dot")
    # p^2 <= p: the printed reading is never above the dot one
    assert M.soft_dice(prob, ref, numerator="printed") < M.soft_dice(prob, ref, numerator="dot")
    with pytest.raises(ParameterError):
        M.soft_dice(prob, ref, numerator="l1")


@pytest.mark.parametrize("numerator", ["printed", "dot"])
def test_soft_dice_eq4_is_hard_dice_on_binary_inputs(numerator):
    rng = np.random.default_rng(3)
    for _ in range(20):
        pred = rng.random((3, 5, 6)) > 0.6
        ref = rng.random((3, 5, 6)) > 0.5
        assert M.soft_dice(pred.astype(float), ref, numerator=numerator) == pytest.approx(M.dice(pred, ref))
    z = np.zeros((2, 3))
    assert M.soft_dice(z, z, numerator=numerator) == 1.0       # both empty
    assert M.soft_dice(z + 0.3, z, numerator=numerator) == 0.0   # prediction only


def test_soft_dice_sums_pool_over_slices_and_patients():
    """Sums are additive: pooling two patients (or per-slice sums) gives the soft Dice of the union,
    which is not the mean of the parts."""
    rng = np.random.default_rng(0)
    p1, p2 = rng.random((4, 3, 3)), rng.random((2, 3, 3))
    g1, g2 = rng.random((4, 3, 3)) > 0.5, rng.random((2, 3, 3)) > 0.7
    s1, s2 = M.soft_dice_sums(p1, g1), M.soft_dice_sums(p2, g2)
    pooled = {k: s1[k] + s2[k] for k in s1}
    for num in ("printed", "dot"):
        whole = M.soft_dice(np.concatenate([p1, p2]), np.concatenate([g1, g2]), numerator=num)
        assert M.soft_dice_from_sums(pooled, num) == pytest.approx(whole)
    per_slice = M.soft_dice_sums(p1, g1, axis=(1, 2))
    assert per_slice["p2"].shape == (4,)
    assert per_slice["pg"].sum() == pytest.approx(s1["pg"])
    by_slice = M.soft_dice_from_sums(per_slice, "printed")
    assert by_slice.shape == (4,)
    assert by_slice[1] == pytest.approx(M.soft_dice(p1[1], g1[1], numerator="printed"))
    # a slice with nothing predicted and nothing to find scores 1, element-wise too
    assert M.soft_dice_from_sums({"pg2": np.zeros(2), "pg": np.zeros(2), "p2": np.array([0.0, 1.0]),
                                  "g2": np.zeros(2)}, "printed").tolist() == [1.0, 0.0]


# ----------------------------------------------------------------------------------- several raters
def _three_raters():
    a = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
    b = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    c = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], bool)
    return a, b, c


def test_majority_vote_and_pairwise_dice_by_hand():
    a, b, c = _three_raters()
    assert M.majority_vote([a, b, c]).astype(int).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    assert M.majority_vote([a, c]).astype(int).tolist() == [[0, 1, 0, 0], [0, 1, 0, 0]]  # a tie is out
    mean, pairs = M.pairwise_dice([a, b, c])
    # |a|=4 |b|=5 |c|=3; a&b=4, a&c=2, b&c=3
    assert pairs == pytest.approx([8 / 9, 4 / 7, 6 / 8]) and mean == pytest.approx((8 / 9 + 4 / 7 + 6 / 8) / 3)
    with pytest.raises(DataError, match="at least 2 raters"):
        M.pairwise_dice([a])
    with pytest.raises(DataError, match="differ in shape"):
        M.majority_vote([a, a[:, :3]])


def test_staple_matches_simpleitk_and_finds_the_worse_rater():
    sitk = pytest.importorskip("SimpleITK")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    masks = [((yy - 20 - k) ** 2 + (xx - 20) ** 2 < r * r) ^ (rng.random((40, 40)) < 0.02)
             for k, r in enumerate((9, 10, 12))]
    masks = [m[None] for m in masks]
    s = M.staple(masks)
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    ref = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks]))
    np.testing.assert_allclose(s.probability, ref, atol=1e-6)
    np.testing.assert_allclose(s.sensitivity, f.GetSensitivity(), atol=1e-6)
    np.testing.assert_allclose(s.specificity, f.GetSpecificity(), atol=1e-6)
    assert s.sensitivity.argmin() == 0 and s.specificity.argmin() == 2  # the tight and the wide rater
    assert s.mask().shape == masks[0].shape and s.mask().dtype == bool


def test_staple_of_agreeing_raters_is_their_mask_and_of_empty_ones_is_empty():
    a, _, _ = _three_raters()
    s = M.staple([a, a, a])
    assert np.array_equal(s.mask(), a) and s.sensitivity == pytest.approx(1.0, abs=1e-6)
    empty = M.staple([np.zeros((3, 3), bool)] * 2)
    assert not empty.mask().any() and empty.iterations == 0
    with pytest.raises(ParameterError, match="prior must be in"):
        M.staple([a, a], prior=0.0)
