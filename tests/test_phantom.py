"""The NPC digital phantom: determinism, anatomy and label consistency, lesions and stages, geometry
round trip through the dataset format, the contrasts each modality should (not) show, DCE timing,
parameters, and the data chapter."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from npcrepro.datasets.format import open_dataset
from npcrepro.errors import DataError, ParameterError
from npcrepro import io, metrics, phantom
from npcrepro.phantom import anatomy, lesions
from npcrepro.phantom.make import _streams
from npcrepro.phantom.measure import core

ALL = ("CT", "T1", "T2", "CET1", "CECT", "DCE")


@pytest.fixture(scope="module")
def cases():
    """Four smoke patients, one per T stage, with every modality (DCE included)."""
    return [phantom.make_case(100 + t, preset="smoke", modalities=ALL, t_stage=t) for t in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def cpu_cases():
    """Two cpu-preset patients: mucosa is 3-4 mm thick, so contrast needs the cpu grid's 2 mm."""
    return [phantom.make_case(21, preset="cpu", modalities=ALL),
            phantom.make_case(22, preset="cpu")]


def _centroid(mask: np.ndarray, case) -> np.ndarray:
    """Centroid in scanner mm (z, y, x)."""
    return np.asarray(case.origin) + np.argwhere(mask).mean(0) * np.asarray(case.spacing)


# ------------------------------------------------------------------------------ determinism
def test_same_seed_same_arrays_different_seed_differs():
    a = phantom.make_case(7, preset="smoke")
    b = phantom.make_case(7, preset="smoke")
    c = phantom.make_case(8, preset="smoke")
    assert a.images.keys() == b.images.keys() == {"CT", "T1", "T2", "CET1", "CECT"}
    for k in a.images:
        assert a.images[k].dtype == np.float32
        np.testing.assert_array_equal(a.images[k], b.images[k])
    assert a.labels.keys() == b.labels.keys()
    for k in a.labels:
        assert a.labels[k].dtype == bool
        np.testing.assert_array_equal(a.labels[k], b.labels[k])
    assert a.meta == b.meta
    assert not np.array_equal(a.images["CT"], c.images["CT"])
    assert not np.array_equal(a.labels["GTVp"], c.labels["GTVp"])


def test_rendering_fewer_modalities_keeps_the_patient(cases):
    full = cases[2]
    ct = phantom.make_case(full.meta["seed"], preset="smoke", modalities=("CT",), t_stage=3)
    assert set(ct.images) == {"CT"}
    np.testing.assert_array_equal(ct.images["CT"], full.images["CT"])
    for k in full.labels:
        np.testing.assert_array_equal(ct.labels[k], full.labels[k])


def test_slab_and_piece_sizes_do_not_change_a_single_value(monkeypatch):
    """Distances, partial volume, the layer blend, the table noise and the DCE sum work a cache-sized
    slab at a time: a case made three planes (and 1,001 noise values) at a time is the same bytes."""
    from npcrepro.phantom import render, scanners

    params = dict(preset="smoke", modalities=ALL, table_noise=True, integer_images=True, dce_frames=6)
    whole = phantom.make_case(8, **params)
    monkeypatch.setattr(render, "SLAB_VOXELS", 3 * 64 * 64)  # the smoke grid's planes are 64 x 64
    monkeypatch.setattr(scanners, "_PIECE", 1001)
    assert render.slabs((32, 64, 64)) == [slice(a, a + 3) for a in range(0, 32, 3)]  # the last holds two
    assert render.slabs((2, 3, 4)) == [slice(0, 1024)]
    planes = phantom.make_case(8, **params)
    for k in whole.images:
        np.testing.assert_array_equal(planes.images[k], whole.images[k], err_msg=k)
    for k in whole.labels:
        np.testing.assert_array_equal(planes.labels[k], whole.labels[k], err_msg=k)


def test_layers_read_the_same_distances_from_a_root_that_covers_only_them():
    """The painting's shared coordinates cover the block its layers need, not the whole grid: each
    layer's block and distances are those it gets on its own."""
    from npcrepro.phantom import render
    from npcrepro.phantom.sdf import Sphere

    anat = anatomy.build(_streams(3)["anatomy"])
    grid = render.Grid.centred((24, 160, 160), (3.5, 2.0, 2.0))
    layers = anat.layers[:3] + anat.layers[-3:]
    pad = render.pad_for(grid)
    root = render.View.covering(grid, anat.pose, [(layer.shape, pad) for layer in layers])
    assert np.prod(root.shape) < 0.6 * np.prod(grid.shape)  # the head, not the field of view
    for layer in layers:
        alone = render.on_grid(layer.shape, grid, anat.pose)
        shared = render.on_grid(layer.shape, grid, anat.pose, cache=render.Cache(), root=root)
        assert shared[0].slices == alone[0].slices, layer.name
        np.testing.assert_array_equal(shared[1], alone[1], err_msg=layer.name)
    far = Sphere((0.0, 0.0, 5000.0), 10.0)  # off the grid
    assert render.View.covering(grid, anat.pose, [(far, pad)]) is None
    assert render.View.covering(grid, anat.pose, []) is None


@pytest.mark.parametrize("n_planes", [1, 2, 3, 7])
def test_partial_volume_from_the_distance_and_its_gradient(monkeypatch, n_planes):
    """``f = clip(1/2 - d / w, 0, 1)`` with ``w`` the summed |central differences| (one-sided at the
    edges), clamped to [1e-3, sum of the sides], the same whether computed whole or a plane at a time."""
    from npcrepro.phantom import render

    d = np.random.default_rng(n_planes).normal(0, 3, (n_planes, 4, 5)).astype(np.float32)
    spacing = (3.0, 1.0, 1.0)
    w = sum(np.abs(np.gradient(d, axis=ax)) for ax in range(3) if d.shape[ax] > 1)
    expected = np.clip(0.5 - d / np.clip(w, 1e-3, 5.0), 0, 1)
    np.testing.assert_allclose(render.fraction(d, spacing), expected, rtol=1e-6, atol=1e-7)
    whole = render.fraction(d, spacing)
    monkeypatch.setattr(render, "SLAB_VOXELS", 1)
    np.testing.assert_array_equal(render.fraction(d, spacing), whole)
    plane = np.zeros((1, 1, 3), np.float32)  # a lone voxel row: only the x differences count
    plane[0, 0] = [-1.0, 0.0, 1.0]
    np.testing.assert_allclose(render.fraction(plane, spacing)[0, 0], [1.0, 0.5, 0.0])


