"""The dataset format (nnU-Net v2 raw + per-structure masks), its opener's checks, and splits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from npcrepro import DataError, io
from npcrepro.datasets import (Case, Fold, holdout, kfold, leave_one_out, load_splits, make_splits,
                               open_dataset, save_splits, write_dataset)

SPACING = (3.0, 0.8, 0.8)
ORIGIN = (-30.0, 12.0, -40.0)


def _case(name="c0", seed=0, shape=(6, 10, 12)) -> Case:
    rng = np.random.default_rng(seed)
    ct = rng.normal(40, 10, size=shape).astype(np.float32)
    t1 = rng.normal(300, 30, size=shape).astype(np.float32)
    ctv = np.zeros(shape, bool)
    ctv[1:5, 2:8, 2:9] = True
    gtv = np.zeros(shape, bool)
    gtv[2:4, 3:6, 3:6] = True  # inside the CTV: overlapping structures
    organ = np.zeros(shape, bool)
    organ[0:2, 0:3, 0:3] = True
    return Case(name, {"CT": ct, "T1": t1}, {"Organ": organ, "CTV": ctv, "GTV": gtv}, SPACING,
                ORIGIN, np.eye(3), {"t_stage": "T2"})


def _write(tmp_path, cases=None, **kw):
    cases = cases or [_case("c0", 0), _case("c1", 1)]
    return write_dataset(tmp_path / "ds", cases, channels=["CT", "T1"],
                         structures=["Organ", "CTV", "GTV"], name="test", source="unit", **kw)


def test_write_and_load_round_trip(tmp_path):
    ds = _write(tmp_path)
    assert ds.cases == ["c0", "c1"] and ds.channels == ["CT", "T1"]
    assert ds.structures == ["Organ", "CTV", "GTV"]
    meta = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "CT", "1": "T1"}
    assert meta["labels"] == {"background": 0, "Organ": 1, "CTV": 2, "GTV": 3}
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    assert (ds.root / "imagesTr" / "c0_0001.nii.gz").exists()
    src = _case("c0", 0)
    got = ds.load("c0")
    for c in src.images:
        np.testing.assert_array_equal(got.images[c], src.images[c])
    for s in src.labels:  # overlapping masks survive intact
        np.testing.assert_array_equal(got.labels[s], src.labels[s])
    np.testing.assert_allclose(got.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(got.origin, ORIGIN, atol=1e-5)
    assert got.meta["t_stage"] == "T2" and got.meta["source"] == "unit"


def test_whole_number_images_are_stored_as_int16_and_read_back_exactly():
    from npcrepro.datasets.format import stored

    whole = np.array([[-1024.0, 0.0, 3071.0]], np.float32)
    assert stored(whole).dtype == np.int16 and np.array_equal(stored(whole), whole)
    assert stored(whole.astype(np.float64)).dtype == np.int16
    assert stored(np.array([0.5, 1.0], np.float32)).dtype == np.float32      # not whole
    assert stored(np.array([40000.0, 1.0])).dtype == np.float32              # beyond int16
    assert stored(np.array([-32769.0])).dtype == np.float32
    assert stored(np.array([0.0, 0.5])).dtype == np.float32                  # float64 -> float32
    assert stored(np.array([3, 4], np.uint16)).dtype == np.uint16            # integers as they are
    assert stored(np.zeros((0, 2), np.float32)).dtype == np.float32


def test_a_whole_number_channel_round_trips_through_int16(tmp_path):
    src = _case("c0", 0)
    src.images["CT"] = np.rint(src.images["CT"])
    ds = _write(tmp_path, [src])
    assert io.read(ds.root / "imagesTr" / "c0_0000.nii.gz").array.dtype == np.int16
    assert io.read(ds.root / "imagesTr" / "c0_0001.nii.gz").array.dtype == np.float32
    got = ds.load("c0")
    assert got.images["CT"].dtype == np.float32
    np.testing.assert_array_equal(got.images["CT"], src.images["CT"])


def test_label_map_paints_later_structures_on_top(tmp_path):
    ds = _write(tmp_path)
    lm = io.read(ds.root / "labelsTr" / "c0.nii.gz").array
    src = _case()
    assert (lm[src.labels["GTV"]] == 3).all()
    assert (lm[src.labels["CTV"] & ~src.labels["GTV"]] == 2).all()


def test_absent_structure_stays_absent(tmp_path):
    c = _case()
    del c.labels["Organ"]
    ds = _write(tmp_path, [c])
    got = ds.load("c0")
    assert "Organ" not in got.labels and set(got.labels) == {"CTV", "GTV"}


def test_partial_load(tmp_path):
    ds = _write(tmp_path)
    got = ds.load("c1", channels=["T1"], structures=["GTV"])
    assert list(got.images) == ["T1"] and list(got.labels) == ["GTV"]
    with pytest.raises(DataError, match="no channel 'PET'"):
        ds.load("c1", channels=["PET"])


def test_test_cases_are_separate(tmp_path):
    ds = _write(tmp_path, test_cases=[_case("t0", 5)])
    assert ds.cases == ["c0", "c1"] and ds.test_cases == ["t0"]
    assert ds.load("t0").meta["split"] == "test"


def test_refuses_to_overwrite(tmp_path):
    _write(tmp_path)
    with pytest.raises(DataError, match="not empty"):
        _write(tmp_path)
    _write(tmp_path, overwrite=True)


def test_plain_nnunet_dataset_opens(tmp_path):
    root = tmp_path / "Dataset001_X"
    c = _case()
    io.write(io.Volume(c.images["CT"], SPACING), root / "imagesTr" / "a_0000.nii.gz")
    io.write(io.Volume(c.label_map(["CTV", "GTV"]), SPACING), root / "labelsTr" / "a.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "CTV": 1, "GTV": 2},
        "numTraining": 1, "file_ending": ".nii.gz"}), encoding="utf-8")
    ds = open_dataset(root)
    got = ds.load("a")
    assert ds.structures == ["CTV", "GTV"]
    np.testing.assert_array_equal(got.labels["GTV"], c.labels["GTV"])
    np.testing.assert_array_equal(got.labels["CTV"], c.labels["CTV"] & ~c.labels["GTV"])


def test_case_rejects_mixed_shapes():
    with pytest.raises(DataError, match="different shapes"):
        Case("x", {"CT": np.zeros((2, 3, 4))}, {"GTV": np.zeros((2, 3, 5), bool)}, (1, 1, 1))


# ------------------------------------------------------------------------ bad datasets
def test_missing_folder_and_json(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="dataset.json"):
        open_dataset(tmp_path / "empty")


def test_invalid_json(tmp_path):
    ds = _write(tmp_path)
    (ds.root / "dataset.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON"):
        open_dataset(ds.root)


def test_missing_channel_file(tmp_path):
    ds = _write(tmp_path)
    (ds.root / "imagesTr" / "c1_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="missing channel 'T1'") as exc:
        ds.load("c1")
    assert "c1_0001.nii.gz" in str(exc.value)


@pytest.mark.parametrize("gone", ["c1_0000.nii.gz", "c1_0001.nii.gz"])
def test_case_missing_any_channel_file_is_named_at_open(tmp_path, gone):
    ds = _write(tmp_path)
    (ds.root / "imagesTr" / gone).unlink()
    with pytest.raises(DataError, match=f"imagesTr/{gone}: missing channel .* of case 'c1'"):
        open_dataset(ds.root)


def test_case_with_only_a_label_file_is_listed_and_named(tmp_path):
    ds = _write(tmp_path)
    for i in (0, 1):
        (ds.root / "imagesTr" / f"c1_{i:04d}.nii.gz").unlink()
    with pytest.raises(DataError, match="c1_0000.nii.gz: missing channel 'CT' of case 'c1' "
                                        "\\(2 channel files missing in all\\)"):
        open_dataset(ds.root)


@pytest.mark.parametrize("field, value", [
    ("channel_names", ["CT", "T1"]), ("channel_names", "CT"), ("channel_names", {"0": 1}),
    ("channel_names", {"CT": "0"}), ("channel_names", {"0": "CT", "2": "T1"}),
    ("labels", ["background", "GTV"]), ("labels", {"background": 0, "GTV": "1"}),
    ("file_ending", 3), ("npcrepro", [])])
def test_mistyped_dataset_json_field_names_the_file_and_field(tmp_path, field, value):
    ds = _write(tmp_path)
    meta = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    meta[field] = value
    (ds.root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match=f"dataset.json: field '{field}' must ") as err:
        open_dataset(ds.root)
    assert str(ds.root / "dataset.json") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("what", ["shape", "spacing", "origin", "direction"])
def test_label_geometry_mismatch(tmp_path, what):
    ds = _write(tmp_path)
    path = ds.root / "labelsTr" / "c0.nii.gz"
    lab = io.read(path)
    bad = {
        "shape": lambda: io.Volume(np.zeros((6, 10, 13), np.uint8), lab.spacing, lab.origin),
        "spacing": lambda: io.Volume(lab.array, (3.0, 0.8, 0.9), lab.origin),
        "origin": lambda: io.Volume(lab.array, lab.spacing, (-30.0, 12.0, -39.0)),
        "direction": lambda: io.Volume(lab.array, lab.spacing, lab.origin,
                                       [[1, 0, 0], [0, 0, 1], [0, 1, 0]]),
    }[what]()
    io.write(bad, path)
    with pytest.raises(DataError, match=what) as exc:
        ds.load("c0")
    assert "c0.nii.gz" in str(exc.value) and "geometry mismatch" in str(exc.value)


def test_channel_geometry_mismatch(tmp_path):
    ds = _write(tmp_path)
    path = ds.root / "imagesTr" / "c0_0001.nii.gz"
    img = io.read(path)
    io.write(io.Volume(img.array, (2.5, 0.8, 0.8), img.origin), path)
    with pytest.raises(DataError, match="c0_0001.nii.gz.*spacing"):
        ds.load("c0")


def test_undeclared_label_value(tmp_path):
    ds = _write(tmp_path)
    path = ds.root / "labelsTr" / "c0.nii.gz"
    lab = io.read(path)
    arr = lab.array.copy()
    arr[0, 0, 0] = 9
    io.write(lab.with_array(arr), path)
    with pytest.raises(DataError, match=r"label values \[9\] are not declared"):
        ds.load("c0")


@pytest.mark.parametrize("dtype,value", [(None, None), (np.int16, -1), (np.uint8, 2), (np.float32, 0.5),
                                         (np.float32, 1.0 + 1e-6)])
def test_non_binary_structure_mask(tmp_path, dtype, value):
    ds = _write(tmp_path)
    path = ds.root / "structuresTr" / "c0" / "GTV.nii.gz"
    m = io.read(path)
    if dtype is None:
        arr = m.array * 2
    else:
        arr = m.array.astype(dtype)
        arr[0, 0, 0] = value
    io.write(m.with_array(arr), path)
    with pytest.raises(DataError, match="not binary"):
        ds.load("c0")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_binary_structure_mask_of_any_type_loads(tmp_path, dtype):
    ds = _write(tmp_path)
    path = ds.root / "structuresTr" / "c0" / "GTV.nii.gz"
    m = io.read(path)
    io.write(m.with_array(m.array.astype(dtype)), path)
    np.testing.assert_array_equal(ds.load("c0").labels["GTV"], m.array.astype(bool))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_intensities(tmp_path, bad):
    ds = _write(tmp_path)
    path = ds.root / "imagesTr" / "c1_0000.nii.gz"
    img = io.read(path)
    arr = img.array.copy()
    arr[1, 1, 1] = bad
    io.write(img.with_array(arr), path)
    with pytest.raises(DataError, match="1 NaN/inf intensities") as exc:
        ds.load("c1")
    assert "c1_0000.nii.gz" in str(exc.value)


def test_writer_rejects_non_finite(tmp_path):
    c = _case()
    c.images["CT"][0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        _write(tmp_path, [c])


def test_2d_image_where_3d_needed(tmp_path):
    ds = _write(tmp_path)
    path = ds.root / "imagesTr" / "c0_0000.nii.gz"
    io.write(io.Volume(np.zeros((10, 12), np.float32), (0.8, 0.8)), path)
    with pytest.raises(DataError, match="3D image is needed"):
        ds.load("c0")


def test_unknown_case_and_undeclared_structure(tmp_path):
    ds = _write(tmp_path)
    with pytest.raises(DataError, match="no case named 'zz'"):
        ds.load("zz")
    with pytest.raises(DataError, match="no structure 'Lens'"):
        ds.load("c0", structures=["Lens"])
    c = _case()
    c.labels["Lens"] = c.labels["GTV"]
    with pytest.raises(DataError, match="not declared"):
        write_dataset(tmp_path / "x", [c], channels=["CT", "T1"], structures=["GTV"])


def test_writer_refuses_a_nan_or_infinite_intensity_and_leaves_nothing(tmp_path):
    """One NaN or infinity anywhere in a channel (float32 or float64) is refused in one line, and no
    dataset folder is left; a whole-number image stays int16 on disk."""
    for i, bad in enumerate((np.nan, np.inf, -np.inf)):
        for dtype in (np.float32, np.float64):
            c = _case()
            c.images["T1"] = c.images["T1"].astype(dtype)
            c.images["T1"][2, 3, 4] = bad
            out = tmp_path / f"x{i}{np.dtype(dtype).name}"
            with pytest.raises(DataError, match="channel 'T1' has NaN/inf values"):
                write_dataset(out, [c], channels=["CT", "T1"], structures=["Organ", "CTV", "GTV"])
            assert not out.exists()
    c = _case()
    c.images["CT"] = np.rint(c.images["CT"])
    ds = write_dataset(tmp_path / "ok", [c], channels=["CT", "T1"], structures=["Organ", "CTV", "GTV"])
    assert io.read(ds.root / "imagesTr" / "c0_0000.nii.gz").array.dtype == np.int16


def test_writer_requires_every_channel(tmp_path):
    c = _case()
    del c.images["T1"]
    with pytest.raises(DataError, match="missing channel"):
        _write(tmp_path, [c])


# ------------------------------------------------------------------------------- splits
NAMES = [f"p{i:02d}" for i in range(12)]


def _no_leak(f: Fold, names=NAMES):
    assert not set(f.train) & set(f.test) and not set(f.val) & set(f.test)
    assert sorted(f.train + f.val + f.test) == sorted(names)


def test_loocv():
    folds = leave_one_out(NAMES)
    assert len(folds) == 12 and [f.test for f in folds] == [[n] for n in NAMES]
    for f in folds:
        _no_leak(f)


def test_kfold_covers_each_case_once_and_is_seeded():
    folds = kfold(NAMES, 5, seed=3, n_val=2)
    tested = sorted(n for f in folds for n in f.test)
    assert tested == NAMES and [len(f.test) for f in folds] == [3, 3, 2, 2, 2]
    for f in folds:
        _no_leak(f)
        assert len(f.val) == 2
    assert kfold(NAMES, 5, seed=3, n_val=2) == folds
    assert kfold(NAMES, 5, seed=4, n_val=2) != folds


def test_kfold_val_fraction():
    folds = kfold(NAMES, 4, val_fraction=0.25)
    assert all(len(f.val) == 2 for f in folds)  # 25 % of 9 training cases, rounded


def test_holdout_counts_and_fractions():
    (f,) = holdout(NAMES, n_test=3, n_val=2, seed=1)
    assert (len(f.train), len(f.val), len(f.test)) == (7, 2, 3)
    _no_leak(f)
    (g,) = holdout(NAMES, n_test=0.25, n_val=0.25)
    assert (len(g.train), len(g.val), len(g.test)) == (6, 3, 3)


def test_make_splits_dispatch_and_errors():
    assert len(make_splits(NAMES, "kfold", k=3)) == 3
    with pytest.raises(DataError, match="unknown split scheme"):
        make_splits(NAMES, "bootstrap")
    with pytest.raises(DataError, match="at least 5"):
        kfold(NAMES[:3], 5)
    with pytest.raises(DataError, match="no training cases"):
        holdout(NAMES, n_test=6, n_val=6)
    with pytest.raises(DataError, match="both train and test"):
        Fold(["a", "b"], [], ["b"])


def test_splits_json_round_trip(tmp_path):
    folds = kfold(NAMES, 3, seed=0, n_val=1)
    p = save_splits(folds, tmp_path / "splits.json")
    assert load_splits(p, NAMES) == folds
    with pytest.raises(DataError, match="unknown cases"):
        load_splits(p, NAMES[:5])
    (tmp_path / "bad.json").write_text('[{"val": []}]', encoding="utf-8")
    with pytest.raises(DataError, match="not a splits file"):
        load_splits(tmp_path / "bad.json")


# ------------------------------------------------------------------------------ slice-level k-fold
def test_slice_kfold_puts_one_patients_slices_on_both_sides():
    """The leak a k-fold over pooled slices has and a patient-level k-fold never has."""
    from npcrepro.datasets import slice_kfold
    from npcrepro.datasets.splits import slice_part

    slices = {n: list(range(3, 3 + 10 + i)) for i, n in enumerate(NAMES)}   # 10..21 slices each
    folds = slice_kfold(slices, 5, seed=1)
    assert len(folds) == 5
    for f in folds:
        assert f.shared_cases == NAMES                 # every patient trains and is tested in every fold
        for n in NAMES:
            assert not set(f.train[n]) & set(f.test[n])
            assert sorted(f.train[n] + f.test[n]) == slices[n]
        n_train, n_test = f.counts()
        assert n_train + n_test == sum(map(len, slices.values()))
    for n in NAMES:   # each slice tested exactly once, parts near-equal (numpy.array_split)
        tested = sorted(i for f in folds for i in f.test[n])
        assert tested == slices[n]
        sizes = [len(f.test[n]) for f in folds]
        assert max(sizes) - min(sizes) <= 1
        assert folds[2].test[n] == slice_part(n, slices[n], 2, 5, seed=1)   # one case alone, same part
    assert slice_kfold(slices, 5, seed=1) == folds
    assert slice_kfold(slices, 5, seed=2) != folds
    # one case's parts do not depend on the other cases
    assert slice_kfold({NAMES[0]: slices[NAMES[0]]}, 5, seed=1)[0].test == {NAMES[0]: folds[0].test[NAMES[0]]}
    # patient-level: never a patient on both sides
    for f in kfold(NAMES, 5, seed=1):
        assert not set(f.train) & set(f.test)


def test_slice_kfold_errors_and_short_cases():
    from npcrepro.datasets import SliceFold, slice_kfold

    folds = slice_kfold({"a": [0, 1], "b": list(range(8))}, 4)
    assert sum("a" in f.test for f in folds) == 2       # 2 slices: tested in 2 of 4 folds only
    assert all("a" in f.train or "a" in f.test for f in folds)
    with pytest.raises(DataError, match="at least 2"):
        slice_kfold({"a": [0, 1]}, 1)
    with pytest.raises(DataError, match="not unique"):
        slice_kfold({"a": [0, 0, 1]}, 2)
    with pytest.raises(DataError, match="both train and test"):
        SliceFold({"a": [0, 1]}, {"a": [1]})


def test_inputs_that_used_to_pass_silently_are_one_error_each(tmp_path):
    """A mistyped spacing_known, a case file hidden by its name, more patients asked for than the
    dataset holds: each names what is wrong instead of going on with something else."""
    import shutil

    from npcrepro.datasets import open_dataset
    from npcrepro.profiles import load_data, resolve

    ds = _write(tmp_path)
    meta = json.loads((ds.root / "dataset.json").read_text(encoding="utf-8"))
    meta["npcrepro"]["spacing_known"] = "no"
    (ds.root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(DataError, match=r"field 'spacing_known' must be true or false, got str \"no\""):
        open_dataset(ds.root)
    meta["npcrepro"]["spacing_known"] = False
    (ds.root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    assert open_dataset(ds.root).spacing_known is False

    hidden = ds.root / "imagesTr" / ".._0000.nii.gz"
    shutil.copy(ds.root / "imagesTr" / "c0_0000.nii.gz", hidden)
    with pytest.raises(DataError, match=r"\.\._0000\.nii\.gz: a case file whose name starts with '\.' is hidden"):
        open_dataset(ds.root)
    hidden.unlink()
    (ds.root / "imagesTr" / ".DS_Store").write_bytes(b"\0")           # not a case file: left alone
    assert open_dataset(ds.root).cases == ["c0", "c1"]

    P = resolve("template", "smoke", data=str(ds.root), n_cases=100000)
    with pytest.raises(DataError, match=r"n_cases=100000, but the dataset holds 2 cases \(pass -p n_cases 2"):
        load_data(P)
    assert load_data(resolve("template", "smoke", data=str(ds.root), n_cases=2)).cases == ["c0", "c1"]
    assert resolve("template", "smoke")["n_cases"] > 2          # the profile's own size caps: no error
    assert load_data(resolve("template", "smoke", data=str(ds.root))).cases == ["c0", "c1"]
