"""Adapters for real sources: OpenKBP and the NPC T2 slices on the real extracts (skipped when
absent), the Li-2024 layout and NIfTI folders on data written here, nnU-Net pass-through, and the
``convert`` entry point with its summary."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from npcrepro import DataError, ParameterError, io
from npcrepro.datasets import Case, open_dataset, write_dataset
from npcrepro.datasets.adapters import SOURCES, convert, iter_cases, li2024, nifti_folder, openkbp

# Real OpenKBP patients used here: two training and one test patient (speed: ~0.3 s each).
TRAIN_PTS, TEST_PT = ("pt_2", "pt_12"), "pt_243"


def _csv_rows(path: Path) -> int:
    return sum(1 for _ in open(path)) - 1


@pytest.fixture(scope="module")
def kbp_cases():
    from npcrepro.paths import shared_data

    root = shared_data("openkbp-subset")
    if root is None:
        pytest.skip("real data 'openkbp-subset' not found (set $NPCREPRO_SHARED_DATA or place "
                    "../shared/data)")
    folders = [root / "train-pats" / p for p in TRAIN_PTS] + [root / "test-pats" / TEST_PT]
    return {f.name: (f, openkbp.read_patient(f)) for f in folders}


# ------------------------------------------------------------------------------ OpenKBP (real)
@pytest.mark.realdata
def test_openkbp_voxel_counts_equal_csv_rows(kbp_cases):
    for folder, case in kbp_cases.values():
        for kbp_name, name in [("Mandible", "Mandible"), ("SpinalCord", "SpinalCord"),
                               ("LeftParotid", "Parotid_L"), ("PTV70", "PTV70")]:
            assert int(case.labels[name].sum()) == _csv_rows(folder / f"{kbp_name}.csv"), name
        # the CT lists its non-zero voxels: exactly those are above the -1000 HU floor
        assert int((case.images["CT"] > openkbp.HU_FLOOR).sum()) == _csv_rows(folder / "ct.csv")


@pytest.mark.realdata
def test_openkbp_axes_spacing_and_flat_index(kbp_cases):
    folder, case = kbp_cases["pt_2"]
    vd = openkbp.read_voxel_dimensions(folder / "voxel_dimensions.csv")
    assert case.shape == (128, 128, 128)
    assert case.spacing == (vd[2], vd[0], vd[1])  # slice thickness is the z spacing
    assert case.spacing[0] < case.spacing[1] == case.spacing[2]
    np.testing.assert_array_equal(case.direction, np.eye(3))
    idx, _ = openkbp.read_sparse_csv(folder / "Brainstem.csv", values=False)
    zyx = openkbp.flat_index_to_zyx(idx)
    assert case.labels["Brainstem"][tuple(zyx.T)].all()
    native = openkbp.from_zyx(case.labels["Brainstem"]).ravel()
    np.testing.assert_array_equal(np.flatnonzero(native), np.sort(idx))


@pytest.mark.realdata
def test_openkbp_orientation_matches_anatomy(kbp_cases):
    from npcrepro.chapters.realdata.report import orientation_checks

    for _, case in kbp_cases.values():
        cen = {s: np.argwhere(case.labels[s]).mean(0) for s in
               ("Mandible", "SpinalCord", "Brainstem", "Parotid_L", "Parotid_R")}
        assert cen["Mandible"][1] < cen["SpinalCord"][1] - 5, case.name   # anterior = smaller y
        assert cen["Brainstem"][0] > cen["Mandible"][0] + 3, case.name    # superior = larger z
        assert cen["Parotid_L"][2] > cen["Parotid_R"][2] + 10, case.name  # patient's left = larger x
        assert orientation_checks(case)["holds"].all()


@pytest.mark.realdata
def test_openkbp_hu_of_air_fat_soft_tissue_bone(kbp_cases):
    for _, case in kbp_cases.values():
        t = openkbp.tissue_hu(case).set_index("rule")["hu"]
        assert -1000 <= t["body voxels < -400 HU: 5th percentile"] <= -850, case.name
        assert t["outside the body: median"] == -1000
        assert -130 <= t["peak of body histogram in [-200, -40) HU"] <= -60, case.name
        assert 10 <= t["Brainstem + SpinalCord: median"] <= 55, case.name
        assert 0 <= t["peak of body histogram in [-30, 150) HU"] <= 80, case.name
        assert 250 <= t["Mandible: median"] <= 1200, case.name
        assert t["Mandible: 95th percentile"] >= 900, case.name


@pytest.mark.realdata
def test_openkbp_orientation_figure(kbp_cases):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = openkbp.orientation_figure(kbp_cases["pt_2"][1])
    assert len(fig.axes) == 3
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"A", "P", "S", "I", "R", "L"} <= texts
    plt.close(fig)


@pytest.mark.realdata
def test_convert_openkbp_splits_absent_structures_and_skips(openkbp_dir, tmp_path):
    src = tmp_path / "provided-data"
    (src / "train-pats").mkdir(parents=True)
    (src / "test-pats").mkdir()
    (src / "train-pats" / "pt_2").symlink_to(openkbp_dir / "train-pats" / "pt_2")
    (src / "test-pats" / TEST_PT).symlink_to(openkbp_dir / "test-pats" / TEST_PT)
    bad = src / "train-pats" / "pt_999"
    bad.mkdir()
    (bad / "ct.csv").write_text("not,an,openkbp,file\n1,2,3,4\n", encoding="utf-8")
    (bad / "voxel_dimensions.csv").write_text("3.9\n3.9\n2.5\n", encoding="utf-8")

    summary = convert("openkbp", tmp_path, tmp_path / "out", progress=False)
    assert summary.cases == ["pt_2"] and summary.test_cases == [TEST_PT]
    assert [name for name, _ in summary.skipped] == ["pt_999"]
    assert str(bad / "ct.csv") in summary.skipped[0][1]
    text = str(summary)
    for piece in ("2 cases converted", "1 training (imagesTr), 1 test (imagesTs)", "Parotid_L 2/2",
                  "spacing (z, y, x)", "mm", "skipped: 1 case", "pt_999"):
        assert piece in text, piece
    ds = summary.dataset
    assert ds.cases == ["pt_2"] and ds.test_cases == [TEST_PT]
    assert ds.meta["npcrepro"]["extra"]["hu_offset"] == 1000.0
    # pt_2 has no Larynx: no file, absent after loading (not an empty mask)
    assert not (ds.root / "structuresTr" / "pt_2" / "Larynx.nii.gz").exists()
    case = ds.load("pt_2")
    assert "Larynx" not in case.labels and case.labels["Mandible"].any()
    assert case.meta["openkbp_split"] == "train-pats"
    assert ds.load(TEST_PT).meta["openkbp_split"] == "test-pats"
    assert summary.structure_counts["Larynx"] == 0
    with pytest.raises(DataError, match="pt_999"):
        convert("openkbp", src, tmp_path / "out2", progress=False, strict=True)
    # limit and test_limit count training and held-out test patients apart
    kept = convert("openkbp", src, tmp_path / "out3", progress=False, limit=1, test_limit=1)
    assert kept.cases == ["pt_2"] and kept.test_cases == [TEST_PT]
    train_only = convert("openkbp", src, tmp_path / "out4", progress=False, limit=1, test_limit=0)
    assert train_only.cases == ["pt_2"] and train_only.test_cases == []
    assert convert("openkbp", src, tmp_path / "out5", progress=False, limit=1).test_cases == []
    with pytest.raises(ParameterError, match="test_limit"):
        convert("openkbp", src, tmp_path / "out6", progress=False, test_limit=-1)


def _synthetic_kbp_patient(folder: Path) -> Path:
    """A 128^3 OpenKBP patient: a 24^3 block of tissue (stored 1040) holding a Brainstem cube."""
    folder.mkdir(parents=True)
    a, b, c = np.meshgrid(*(np.arange(50, 74),) * 3, indexing="ij")
    flat = np.ravel_multi_index((a.ravel(), b.ravel(), c.ravel()), openkbp.GRID)
    (folder / "ct.csv").write_text(",data\n" + "".join(f"{i},1040.0\n" for i in np.sort(flat)),
                                   encoding="utf-8")
    inner = np.sort(flat[(a.ravel() > 55) & (a.ravel() < 70) & (b.ravel() > 55) & (c.ravel() > 55)])
    (folder / "Brainstem.csv").write_text(",data\n" + "".join(f"{i},\n" for i in inner),
                                          encoding="utf-8")
    (folder / "voxel_dimensions.csv").write_text("3.9\n3.9\n2.5\n", encoding="utf-8")
    return folder


def _cut(path: Path, fraction: float, at_line_end: bool) -> None:
    data = path.read_bytes()
    n = int(len(data) * fraction)
    path.write_bytes(data[: data.rindex(b"\n", 0, n) + 1] if at_line_end else data[:n])


@pytest.mark.parametrize("at_line_end, why", [(False, "last line .* is incomplete"),
                                              (True, "looks truncated: .* Brainstem voxels")])
def test_openkbp_truncated_ct_is_skipped_with_the_reason(tmp_path, at_line_end, why):
    src = tmp_path / "train-pats"
    good = _synthetic_kbp_patient(src / "pt_1")
    assert openkbp.read_patient(good).images["CT"].max() == 40.0
    _cut(_synthetic_kbp_patient(src / "pt_2") / "ct.csv", 0.6, at_line_end)
    summary = convert("openkbp", src, tmp_path / "out", progress=False)
    assert summary.cases == ["pt_1"] and [n for n, _ in summary.skipped] == ["pt_2"]
    assert re.search(why, summary.skipped[0][1]) and "ct.csv" in summary.skipped[0][1]
    assert "skipped: 1 case" in str(summary)


@pytest.mark.realdata
def test_openkbp_real_patient_with_truncated_ct_is_refused(openkbp_dir, tmp_path):
    folder = tmp_path / "pt_2"
    shutil.copytree(openkbp_dir / "train-pats" / "pt_2", folder)
    _cut(folder / "ct.csv", 0.5, at_line_end=True)  # a cut that leaves a well-formed file
    with pytest.raises(DataError, match="ct.csv: looks truncated: .* voxels have no CT value"):
        openkbp.read_patient(folder)


def test_truncated_t2_slice_is_skipped_with_the_reason(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("00001", "00002"):
        img = (rng.random((32, 32)) * 255).astype(np.uint8)
        io.write(io.Volume(img, (1.0, 1.0)), tmp_path / "images" / f"{name}.jpg")
        io.write(io.Volume((img > 128).astype(np.uint8) * 255, (1.0, 1.0)),
                 tmp_path / "masks" / f"{name}.jpg")
    _cut(tmp_path / "images" / "00002.jpg", 0.5, at_line_end=False)
    summary = convert("npc-t2-slices", tmp_path, tmp_path / "out", progress=False)
    assert summary.cases == ["00001"]
    assert summary.skipped[0][0] == "00002" and "truncated JPEG" in summary.skipped[0][1]


@pytest.mark.realdata
def test_openkbp_keeps_own_names_on_request(openkbp_dir):
    case = openkbp.read_patient(openkbp_dir / "train-pats" / "pt_2", names="openkbp")
    assert "LeftParotid" in case.labels and "Parotid_L" not in case.labels
    with pytest.raises(ParameterError):
        openkbp.read_patient(openkbp_dir / "train-pats" / "pt_2", names="other")


# ------------------------------------------------------------------------ NPC T2 slices (real)
@pytest.mark.realdata
def test_npc_t2_slices_load_with_masks(npc_t2_dir, tmp_path):
    cases = list(iter_cases("npc-t2-slices", npc_t2_dir))
    assert len(cases) == 25
    for c in cases:
        assert c.shape == (1, 512, 512) and c.spacing == (1.0, 1.0, 1.0)
        assert c.labels["GTVp"].any(), c.name
        assert c.meta["spacing_known"] is False
        assert 0 <= c.images["T2"].min() and c.images["T2"].max() <= 255
    summary = convert("npc-t2-slices", npc_t2_dir, tmp_path / "t2", progress=False, limit=3)
    assert summary.n_converted == 3 and "pixels" in str(summary)
    assert open_dataset(tmp_path / "t2").spacing_known is False


# ------------------------------------------------------------------ Li 2024 layout (synthetic)
T1_GRID = ((6, 24, 24), (4.0, 1.0, 1.0), (0.0, 0.0, 0.0))
SEQ_GRIDS = {"T1": T1_GRID,
             "T2": ((7, 20, 20), (3.5, 1.25, 1.25), (-1.0, -0.5, 0.75)),
             "CET1": ((6, 24, 24), (4.0, 1.0, 1.0), (2.0, 0.5, -0.5))}
BALL_CENTRE, BALL_RADIUS = np.array([10.0, 12.0, 12.0]), 7.0


def _phys(shape, spacing, origin):
    idx = np.indices(shape, dtype=float)
    return [origin[a] + idx[a] * spacing[a] for a in range(3)]


def _intensity(p):
    return 100.0 + 2.0 * p[0] + 3.0 * p[1] + 1.0 * p[2]


def _ball(p, centre=BALL_CENTRE):
    return sum((p[a] - centre[a]) ** 2 for a in range(3)) <= BALL_RADIUS ** 2


def _write_li_patient(folder: Path, *, seqs=("T1", "T2", "CET1"), masks=("T1", "T2", "CET1")):
    for seq in seqs:
        shape, spacing, origin = SEQ_GRIDS[seq]
        p = _phys(shape, spacing, origin)
        vol = io.Volume(_intensity(p).astype(np.float32), spacing, origin)
        io.write_dicom_series(vol, folder / li2024.SEQUENCES[seq][0], series_description=seq)
    for seq in masks:
        shape, spacing, origin = SEQ_GRIDS[seq]
        centre = BALL_CENTRE + np.array([0.0, 0.0, 1.0]) * (seq == "T2")  # raters differ slightly
        mask = _ball(_phys(shape, spacing, origin), centre).astype(np.uint8)
        io.write(io.Volume(mask, spacing, origin), folder / li2024.SEQUENCES[seq][1])


@pytest.fixture(scope="module")
def li_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("li2024")
    seg = root / "data" / "MRI-Segments"
    _write_li_patient(seg / "001")
    _write_li_patient(seg / "002", masks=("T1", "CET1"))
    return root


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_li2024_finds_root_at_three_levels(li_root):
    seg = li_root / "data" / "MRI-Segments"
    for src in (li_root, li_root / "data", seg):
        assert li2024.find_root(src) == seg
    with pytest.raises(DataError, match=str(li_root / "data" / "nothing")):
        li2024.find_root(li_root / "data" / "nothing")


def test_li2024_reads_onto_t1_grid(li_root):
    case = li2024.read_patient(li_root / "data" / "MRI-Segments" / "001")
    shape, spacing, origin = T1_GRID
    assert case.shape == shape and case.spacing == spacing
    assert list(case.images) == ["T1", "T2", "CET1"]
    assert set(case.labels) == {"GTV_T1", "GTV_T2", "GTV_CET1", "GTVp"}
    p = _phys(shape, spacing, origin)
    expected = _intensity(p)
    np.testing.assert_allclose(case.images["T1"], expected, atol=0.05)
    # T2 and CET1 were resampled in scanner coordinates: exact for a linear ramp inside their FOV
    for seq in ("T2", "CET1"):
        s_shape, s_spacing, s_origin = SEQ_GRIDS[seq]
        inside = np.ones(shape, bool)
        for a in range(3):
            inside &= (p[a] >= s_origin[a]) & (p[a] <= s_origin[a] + (s_shape[a] - 1) * s_spacing[a])
        assert inside.sum() > 500
        np.testing.assert_allclose(case.images[seq][inside], expected[inside], atol=0.1)
        assert case.meta["resampled_to_T1"][seq]
    truth = _ball(p)
    assert _dice(case.labels["GTV_T1"], truth) == 1.0
    # nearest-neighbour from shifted grids: same place (centroid within half a slice), similar shape
    for seq, shift in (("CET1", 0.0), ("T2", 1.0)):
        mask = case.labels[f"GTV_{seq}"]
        centroid = np.argwhere(mask).mean(0) * np.asarray(spacing) + np.asarray(origin)
        np.testing.assert_allclose(centroid, BALL_CENTRE + [0, 0, shift], atol=2.0)
        assert _dice(mask, truth) > 0.7
    np.testing.assert_array_equal(case.labels["GTVp"], case.labels["GTV_CET1"])
    assert case.meta["GTVp_from"] == "CET1"
    maj = li2024.read_patient(li_root / "data" / "MRI-Segments" / "001", gtvp_from="majority")
    assert maj.meta["GTVp_from"].startswith("majority")


def test_convert_li2024(li_root, tmp_path):
    summary = convert("li2024", li_root, tmp_path / "li", progress=False, gtvp_from="T1")
    assert summary.cases == ["001", "002"] and not summary.skipped
    assert summary.structure_counts == {"GTV_T1": 2, "GTV_T2": 1, "GTV_CET1": 2, "GTVp": 2}
    ds = summary.dataset
    assert ds.channels == ["T1", "T2", "CET1"]
    c2 = ds.load("002")
    assert "GTV_T2" not in c2.labels and c2.meta["missing_masks"] == ["ROI-T2.nii"]
    assert c2.meta["GTVp_from"] == "T1"
    with pytest.raises(ParameterError, match="gtvp_from"):
        convert("li2024", li_root, tmp_path / "li2", progress=False, gtvp_from="T3")


def test_li2024_bad_layouts_name_the_path(tmp_path):
    seg = tmp_path / "MRI-Segments"
    # missing sequence folder
    _write_li_patient(seg / "010", seqs=("T1", "CET1"), masks=("T1",))
    with pytest.raises(DataError, match="missing sequence folder") as err:
        li2024.read_patient(seg / "010")
    assert str(seg / "010" / "T2WI") in str(err.value)
    # a mask whose shape disagrees with its series
    _write_li_patient(seg / "011", masks=("T1", "CET1"))
    io.write(io.Volume(np.zeros((3, 8, 8), np.uint8), (1.0, 1.0, 1.0)), seg / "011" / "ROI-T2.nii")
    with pytest.raises(DataError, match="differs from its series") as err:
        li2024.read_patient(seg / "011")
    assert str(seg / "011" / "ROI-T2.nii") in str(err.value)
    # two series in one folder
    _write_li_patient(seg / "012", masks=())
    extra = tmp_path / "second_series"
    shape, spacing, origin = T1_GRID
    io.write_dicom_series(io.Volume(np.ones(shape, np.float32), spacing, origin), extra)
    for f in extra.iterdir():
        shutil.copy(f, seg / "012" / "T1WI" / f"B{f.name}")
    with pytest.raises(DataError, match="2 DICOM series") as err:
        li2024.read_patient(seg / "012")
    assert str(seg / "012" / "T1WI") in str(err.value)
    # convert: every case skipped with its reason -> the source as a whole is refused
    with pytest.raises(DataError, match="no li2024 case could be converted") as err:
        convert("li2024", tmp_path, tmp_path / "out", progress=False)
    assert str(seg / "011" / "ROI-T2.nii") in str(err.value)
    assert not (tmp_path / "out").exists()
    # one good case among bad ones: converted, the rest reported
    _write_li_patient(seg / "013")
    summary = convert("li2024", tmp_path, tmp_path / "out", progress=False)
    assert summary.cases == ["013"]
    reasons = dict(summary.skipped)
    assert set(reasons) == {"010", "011", "012"}
    assert str(seg / "010" / "T2WI") in reasons["010"] and "skipped: 3 cases" in str(summary)


# ----------------------------------------------------------------------- NIfTI folder (synthetic)
def _vol(arr, spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    return io.Volume(arr, spacing, origin)


def _label_map(shape=(4, 10, 12), v=1):
    m = np.zeros(shape, np.uint8)
    m[1:3, 2:6, 3:8] = v
    return m


def test_nifti_folder_label_maps_with_labels_json(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for name in ("caseA", "caseB"):
        for ch in ("T1", "T2"):
            io.write(_vol(rng.normal(size=(4, 10, 12)).astype(np.float32)),
                     src / "images" / f"{name}_{ch}.nii.gz")
        lm = _label_map()
        lm[3, 0:2, 0:2] = 2
        io.write(_vol(lm), src / "labels" / f"{name}.nii.gz")
    (src / "labels.json").write_text(json.dumps({"GTVp": 1, "Node": 2}), encoding="utf-8")
    summary = convert("nifti-folder", src, tmp_path / "out", progress=False)
    assert summary.cases == ["caseA", "caseB"] and summary.channels == ["T1", "T2"]
    assert summary.structure_counts == {"GTVp": 2, "Node": 2}
    case = summary.dataset.load("caseA")
    assert case.labels["GTVp"].sum() == 2 * 4 * 5 and case.labels["Node"].sum() == 4
    # a value the mapping does not name
    lm = _label_map()
    lm[0, 0, 0] = 7
    io.write(_vol(lm), src / "labels" / "caseB.nii.gz")
    with pytest.raises(DataError, match="label value") as err:
        nifti_folder.read_case(nifti_folder.scan(src), "caseB")
    assert str(src / "labels" / "caseB.nii.gz") in str(err.value)


def test_nifti_folder_inferred_names_flat_layout_and_structure_folders(tmp_path):
    flat = tmp_path / "flat"
    for name in ("p1", "p2"):
        io.write(_vol(np.ones((4, 10, 12), np.float32)), flat / f"{name}.nii.gz")
        io.write(_vol(_label_map(v=255)), flat / f"{name}_seg.nii.gz")
    s = convert("nifti-folder", flat, tmp_path / "o1", progress=False, channel="CT")
    assert s.channels == ["CT"] and s.structure_counts == {"GTVp": 2}
    assert any("binary masks" in n for n in s.notes)

    folders = tmp_path / "folders"
    io.write(_vol(np.ones((4, 10, 12), np.float32)), folders / "images" / "p1.nrrd")
    io.write(_vol(_label_map()), folders / "masks" / "p1" / "Parotid_L.nii.gz")
    io.write(_vol(_label_map()[:, ::-1]), folders / "masks" / "p1" / "Parotid_R.nii.gz")
    case = next(iter_cases("nifti-folder", folders))
    assert set(case.labels) == {"Parotid_L", "Parotid_R"}


def test_nifti_folder_bad_inputs_name_the_path(tmp_path):
    src = tmp_path / "src"
    io.write(_vol(np.ones((4, 10, 12), np.float32)), src / "images" / "p1.nii.gz")
    io.write(_vol(_label_map((4, 10, 11))), src / "masks" / "p1.nii.gz")
    with pytest.raises(DataError, match="differs from its image") as err:
        next(iter_cases("nifti-folder", src))
    assert str(src / "masks" / "p1.nii.gz") in str(err.value)
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        (tmp_path / "empty").mkdir()
        convert("nifti-folder", tmp_path / "empty", tmp_path / "o", progress=False)


# ------------------------------------------------------------------------ nnU-Net pass-through
def _tiny_dataset(root: Path) -> Path:
    rng = np.random.default_rng(1)
    cases = [Case(f"c{i}", {"CT": rng.normal(size=(3, 8, 8)).astype(np.float32)},
                  {"GTVp": _label_map((3, 8, 8)).astype(bool)}, (2.0, 1.0, 1.0)) for i in range(2)]
    write_dataset(root, cases, channels=["CT"], structures=["GTVp"], source="test")
    return root


def test_nnunet_validates_in_place_or_copies(tmp_path):
    src = _tiny_dataset(tmp_path / "ds")
    s = convert("nnunet", src, None, progress=False)
    assert s.dst == src and s.cases == ["c0", "c1"] and not s.skipped
    s2 = convert("nnunet", src, tmp_path / "copy", progress=False)
    assert open_dataset(tmp_path / "copy").cases == ["c0", "c1"]
    assert s2.structure_counts == {"GTVp": 2}
    # a plain nnU-Net raw dataset (no npcrepro block): labels become structures
    raw = tmp_path / "raw"
    io.write(_vol(np.ones((3, 8, 8), np.float32)), raw / "imagesTr" / "x_0000.nii.gz")
    io.write(_vol(_label_map((3, 8, 8), v=2)), raw / "labelsTr" / "x.nii.gz")
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1"}, "labels": {"background": 0, "tumour": 1, "node": 2},
        "numTraining": 1, "file_ending": ".nii.gz"}), encoding="utf-8")
    s3 = convert("nnunet", raw, None, progress=False)
    assert s3.structure_counts == {"tumour": 0, "node": 1}
    with pytest.raises(ParameterError, match="destination"):
        convert("openkbp", raw, None, progress=False)


# ------------------------------------------------------------------------------ convert itself
def test_unknown_source_lists_valid_ones(tmp_path):
    with pytest.raises(ParameterError) as err:
        convert("dicom-rt", tmp_path, tmp_path / "out")
    for name in ("openkbp", "li2024", "npc-t2-slices", "nifti-folder", "nnunet", "rtstruct"):
        assert name in str(err.value)
    assert set(SOURCES) == {"openkbp", "li2024", "npc-t2-slices", "nifti-folder", "nnunet", "rtstruct"}


def test_convert_refuses_non_empty_destination_and_bad_options(tmp_path):
    src = _tiny_dataset(tmp_path / "ds")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="not empty"):
        convert("nnunet", src, tmp_path / "busy", progress=False)
    s = convert("nnunet", src, tmp_path / "busy", progress=False, overwrite=True, limit=1)
    assert s.cases == ["c0"]
    with pytest.raises(ParameterError, match="unexpected keyword"):
        convert("nnunet", src, tmp_path / "o2", progress=False, colour="red")
    with pytest.raises(DataError, match="not found"):
        convert("openkbp", tmp_path / "missing", tmp_path / "o3", progress=False)


def test_convert_overwrite_with_a_failing_source_keeps_the_old_dataset(tmp_path, cli):
    dst = _tiny_dataset(tmp_path / "ds")
    before = sorted(p.relative_to(dst) for p in dst.rglob("*"))
    bad = tmp_path / "train-pats" / "pt_1"
    bad.mkdir(parents=True)
    (bad / "ct.csv").write_text(",data\n12,10", encoding="utf-8")  # cut mid-line
    (bad / "voxel_dimensions.csv").write_text("3.9\n3.9\n2.5\n", encoding="utf-8")
    proc = cli("convert", "openkbp", "train-pats", "ds", "--overwrite", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "no openkbp case could be converted" in proc.stderr.strip().splitlines()[-1]
    assert sorted(p.relative_to(dst) for p in dst.rglob("*")) == before
    assert open_dataset(dst).cases == ["c0", "c1"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_write_dataset_failing_midway_leaves_the_old_folder(tmp_path):
    dst = _tiny_dataset(tmp_path / "ds")

    def cases():
        yield Case("new0", {"CT": np.zeros((3, 8, 8), np.float32)}, {}, (2.0, 1.0, 1.0))
        raise DataError("source broke after one case")

    with pytest.raises(DataError, match="source broke"):
        write_dataset(dst, cases(), channels=["CT"], structures=["GTVp"], overwrite=True)
    assert open_dataset(dst).cases == ["c0", "c1"]
    ds = write_dataset(dst, [Case("n1", {"CT": np.ones((3, 8, 8), np.float32)}, {}, (2.0, 1.0, 1.0))],
                       channels=["CT"], structures=["GTVp"], overwrite=True)
    assert ds.cases == ["n1"] and ds.name == "ds"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_convert_shows_a_progress_bar(tmp_path, capsys):
    src = _tiny_dataset(tmp_path / "ds")
    convert("nnunet", src, tmp_path / "o", progress=True)
    assert "nnunet: converting" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the chapter
@pytest.mark.slow
def test_realdata_notebook_smoke(run_notebook):
    nb = run_notebook("realdata")
    text = "\n".join(str(o.get("text", "")) + json.dumps(o.get("data", {}))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Traceback" not in text
    from npcrepro.paths import shared_data

    if shared_data("openkbp-subset") is not None:
        assert "openkbp: 2 cases converted" in text
    else:
        assert "not on this machine" in text


@pytest.mark.slow
def test_realdata_notebook_without_data_exits_cleanly(run_notebook, tmp_path):
    nb = run_notebook("realdata", data=str(tmp_path / "nowhere"))
    text = "\n".join(json.dumps(o.get("data", {})) + str(o.get("text", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "not on this machine" in text and "Zenodo" in text