def test_the_raters_box_is_the_extent_of_the_tumour():
    from npcrepro.phantom.raters import _extent

    rng = np.random.default_rng(0)
    for _ in range(20):
        m = np.zeros((9, 11, 13), bool)
        m[tuple(rng.integers(0, n, 4) for n in m.shape)] = True
        assert _extent(m) == [(int(a.min()), int(a.max())) for a in np.nonzero(m)]
    m = np.zeros((3, 3, 3), bool)
    m[2, 0, 1] = True
    assert _extent(m) == [(2, 2), (0, 0), (1, 1)]


def test_dce_frames_are_the_same_bytes_with_any_number_of_threads():
    """The DCE frames mix the tissues' curves by their fractions in a fixed order: a BLAS product's last
    bits followed its thread count (frames 60-63 of a smoke case differed between 1 and 2 threads)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from npcrepro.phantom.scanners import mix

    curves = np.array([[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]], np.float32)
    weights = np.array([[1.0, 0.0], [0.5, 1.0], [0.0, 0.0]], np.float32)
    np.testing.assert_array_equal(mix(curves, weights), [[2.0, 2.0], [5.0, 4.0]])
    rng = np.random.default_rng(1)
    curves, weights = rng.random((9, 20), np.float32), rng.random((20, 70_001), np.float32)
    np.testing.assert_allclose(mix(curves, weights), curves.astype(float) @ weights, rtol=1e-5)
    made = {}
    for n in (1, 4):
        with threadpoolctl.threadpool_limits(n):
            made[n] = phantom.make_case(5, preset="smoke", modalities=("DCE",))
    for k, frame in made[1].images.items():
        np.testing.assert_array_equal(made[4].images[k], frame, err_msg=k)


def test_case_seeds_are_distinct_and_stable():
    seeds = [phantom.case_seed(0, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert seeds[3] == phantom.case_seed(0, 3)
    assert phantom.case_seed(1, 3) != seeds[3]


# ------------------------------------------------------------------------------ labels, anatomy
def test_structures_present_and_documented(cases):
    for case in cases:
        assert set(case.labels) <= set(phantom.STRUCTURES)
        for organ in phantom.ORGANS + ("GTVp", "CTVp", "CTVnd", "GTVp_truth", *phantom.RATERS, "Body", "Muscle",
                                        "Mucosa", "Bone", "Airway", "Fat"):
            assert organ in case.labels and case.labels[organ].any(), (case.name, organ)
        assert ("GTVnd" in case.labels) == (case.meta["n_stage"] != "N0")
        assert case.meta["t_stage"] in ("T1", "T2", "T3", "T4")
        assert case.meta["volumes_cm3"]["GTVp"] > 0
        assert case.shape == phantom.PRESETS["smoke"].shape
    n0 = phantom.make_case(5, preset="smoke", n_stage=0)
    assert "GTVnd" not in n0.labels and n0.meta["n_stage"] == "N0"


def test_organs_that_cannot_overlap_do_not(cases):
    pairs = [("Eye_L", "Brainstem"), ("Eye_R", "Brainstem"), ("Parotid_L", "SpinalCord"),
             ("Parotid_R", "SpinalCord"), ("GTVp", "Airway"), ("GTVp", "Brainstem"),
             ("GTVp", "SpinalCord"), ("Mandible_L", "Mandible_R"), ("Eye_L", "Eye_R"),
             ("OpticNerve_L", "Chiasm"), ("Brainstem", "SpinalCord"), ("Parotid_L", "Mandible_L")]
    for case in cases:
        for a, b in pairs:
            if a in case.labels and b in case.labels:
                assert not (case.labels[a] & case.labels[b]).any(), (case.name, a, b)
        body = case.labels["Body"]
        for s in ("GTVp", "GTVnd", "CTVp", "CTVnd", *phantom.RATERS):
            if s in case.labels:
                assert not (case.labels[s] & ~body).any(), (case.name, s)
        assert not (case.labels["GTVp"] & ~case.labels["CTVp"]).any()
        if "GTVnd" in case.labels:
            assert not (case.labels["GTVnd"] & ~case.labels["CTVnd"]).any()


def test_anatomical_layout(cases):
    for case in cases:
        c = {k: _centroid(v, case) for k, v in case.labels.items()}
        # x grows towards the patient's left (LPS); y posterior; z superior
        assert c["Mandible_L"][2] > c["Mandible_R"][2] and c["Parotid_L"][2] > c["Parotid_R"][2]
        assert c["Eye_L"][2] > c["Eye_R"][2]
        assert c["SpinalCord"][1] > c["Airway"][1] and c["SpinalCord"][1] > c["Mandible_L"][1] + 40
        assert c["Brainstem"][0] > c["Mandible_L"][0]                   # brainstem superior
        assert c["Eye_L"][0] > c["GTVp"][0] - 40 and c["Eye_L"][1] < c["Brainstem"][1]
        side = case.meta["tumour_side"]
        x_gtv = c["GTVp"][2]
        assert (x_gtv > -10) if side == "L" else (x_gtv < 10)


def test_lesion_at_least_one_centimetre(cases):
    for case in cases:
        idx = np.argwhere(case.labels["GTVp"])
        extent = (idx.max(0) - idx.min(0) + 1) * np.asarray(case.spacing)
        assert extent.max() >= 10.0
        assert 2.5 <= case.meta["volumes_cm3"]["GTVp"] <= 55.0


def test_t_stage_sets_volume_and_invasion():
    means = []
    for t in lesions.T_STAGES:
        vols = []
        for s in range(3):
            st = _streams(900 + s)
            anat = anatomy.build(st["anatomy"])
            les = lesions.build(st["lesion"], anat, t_stage=t)
            facts = les.facts["primary"]
            inv = facts["invaded_cm3"]
            assert les.t_stage == t
            if t == 1:
                assert max(inv.values()) < lesions.MIN_INVASION_CM3
            if t == 2:
                assert inv["parapharyngeal/prevertebral"] >= lesions.MIN_INVASION_CM3
                assert inv["bone"] < lesions.MIN_INVASION_CM3
            if t == 3:
                assert inv["bone"] >= lesions.MIN_INVASION_CM3
                assert inv["intracranial"] < lesions.MIN_INVASION_CM3
            if t == 4:
                assert inv["intracranial"] >= lesions.MIN_INVASION_CM3
            lo, hi = lesions.VOLUME_RANGE_CM3[t]
            assert 0.9 * lo <= facts["model_volume_cm3"] <= 1.1 * hi
            vols.append(facts["model_volume_cm3"])
        means.append(np.mean(vols))
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_resolution_is_a_parameter():
    coarse = phantom.make_case(11, preset="smoke", modalities=("CT",))
    fine = phantom.make_case(11, preset="smoke", modalities=("CT",), shape=(40, 96, 96),
                             spacing=(2.8, 2.667, 2.667))
    assert fine.shape == (40, 96, 96) and fine.spacing == (2.8, 2.667, 2.667)
    for s in ("GTVp", "Parotid_L", "Brainstem"):
        va = coarse.labels[s].sum() * np.prod(coarse.spacing)
        vb = fine.labels[s].sum() * np.prod(fine.spacing)
        assert abs(va - vb) / vb < 0.2, (s, va, vb)
    assert coarse.meta["t_stage"] == fine.meta["t_stage"]


def test_the_reference_gtvp_is_the_raters_majority_and_every_rater_is_kept(cases):
    from npcrepro.metrics.consensus import majority_vote, pairwise_dice

    for case in cases:
        drawn = [case.labels[k] for k in phantom.RATERS]
        assert len(drawn) == 3
        assert np.array_equal(case.labels["GTVp"], majority_vote(drawn))
        mean, pairs = pairwise_dice(drawn)
        assert 0.4 < mean < 0.97 and len(pairs) == 3, mean
        assert case.meta["raters"]["pairwise_dice"] == pytest.approx(mean, abs=1e-4)
        # the reference is not the tumour the images show, but it is close to it
        assert 0.6 < phantom.dice(case.labels["GTVp"], case.labels["GTVp_truth"]) < 1.0
        for k in phantom.RATERS:  # no rater contours air
            assert not (case.labels[k] & case.labels["Airway"]).any()
    same = phantom.make_case(100, preset="smoke", t_stage=1, rater_jitter_mm=0.0)
    assert pairwise_dice([same.labels[k] for k in phantom.RATERS])[0] > 0.97


def test_raters_spread_where_the_tumour_meets_tissue_of_its_own_signal():
    from npcrepro.phantom import raters
    from npcrepro.phantom.tissues import CLASS_ID

    d = raters.distinguishability(13.5)
    assert d[CLASS_ID["tumour"]] == 0
    # mucosa, adenoid and muscle are near the tumour's signal on T1, T2 and CET1; fat and air are not
    assert max(d[CLASS_ID[t]] for t in ("mucosa", "adenoid", "muscle")) < 2.5
    assert d[CLASS_ID["fat"]] > 5 and d[CLASS_ID["air"]] > 5
    # a half-space tumour whose edge meets mucosa on one side and fat on the other
    tissue = np.full((12, 40, 40), CLASS_ID["fat"], np.uint8)
    tissue[:, :, :20] = CLASS_ID["mucosa"]
    truth = np.zeros(tissue.shape, bool)
    truth[2:10, 10:30, 10:30] = True
    tissue[truth] = CLASS_ID["tumour"]
    drawn, consensus, facts = raters.observe(np.random.default_rng(1), truth, tissue, (1.0, 1.0, 1.0),
                                             jitter_mm=3.0)
    spread = np.logical_or.reduce(drawn) & ~np.logical_and.reduce(drawn)
    assert spread[:, :, :20].sum() > 2 * spread[:, :, 20:].sum()
    assert facts["pairwise_dice"] < 1.0 and consensus.dtype == bool
    with pytest.raises(ParameterError, match="floor"):
        raters.boundary_raters(np.random.default_rng(0), truth, 1.0, floor=1.5)


# ------------------------------------------------------------------------------ contrasts, DCE
def test_contrast_relations(cpu_cases):
    for case in cpu_cases:
        cnr = phantom.measure_cnr(case)
        tm = cnr["tumour vs muscle"]
        assert cnr.index[-1].startswith("DCE_") == ("DCE_000" in case.images)
        assert tm["CET1"] > tm["T1"], cnr
        assert tm["CT"] == tm.min() and tm["CT"] < 1.0, cnr
        assert tm["T2"] < tm["CET1"], cnr  # CET1 shows the tumour best; T2 is intermediate
        t2 = case.images["T2"]
        tumour = np.median(t2[core(case.labels["GTVp_truth"])])
        assert np.median(t2[case.labels["Muscle"]]) < tumour < np.median(t2[case.labels["Mucosa"]])


def test_ct_and_mri_values(cases):
    case = cases[0]
    ct, lab = case.images["CT"], case.labels
    assert np.median(ct[lab["Bone"]]) > 300
    assert np.median(ct[lab["Airway"]]) < -600
    assert -160 < np.median(ct[lab["Fat"]]) < -40
    assert abs(np.median(ct[lab["GTVp"]]) - np.median(ct[lab["Muscle"] & ~lab["Fat"]])) < 40
    for m in ("T1", "T2", "CET1"):
        assert case.images[m].min() >= 0  # magnitude images (Rician)


def test_cect_is_the_ct_grid_with_its_own_noise(cases):
    case = cases[1]
    ct, cect = case.images["CT"], case.images["CECT"]
    assert cect.shape == ct.shape == phantom.PRESETS["smoke"].shape and cect.dtype == np.float32
    assert not np.array_equal(cect, ct)
    lab = case.labels
    air = core(lab["Airway"])                                                 # away from its walls
    assert abs(np.median(cect[air]) - np.median(ct[air])) < 30                # air: unchanged
    assert abs(np.median(cect[lab["Fat"]]) - np.median(ct[lab["Fat"]])) < 15  # fat: unchanged
    assert np.median(cect[lab["Vessels"]]) > np.median(ct[lab["Vessels"]]) + 40  # blood: enhanced
    # the same noise model: sd of (CECT - noise-free) ~ sd of (CT - noise-free) ~ ct_noise_hu
    inside = lab["Body"] & (np.abs(ct) < 500) & (np.abs(cect) < 500)
    assert 0.8 < np.std(cect[inside & lab["Fat"]]) / np.std(ct[inside & lab["Fat"]]) < 1.25
    assert cect.min() >= -1024 and cect.max() <= 3071                         # clipped like CT


def test_adding_cect_leaves_every_other_channel_bit_identical():
    mods = ("CT", "T1", "T2", "CET1", "DCE")
    without = phantom.make_case(31, preset="smoke", modalities=mods, dce_frames=3)
    with_cect = phantom.make_case(31, preset="smoke", modalities=mods + ("CECT",), dce_frames=3)
    only = phantom.make_case(31, preset="smoke", modalities=("CECT",))
    assert set(with_cect.images) == set(without.images) | {"CECT"} and "CECT" not in without.images
    for k, v in without.images.items():
        np.testing.assert_array_equal(with_cect.images[k], v, err_msg=k)
    for k, v in without.labels.items():
        np.testing.assert_array_equal(with_cect.labels[k], v, err_msg=k)
    np.testing.assert_array_equal(only.images["CECT"], with_cect.images["CECT"])
    assert without.meta["scanner"]["gains"] == with_cect.meta["scanner"]["gains"]


def test_cect_raises_tumour_muscle_contrast_by_the_designed_amount():
    """Designed (tissues.py): tumour - muscle is 50 - 45 = 5 HU in CT and 85 - 52 = 33 HU in CECT,
    times the patient's bolus factor for the enhancement, plus the same +-1 HU jitter."""
    from npcrepro.phantom.tissues import TISSUES

    designed_ct = TISSUES["tumour"].ct - TISSUES["muscle"].ct
    designed_gain = (TISSUES["tumour"].cect - TISSUES["muscle"].cect) - designed_ct
    assert (designed_ct, designed_gain) == (5, 28)
    case = phantom.make_case(41, preset="smoke", t_stage="T3", modalities=("CT", "CECT"))
    bolus = case.meta["scanner"]["cect_bolus_factor"]
    assert 0.75 <= bolus <= 1.25
    lab = case.labels
    tumour = core(lab["GTVp"], ~lab["GTVp"])
    muscle = core(lab["Muscle"] & ~lab["GTVp"], lab["GTVp"])
    diff = {ch: float(case.images[ch][tumour].mean() - case.images[ch][muscle].mean())
            for ch in ("CT", "CECT")}
    gain = diff["CECT"] - diff["CT"]
    expected = (TISSUES["tumour"].cect - TISSUES["tumour"].ct
                - (TISSUES["muscle"].cect - TISSUES["muscle"].ct)) * bolus
    assert abs(gain - expected) < 8, (diff, expected)       # partial volume and noise: a few HU
    assert diff["CECT"] > diff["CT"] + 15, diff
    cnr = phantom.measure_cnr(case)
    assert cnr.loc["CECT", "tumour vs muscle"] > 2 * cnr.loc["CT", "tumour vs muscle"], cnr


def test_dce_peak_frame(cases):
    for case in cases:
        frames = [k for k in case.images if k.startswith("DCE_")]
        assert len(frames) == 65
        curves = phantom.dce_curves(case)
        assert 30 <= int(curves["GTVp"].idxmax()) <= 40, curves["GTVp"].idxmax()
        assert int(curves["Vessels"].idxmax()) < 15  # first pass of the bolus (frame 8)
        assert curves["GTVp"].iloc[34] > 1.5 * curves["GTVp"].iloc[:7].mean()


def test_dce_timing_parameters():
    case = phantom.make_case(3, preset="smoke", modalities=("DCE",), dce_frames=20, dce_bolus_frame=2,
                             dce_interval_s=20.0)
    assert sorted(case.images) == [f"DCE_{i:03d}" for i in range(20)]
    assert case.meta["scanner"]["dce_interval_s"] == 20.0


# ------------------------------------------------------------------------------ datasets
def test_generate_round_trip(tmp_path):
    ds = phantom.generate(tmp_path / "ph", 2, 3, preset="smoke", progress=False)
    assert ds.cases == ["npc_000", "npc_001"]
    assert ds.channels == ["CT", "T1", "T2", "CET1", "CECT"]   # CECT last: older indices kept
    assert ds.structures == list(phantom.STRUCTURES)
    ds2 = open_dataset(tmp_path / "ph")
    # the cohort's record, as read back, equals what a cache compares it with
    assert ds2.meta["npcrepro"]["extra"] == phantom.cohort_record(2, 3, "smoke")
    assert ds2.meta["npcrepro"]["extra"] != phantom.cohort_record(2, 3, "smoke", ct_noise_hu=1.0)
    loaded = ds2.load("npc_001")
    made = phantom.make_case(phantom.case_seed(3, 1), preset="smoke", name="npc_001")
    assert loaded.shape == made.shape
    np.testing.assert_allclose(loaded.spacing, made.spacing, rtol=1e-6)
    np.testing.assert_allclose(loaded.origin, made.origin, atol=1e-4)
    np.testing.assert_allclose(loaded.direction, np.eye(3), atol=1e-6)
    for k in made.images:
        np.testing.assert_allclose(loaded.images[k], made.images[k], rtol=1e-6, atol=1e-4)
    assert set(loaded.labels) == set(made.labels)
    for k in made.labels:
        np.testing.assert_array_equal(loaded.labels[k], made.labels[k])
    assert loaded.meta["t_stage"] == made.meta["t_stage"]
    assert loaded.meta["seed"] == phantom.case_seed(3, 1)
    # same seed -> same bytes (the first case of a one-case cohort is the same patient)
    again = phantom.generate(tmp_path / "again", 1, 3, preset="smoke", progress=False)
    files = [f for f in sorted((tmp_path / "ph").rglob("*npc_000*")) if f.is_file()]
    files += [f for f in sorted((tmp_path / "ph" / "structuresTr" / "npc_000").iterdir())]
    assert len(files) > 20
    for f in files:
        assert f.read_bytes() == (again.root / f.relative_to(tmp_path / "ph")).read_bytes(), f


def test_parallel_generation_writes_the_same_bytes(tmp_path):
    """Two worker processes make and write the cases: every file equals the one-process cohort's."""
    one = phantom.generate(tmp_path / "one", 3, 5, preset="smoke", progress=False, workers=1)
    two = phantom.generate(tmp_path / "two", 3, 5, preset="smoke", progress=False, workers=2)
    files = sorted(f.relative_to(one.root) for f in one.root.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(two.root) for f in two.root.rglob("*") if f.is_file())
    assert len(files) > 3 * 20
    for f in files:
        assert (one.root / f).read_bytes() == (two.root / f).read_bytes(), f


def _bad_case():
    raise ValueError("no such patient")


def test_a_failing_case_in_a_worker_names_it_and_leaves_no_folder(tmp_path):
    from npcrepro.datasets.format import write_dataset

    good = phantom.case_factories(1, 0, preset="smoke")
    # every structure of the good case declared, so that only the bad case can fail, whichever worker
    # finishes first (with structures=["GTVp"] the good case failed too, and its error won the race)
    structures = list(good[0]().labels)
    with pytest.raises(ValueError, match="no such patient"):  # as in one process
        write_dataset(tmp_path / "ds", [*good, _bad_case], channels=["CT"], structures=structures,
                      workers=2)
    assert not (tmp_path / "ds").exists()
    assert not any(tmp_path.iterdir())       # nor its temporary sibling


def test_default_workers(monkeypatch):
    from npcrepro.phantom.make import PARALLEL_VOXELS, default_workers

    monkeypatch.delenv("NPCREPRO_DATA_WORKERS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(40, phantom.PRESETS["cpu"].shape) == 1          # spawning costs more
    assert default_workers(40, phantom.PRESETS["gpu"].shape) == 16
    assert default_workers(3, phantom.PRESETS["gpu"].shape) == 3           # no idle workers
    assert np.prod(phantom.PRESETS["cpu"].shape) < PARALLEL_VOXELS <= np.prod(phantom.PRESETS["gpu"].shape)
    monkeypatch.setenv("NPCREPRO_DATA_WORKERS", "4")
    assert default_workers(40, phantom.PRESETS["cpu"].shape) == 4
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("NPCREPRO_DATA_WORKERS", bad)
        with pytest.raises(ParameterError, match="NPCREPRO_DATA_WORKERS"):
            default_workers(40, phantom.PRESETS["gpu"].shape)


def test_integer_images_are_the_same_patient_rounded_and_written_as_int16(tmp_path):
    """The gpu preset's images are whole numbers (``integer_images``), stored as int16 and read back
    exactly; the smoke and cpu presets keep float32 (the book's cohorts stay the bytes they were)."""
    from npcrepro.phantom.profiles import resolve

    assert [resolve({"preset": k})["integer_images"] for k in ("smoke", "cpu", "gpu")] == [False, False, True]
    as_float = phantom.make_case(4, preset="smoke")
    whole = phantom.make_case(4, preset="smoke", integer_images=True)
    for k, img in as_float.images.items():
        assert whole.images[k].dtype == np.float32
        np.testing.assert_array_equal(whole.images[k], np.rint(img))   # rounding is the only change
        assert not np.array_equal(img, np.rint(img))
    for k, m in as_float.labels.items():
        np.testing.assert_array_equal(whole.labels[k], m)
    ds = phantom.generate(tmp_path / "ph", 1, 4, preset="smoke", integer_images=True, progress=False)
    assert ds.meta["npcrepro"]["extra"]["params"]["integer_images"] is True
    made = phantom.make_case(phantom.case_seed(4, 0), preset="smoke", integer_images=True, name="npc_000")
    loaded = ds.load("npc_000")
    for i, k in enumerate(ds.channels):
        assert io.read(ds.root / "imagesTr" / f"npc_000_{i:04d}.nii.gz").array.dtype == np.int16
        assert loaded.images[k].dtype == np.float32
        np.testing.assert_array_equal(loaded.images[k], made.images[k])
    floats = phantom.generate(tmp_path / "f", 1, 4, preset="smoke", progress=False)
    assert io.read(floats.root / "imagesTr" / "npc_000_0001.nii.gz").array.dtype == np.float32
    with pytest.raises(ParameterError, match="integer_images"):
        phantom.make_case(0, preset="smoke", integer_images="yes")


def test_table_noise_is_normal_noise_of_the_same_sd_read_from_16_random_bits():
    """``table_noise`` (the gpu preset's): the normal values of :data:`scanners.NORMAL_TABLE` chosen by
    16 bits of the stream's bit generator, four per 64-bit draw, little-endian; the same distribution
    as numpy's normal draws for Gaussian and Rician noise, other values; smoke and cpu keep numpy's."""
    from scipy import stats

    from npcrepro.phantom import scanners
    from npcrepro.phantom.profiles import resolve

    t = scanners.NORMAL_TABLE.astype(np.float64)
    assert scanners.NORMAL_TABLE.dtype == np.float32 and t.size == 1 << 16
    assert abs(t.mean()) < 1e-6 and abs(t.std() - 1.0) < 1e-6
    np.testing.assert_allclose(t, -t[::-1], atol=1e-5)
    assert 4.2 < t.max() < 4.5 and np.all(np.diff(t) > 0)
    raw = int(np.random.default_rng(5).bit_generator.random_raw(2)[1])
    x = np.zeros(7, np.float32)   # the 5th to 7th values come from the second 64-bit draw
    scanners.gaussian(np.random.default_rng(5), x, 2.0, table=True)
    assert x[4:].tolist() == [float(scanners.NORMAL_TABLE[(raw >> 16 * k) & 0xFFFF] * np.float32(2.0))
                              for k in range(3)]
    n = scanners._CHUNK * 2 + 5   # not a whole number of chunks, nor of four values
    img = np.zeros(n, np.float32)
    scanners.gaussian(np.random.default_rng(1), img, 12.0, table=True)
    assert stats.kstest(img / 12.0, "norm").statistic < 0.002
    assert abs(float(img.std()) / 12.0 - 1.0) < 0.003
    again = scanners.gaussian(np.random.default_rng(1), np.zeros(n, np.float32), 12.0, table=True)
    np.testing.assert_array_equal(again, img)
    drawn = scanners.gaussian(np.random.default_rng(1), np.zeros(n, np.float32), 12.0)
    assert not np.array_equal(drawn, img)
    for signal in (0.0, 2.0, 10.0):   # Rayleigh at 0, Rician above
        by = {table: scanners.rician(np.random.default_rng(2), np.full(1 << 20, signal, np.float32), 1.0, table)
              for table in (False, True)}
        assert abs(float(by[True].mean() - by[False].mean())) < 0.01
        assert abs(float(by[True].std() - by[False].std())) < 0.01
    assert [resolve({"preset": k})["table_noise"] for k in ("smoke", "cpu", "gpu")] == [False, False, True]
    plain, tabled = phantom.make_case(4, preset="smoke"), phantom.make_case(4, preset="smoke", table_noise=True)
    for k, m in plain.labels.items():
        np.testing.assert_array_equal(tabled.labels[k], m)
    assert not np.array_equal(tabled.images["T2"], plain.images["T2"])
    with pytest.raises(ParameterError, match="table_noise"):
        phantom.make_case(0, preset="smoke", table_noise=1)


# ------------------------------------------------------------------------------ parameters
def test_parameters_are_checked():
    with pytest.raises(ParameterError, match="valid: .*preset"):
        phantom.make_case(0, prest="cpu")
    with pytest.raises(ParameterError, match="smoke, cpu, gpu"):
        phantom.make_case(0, preset="huge")
    with pytest.raises(ParameterError, match="valid: CT, T1, T2, CET1, CECT, DCE"):
        phantom.make_case(0, modalities=("PET",))
    with pytest.raises(ParameterError, match="T1, T2, T3, T4"):
        phantom.make_case(0, t_stage="T5")
    with pytest.raises(ParameterError, match="N0, N1, N2, N3"):
        phantom.make_case(0, n_stage=7)
    with pytest.raises(ParameterError):
        phantom.make_case(-1)
    with pytest.raises(ParameterError, match="spacing"):
        phantom.make_case(0, spacing=(1, 2))
    with pytest.raises(ParameterError, match="valid"):
        phantom.generate("unused", 2, 0, preset="smoke", colour="red")


def test_presets():
    assert set(phantom.PRESETS) == {"smoke", "cpu", "gpu"}
    gpu = phantom.PRESETS["gpu"]
    assert gpu.shape[1:] == (512, 512) and gpu.spacing == (3.0, 0.98, 0.98)
    assert 40 <= gpu.shape[0] <= 100
    cpu = phantom.PRESETS["cpu"]
    assert cpu.shape[1:] == (128, 128) and 24 <= cpu.shape[0] <= 32
    case = phantom.make_case(1, preset="smoke", t_stage="T2", n_stage="N1")
    assert case.meta["t_stage"] == "T2" and case.meta["n_stage"] == "N1"


# ------------------------------------------------------------------------------ the chapter
@pytest.mark.slow
def test_data_notebook_smoke(run_notebook):
    nb = run_notebook("data")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    glued = {o["metadata"].get("scrapbook", {}).get("name")
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if o.get("output_type") == "display_data"}
    assert {"n_patients", "median_volume", "dce_peak", "rater_dice"} <= glued


def test_data_chapter_table_names_each_chapters_ct(monkeypatch):
    """The data chapter's "which CT" table is read from the chapters and recipes, not written by hand."""
    from npcrepro import chapters

    for profile in ("smoke", "cpu", "gpu"):
        table = chapters.ct_inputs(profile).set_index("chapter")
        assert table["channel"].to_dict() == {"xue2020": "CECT", "luo2020": "CT", "leaderboard": "CECT"}, profile
        assert table.loc["xue2020", "CT"].startswith("contrast-enhanced")
        assert table.loc["leaderboard", "CT"] == table.loc["xue2020", "CT"]
        assert table.loc["luo2020", "CT"] == "non-contrast CT"
        assert (table["why"].str.len() > 20).all()
        assert "Sec. 1.1" in table.loc["xue2020", "why"]
    # template trains on T1 by default: no CT; switched to CT in its recipe, the table follows
    from npcrepro import profiles

    monkeypatch.setitem(profiles._paper_sizes("template")["cpu"], "channel", "CT")
    monkeypatch.setitem(profiles._paper_sizes("xue2020")["cpu"], "channel", "CT")
    table = chapters.ct_inputs("cpu").set_index("chapter")
    assert table.loc["template", "channel"] == "CT" and table.loc["xue2020", "channel"] == "CT"


# ----------------------------------------------------------------------------------- several raters
def _half_faint_sphere():
    """A sphere of radius 10 mm (1 mm voxels) whose left half borders bright tissue (a clear edge,
    contrast-to-noise 10) and whose right half borders tissue of its own intensity (no edge)."""
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:32, :32, :32]
    mask = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 < 100
    image = np.where(mask, 1.0, np.where(xx < 16, 11.0, 1.0)) + rng.standard_normal(mask.shape)
    return mask, image.astype(np.float32)


def test_raters_disagree_where_the_edge_is_faint():
    from npcrepro.phantom.raters import boundary_raters, edge_clarity

    mask, image = _half_faint_sphere()
    clarity = edge_clarity(image, mask, 1.0)
    shell = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_erosion(mask, iterations=2)
    left, right = shell & (np.mgrid[:32, :32, :32][2] < 14), shell & (np.mgrid[:32, :32, :32][2] > 18)
    assert np.median(clarity[left]) > 5 > 1 > np.median(clarity[right])
    raters, facts = boundary_raters(np.random.default_rng(0), mask, 1.0, clarity, n_raters=4, jitter_mm=3.0)
    assert len(raters) == 4 and len(facts["bias_mm"]) == 4 and all(r.dtype == bool for r in raters)
    spread = np.std(np.stack(raters).astype(float), axis=0)  # 0 where all raters agree

    def disagreement(region):
        return float(spread[region].mean())

    assert disagreement(right) > 3 * disagreement(left)
    mean_dsc, _ = metrics.pairwise_dice(raters)
    assert 0.5 < mean_dsc < 0.98
    again, _ = boundary_raters(np.random.default_rng(0), mask, 1.0, clarity, n_raters=4, jitter_mm=3.0)
    assert all(np.array_equal(a, b) for a, b in zip(raters, again))                # a seed, the same raters


def test_raters_agree_more_with_less_jitter_and_refuse_bad_input():
    from npcrepro.phantom.raters import boundary_raters

    mask, _ = _half_faint_sphere()
    same, _ = boundary_raters(np.random.default_rng(0), mask, 1.0, jitter_mm=0.0)
    assert all(np.array_equal(r, mask) for r in same)
    agree = [metrics.pairwise_dice(boundary_raters(np.random.default_rng(0), mask, 1.0, jitter_mm=j)[0])[0]
             for j in (0.5, 2.0, 4.0)]
    assert agree[0] > agree[1] > agree[2]
    with pytest.raises(ParameterError, match="n_raters"):
        boundary_raters(np.random.default_rng(0), mask, 1.0, n_raters=0)
    with pytest.raises(DataError, match="differ in shape"):
        boundary_raters(np.random.default_rng(0), mask, 1.0, np.zeros((3, 3, 3)))


def test_a_shared_misreading_moves_the_consensus_where_the_edge_is_faint_not_the_raters_agreement():
    from npcrepro.metrics.consensus import majority_vote
    from npcrepro.phantom.raters import boundary_raters, edge_clarity

    mask, image = _half_faint_sphere()
    clarity = edge_clarity(image, mask, 1.0)
    shell = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_erosion(mask, iterations=3)
    xx = np.mgrid[:32, :32, :32][2]
    clear, faint = shell & (xx < 14), shell & (xx > 18)

    def draw(shared_mm, rng_seed=0):
        return boundary_raters(np.random.default_rng(0), mask, 1.0, clarity, n_raters=5, jitter_mm=2.0,
                               shared_mm=shared_mm, shared_rng=np.random.default_rng(rng_seed))[0]

    alone, shared = draw(0.0), draw(4.0)
    # the shared draw comes from its own stream: with shared_mm 0 the raters are those drawn without it
    base, _ = boundary_raters(np.random.default_rng(0), mask, 1.0, clarity, n_raters=5, jitter_mm=2.0)
    assert all(np.array_equal(a, b) for a, b in zip(alone, base))
    moved = majority_vote(alone) ^ majority_vote(shared)
    assert moved[faint].sum() > 5 * max(int(moved[clear].sum()), 1)          # where the edge is faint
    assert metrics.dice(majority_vote(shared), mask) < metrics.dice(majority_vote(alone), mask) - 0.02
    # every rater carries the same misreading, so it barely changes how they agree with each other
    assert abs(metrics.pairwise_dice(shared)[0] - metrics.pairwise_dice(alone)[0]) < 0.03
    assert not np.array_equal(majority_vote(draw(4.0, 1)), majority_vote(shared))  # another patient's
    with pytest.raises(ParameterError, match="shared_mm"):
        draw(-1.0)
    # in a patient, the shared misreading moves the raters and their consensus, never the images
    plain, shared_case = phantom.make_case(5, preset="smoke", rater_shared_mm=0.0), phantom.make_case(5, preset="smoke")
    assert all(np.array_equal(plain.images[k], shared_case.images[k]) for k in plain.images)
    assert np.array_equal(plain.labels["GTVp_truth"], shared_case.labels["GTVp_truth"])
    assert not np.array_equal(plain.labels["GTVp"], shared_case.labels["GTVp"])


def test_ring_contrast_measures_separation_and_texture_against_the_surroundings():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    mask = (yy - 32) ** 2 + (xx - 32) ** 2 < 144
    image = np.where(mask, 10 + rng.standard_normal(mask.shape), 2 * rng.standard_normal(mask.shape))
    r = phantom.ring_contrast(image, mask, 1.0)                        # ring 1-4.5 mm (1-4 pixels) out
    assert r["contrast"] == pytest.approx(5.0, rel=0.1) and r["texture"] == pytest.approx(0.5, rel=0.1)
    r3 = phantom.ring_contrast(image[None].repeat(3, 0), mask[None].repeat(3, 0), (3.0, 1.0, 1.0))
    assert r3["contrast"] == pytest.approx(r["contrast"], rel=0.05)    # in-plane rings, slice by slice
    assert phantom.ring_contrast(image, np.zeros_like(mask), 1.0) is None
    case = phantom.make_case(100, preset="cpu", t_stage=3, modalities=("T2",))  # smoke: 4 mm pixels, no ring
    table = phantom.contrast_table([case], ["T2"]).assign(source="x")
    summary = phantom.contrast_summary(table)
    assert list(summary.columns) == ["source", "channel", "scans", "contrast", "texture"]
    assert summary["scans"].tolist() == [1] and summary["contrast"].iloc[0].startswith(
        f"{table['contrast'].iloc[0]:.2f} (")
    with pytest.raises(ParameterError, match="differ in shape"):
        phantom.ring_contrast(image, mask[:10], 1.0)


def test_edge_widths_measure_the_blur_of_a_tumour_edge_per_sector():
    from scipy import ndimage
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:160, :160]
    mask = (yy - 80) ** 2 + (xx - 80) ** 2 < 40 ** 2                   # 20 mm radius at 0.5 mm pixels
    straight = xx < 80
    for blur_mm in (1.0, 2.0):                                          # a Gaussian of sigma blur_mm across the edge
        edge = ndimage.gaussian_filter(np.where(straight, 100.0, 20.0), blur_mm / 0.5) + rng.normal(0, 2, mask.shape)
        assert phantom.edge_widths(edge, straight, 0.5, sectors=4) == pytest.approx([blur_mm] * 2, rel=0.05)
        image = ndimage.gaussian_filter(np.where(mask, 100.0, 20.0), blur_mm / 0.5) + rng.normal(0, 2, mask.shape)
        sigmas = phantom.edge_widths(image, mask, 0.5)                  # the disk's curvature: about 8 % sharper
        assert sigmas.size == 12 and np.median(sigmas) == pytest.approx(0.92 * blur_mm, rel=0.05)
    sharp = phantom.edge_widths(np.where(mask, 100.0, 20.0), mask, 0.5)
    assert sharp.size == 12 and sharp.max() < 0.3                       # only the pixel's own width is left
    # the tumour looks like its neighbour on the left half: those sectors have no edge to measure
    half = np.where(mask | (xx < 80), 100.0, 20.0) + rng.normal(0, 2, mask.shape)
    assert 4 <= phantom.edge_widths(half, mask, 0.5).size <= 8
    assert phantom.edge_widths(image, np.zeros_like(mask), 0.5).size == 0
    with pytest.raises(ParameterError, match="2D image and mask of one shape"):
        phantom.edge_widths(image, mask[:10], 0.5)
    case = phantom.make_case(100, preset="cpu", shape=(8, 96, 96), spacing=(3.5, 1.0, 1.0), t_stage=3,
                             modalities=("T2",))
    table = phantom.edge_table([case], ["T2", "CT"])                   # a channel the case lacks gives no rows
    assert list(table.columns) == ["case", "channel", "sigma_mm"] and set(table["channel"]) == {"T2"}
    assert len(table) >= 1 and (table["sigma_mm"] > 0).all()


def test_shape_table_measures_the_largest_cross_section():
    from npcrepro.datasets import Case

    m = np.zeros((3, 20, 20), bool)
    m[1, 2:12, 2:12] = True            # a 10 x 10 square: convex, round-ish
    m[2, 2:6, 2:6] = True
    m[1, 15:17, 15:17] = True          # a small second part, not the largest
    lobed = np.zeros((1, 20, 20), bool)
    lobed[0, 2:12, 2:5] = lobed[0, 2:5, 2:12] = True  # an L: not convex
    cases = [Case("sq", {"T2": np.zeros(m.shape, np.float32)}, {"GTVp": m}, (3.0, 2.0, 2.0)),
             Case("L", {"T2": np.zeros(lobed.shape, np.float32)}, {"GTVp": lobed}, (1.0, 1.0, 1.0)),
             Case("none", {"T2": np.zeros(m.shape, np.float32)}, {}, (1.0, 1.0, 1.0))]
    t = phantom.shape_table(cases).set_index("case")
    assert list(t.index) == ["sq", "L"]
    assert t.loc["sq", "area_mm2"] == pytest.approx(100 * 4.0)
    assert t.loc["sq", "diameter_mm"] == pytest.approx(2 * np.sqrt(400 / np.pi))
    assert t.loc["sq", "solidity"] == pytest.approx(1.0) and t.loc["L", "solidity"] < 0.8
    assert phantom.shape_table(cases[:1], pixel_mm=0.5).loc[0, "area_mm2"] == pytest.approx(25.0)


def test_tissue_values_sample_each_tissue_of_each_case():
    from npcrepro.datasets import Case

    img = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    left, right = np.zeros(img.shape, bool), np.zeros(img.shape, bool)
    left[0, 0, :5], right[9, 9, 5:] = True, True
    case = Case("p", {"CT": img}, {"Parotid_L": left, "Parotid_R": right}, (1.0, 1.0, 1.0))
    t = phantom.tissue_values([case])
    assert set(t["tissue"]) == {"Parotid"}
    assert sorted(t["value"]) == [0, 1, 2, 3, 4, 995, 996, 997, 998, 999]
    assert len(phantom.tissue_values([case], per_case=4)) == 4


def test_the_infiltrative_edge_is_wider_in_fat_and_marrow_and_irregular_where_stranding_is_given():
    from npcrepro.phantom.scanners import (INFILTRATION_SCALE, STRANDING_CLIP, STRANDING_LOG_SD,
                                          infiltration_width, max_infiltration_mm)
    from npcrepro.phantom.tissues import CLASS_ID

    host = np.full((4, 8, 40), CLASS_ID["muscle"], np.uint8)
    host[..., 20:] = CLASS_ID["marrow"]
    width = infiltration_width(host, (1.0, 1.0, 1.0), 4.0)
    assert width.dtype == np.float32 and width.shape == host.shape
    assert width[..., 2] == pytest.approx(np.full((4, 8), 4.0))                       # muscle: as given
    assert width[..., 38] == pytest.approx(np.full((4, 8), 4.0 * INFILTRATION_SCALE["marrow"]))
    assert 4.0 < width[0, 0, 20] < 4.0 * INFILTRATION_SCALE["marrow"]               # blended at the border
    assert np.all(np.diff(width[0, 0]) >= -1e-5)                                    # without a jump
    host[:] = CLASS_ID["mucosa"]
    field = np.linspace(-1, 1, host.size, dtype=np.float32).reshape(host.shape)
    strands = infiltration_width(host, (1.0, 1.0, 1.0), 4.0, field)
    assert strands == pytest.approx(4.0 * np.exp(STRANDING_LOG_SD * field), rel=1e-5)
    wild = infiltration_width(host, (1.0, 1.0, 1.0), 4.0, field * 100)              # clipped: bounded
    assert wild.max() == pytest.approx(4.0 * np.exp(STRANDING_LOG_SD * STRANDING_CLIP), rel=1e-5)
    assert max_infiltration_mm(4.0) == pytest.approx(2.0 * INFILTRATION_SCALE["marrow"]
                                                     * np.exp(STRANDING_LOG_SD * STRANDING_CLIP))


def test_a_tumour_fades_farther_into_the_fascial_planes_and_marrow_and_raters_read_the_fade():
    from npcrepro.phantom import render, scanners
    from npcrepro.phantom.raters import distinguishability, reading_image
    from npcrepro.phantom.tissues import CLASS_ID

    streams = _streams(phantom.case_seed(0, 3))
    anat = anatomy.build(streams["anatomy"])
    les = lesions.build(streams["lesion"], anat, t_stage=3)
    grid = render.Grid.centred((40, 96, 96), (2.5, 2.0, 2.0), (0.0, 0.0, 0.0))
    painted = scanners.paint(anat, les, grid, scanners.draw_contrast(streams["contrast"]), ("CET1",),
                             infiltration_mm=4.0)
    view, frac, host = painted.tumour_edge
    for ax, s in enumerate(view):  # the view holds the whole fade: nothing painted on its faces
        for end in (s.start, s.stop - 1):
            if 0 < end < grid.shape[ax] - 1:
                assert np.take(frac, end - s.start, axis=ax).max() == 0
    outside = ~painted.labels["GTVp"][view]
    ring = outside & (ndimage.distance_transform_edt(outside, sampling=grid.spacing) <= 3.0)

    def fade(*names):  # the tumour's mean fraction within 3 mm outside its label, by the tissue beneath
        sel = ring & np.isin(host, [CLASS_ID[n] for n in names])
        assert sel.sum() > 50
        return float(frac[sel].mean())

    assert fade("marrow") > fade("muscle") + 0.05 and fade("fat", "soft") > fade("muscle") + 0.04
    # the rater reads the fade: where the tumour is half painted over muscle, the image is half as far from it
    dist = distinguishability(13.5)
    box = tuple(slice(0, n) for n in grid.shape)
    sharp, read = reading_image(painted.tissue, box, 13.5), reading_image(painted.tissue, box, 13.5,
                                                                          painted.tumour_edge)
    half = ring & (host == CLASS_ID["muscle"]) & (np.abs(frac - 0.5) < 0.05)
    assert dist[CLASS_ID["tumour"]] == 0 and half.any()
    assert read[view][half] == pytest.approx((1 - frac[half]) * dist[CLASS_ID["muscle"]])
    assert np.array_equal(read[view][frac <= 0], sharp[view][frac <= 0])                 # beyond the fade
    necrotic = painted.tissue == CLASS_ID["necrosis"]
    assert np.array_equal(read[necrotic], sharp[necrotic])


def test_an_advanced_tumour_can_carry_a_non_enhancing_necrotic_core_inside_its_gtv(monkeypatch):
    from npcrepro.phantom import render, scanners
    from npcrepro.phantom.tissues import CLASS_ID

    monkeypatch.setattr(lesions, "NECROSIS_P", {3: 1.0, 4: 1.0})
    streams = _streams(phantom.case_seed(0, 3))
    anat = anatomy.build(streams["anatomy"])
    les = lesions.build(streams["lesion"], anat, t_stage=4)
    assert les.necrosis is not None and les.facts["necrosis"]["present"]
    grid = render.Grid.centred((40, 96, 96), (2.5, 2.0, 2.0), (0.0, 0.0, 0.0))
    contrast = scanners.draw_contrast(streams["contrast"])
    painted = scanners.paint(anat, les, grid, contrast, ("CT", "CET1", "T2"), infiltration_mm=4.0)
    core = painted.tissue == CLASS_ID["necrosis"]
    assert core.sum() > 10 and not (core & ~painted.labels["GTVp"]).any()  # inside the GTV
    tumour = painted.tissue == CLASS_ID["tumour"]
    cet1, t2 = painted.images["CET1"], painted.images["T2"]
    assert np.median(cet1[core]) < 0.5 * np.median(cet1[tumour])   # it does not enhance
    assert np.median(t2[core]) > np.median(t2[tumour])              # fluid: bright on T2
    monkeypatch.setattr(lesions, "NECROSIS_P", {})
    assert lesions.build(_streams(phantom.case_seed(0, 3))["lesion"], anat, t_stage=4).necrosis is None
