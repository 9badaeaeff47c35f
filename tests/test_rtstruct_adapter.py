"""`npcrepro convert rtstruct` and `npcrepro export`: planning CT + RTSTRUCT in, DICOM-SEG / RTSTRUCT
out, and the round trip import -> export -> import (0 voxels differ), on DICOM written here with
pydicom. A chapter (luo2020, smoke) runs on the converted multi-ROI dataset, and its folds come out
as nnU-Net's splits_final.json case for case."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import dicomfake as F
from npcrepro import io
from npcrepro.cli import main
from npcrepro.datasets import open_dataset
from npcrepro.datasets.adapters import convert
from npcrepro.datasets.adapters import rtstruct as A
from npcrepro.datasets.nnunet_raw import validate
from npcrepro.dicom import find_dicom, read_series
from npcrepro.dicom.rtstruct import rasterise, read_rtstruct
from npcrepro.errors import DataError, ParameterError

SHAPE = (12, 56, 48)
SPACING = (2.5, 1.5, 1.5)


def _patient(root, k: int):
    """CT with a bright tumour, and an RTSTRUCT with a sphere GTV, a brainstem, a parotid torus (two
    contours per slice), an unknown name and an ROI without contours."""
    grid = F.grid(SHAPE, SPACING)
    dz, dr, dc = SPACING
    at = lambda z, i, j: grid.origin + z * dz * grid.normal + i * dr * grid.col + j * dc * grid.row  # noqa: E731
    gtv = at(5.4 + 0.3 * k, 24.2, 20.3 + k)
    values = F.ct_values(SHAPE, k)
    values[F.in_sphere(grid.centres(), gtv, 9.0)] += 80  # the tumour enhances
    s = F.write_ct(root / f"P{k}" / "CT", values, spacing=SPACING, patient_id=f"PAT {k}")
    rois = {"GTV_primary": F.sphere_contours(s, gtv, 9.0),
            "Brain Stem": F.sphere_contours(s, at(7.0, 40.0, 24.0), 6.0),
            "L Parotid": F.torus_contours(s, at(5.0, 22.0, 30.0), 8.0, 3.5),
            "Boost_70": F.sphere_contours(s, at(5.0, 24.0, 20.0), 4.0),
            "Empty": []}
    return s, F.write_rtstruct(root / f"P{k}" / "RS.dcm", s, rois)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    made = [_patient(root, k) for k in range(3)]
    (root / "README.txt").write_text("not DICOM")  # ignored
    return root, made


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory):
    root, _ = source
    out = tmp_path_factory.mktemp("converted") / "ds"
    return convert("rtstruct", root, out, progress=False), out


def test_converts_every_roi_onto_the_series_grid(source, converted):
    root, made = source
    summary, out = converted
    assert summary.cases == ["PAT_0", "PAT_1", "PAT_2"] and not summary.skipped
    assert summary.channels == ["CT"]
    ds = open_dataset(out)
    assert ds.structures == ["GTVp", "Brainstem", "Parotid_L", "Boost_70"]  # table order, unknown last
    assert summary.structure_counts == {"GTVp": 3, "Brainstem": 3, "Parotid_L": 3, "Boost_70": 3}
    for (s, rs), name in zip(made, ds.cases):
        case = ds.load(name)
        series = read_series(find_dicom(s.folder).series[s.series_uid])
        assert io.geometry_mismatch(case.geometry, series.geometry) is None
        np.testing.assert_array_equal(case.images["CT"], series.volume.array)
        direct = rasterise(read_rtstruct(rs), series)
        for roi, structure in (("GTV_primary", "GTVp"), ("Brain Stem", "Brainstem"),
                               ("L Parotid", "Parotid_L"), ("Boost_70", "Boost_70")):
            np.testing.assert_array_equal(case.labels[structure], direct[roi])
        assert case.labels["Parotid_L"].sum() > 0 and "Empty" not in case.labels
        assert case.meta["roi_names"]["GTV_primary"] == "GTVp" and case.meta["empty_rois"] == ["Empty"]
        assert case.meta["series_uid"] == s.series_uid and case.meta["structure_file"] == str(rs)
    assert validate(out) == []  # an nnU-Net v2 raw dataset as it is
    assert "a valid nnU-Net v2 raw dataset" in str(summary)
    assert "ROI names: 'GTV_primary' -> GTVp, 'Brain Stem' -> Brainstem, 'L Parotid' -> Parotid_L, 'Boost_70' kept" \
        in str(summary)


def test_name_table_is_documented_overridable_and_keeps_unknown_names(tmp_path):
    t = A.load_names()
    for roi, name in [("GTV", "GTVp"), ("GTVp", "GTVp"), ("GTV_primary", "GTVp"), ("gtv-nx", "GTVp"),
                      ("GTV_nodes", "GTVnd"), ("BrainStem", "Brainstem"), ("Brain Stem", "Brainstem"),
                      ("Parotid_L", "Parotid_L"), ("L Parotid", "Parotid_L"), ("Rt_Parotid", "Parotid_R"),
                      ("parotid left", "Parotid_L"), ("Spinal Cord", "SpinalCord"), ("External", "Body"),
                      ("PTV_70", "PTV_70"), ("My Structure ", "My Structure")]:
        assert A.structure_name(roi, t) == name, roi
    for spelling in ("GTV_primary", "Parotid_Lt", "Brain_Stem", "Oesophagus"):  # the docstring's table
        assert A.name_key(spelling) in A.NAMES
    t = A.load_names({"GTV 1": "GTVnd", "Boost": "GTVp"})
    assert A.structure_name("GTV1", t) == "GTVnd" and A.structure_name("boost", t) == "GTVp"
    assert A.load_names("keep") == {}
    f = tmp_path / "names.json"
    f.write_text(json.dumps({"Boost_70": "PTV70"}))
    assert A.structure_name("Boost_70", A.load_names(str(f))) == "PTV70"
    f.write_text("{broken")
    with pytest.raises(DataError, match="names.json: invalid JSON"):
        A.load_names(str(f))
    with pytest.raises(ParameterError, match="not found"):
        A.load_names(str(tmp_path / "none.json"))
    notes: list[str] = []
    mapping = A._mapping(["GTV", "GTV_primary"], A.NAMES, notes)
    assert mapping == {"GTV": "GTVp", "GTV_primary": "GTV_primary"} and "keeps its name" in notes[-1]


def test_cli_convert_with_a_name_table(source, tmp_path, capsys):
    root, _ = source
    table = tmp_path / "names.json"
    table.write_text(json.dumps({"Boost_70": "PTV70"}))
    assert main(["convert", "rtstruct", str(root), str(tmp_path / "ds"), "-o", "names", str(table)]) == 0
    assert "3 cases converted" in capsys.readouterr().out
    assert "PTV70" in open_dataset(tmp_path / "ds").structures


def test_cli_convert_takes_the_rasterisation_rule(source, converted, tmp_path, capsys):
    root, _ = source
    assert main(["convert", "rtstruct", str(root), str(tmp_path / "touched"), "-o", "rule", "touched"]) == 0
    touched, centre = open_dataset(tmp_path / "touched"), open_dataset(converted[1])
    record = json.loads((tmp_path / "touched" / "dataset.json").read_text())["npcrepro"]["extra"]
    assert record["rasterisation"] == "touched"
    for name in centre.cases:
        a = centre.load(name, structures=["GTVp"]).labels["GTVp"]
        b = touched.load(name, structures=["GTVp"]).labels["GTVp"]
        assert (a & ~b).sum() == 0 and b.sum() > a.sum()  # the outline's pixels added, none lost
    assert main(["convert", "rtstruct", str(root), str(tmp_path / "bad"), "-o", "rule", "inside"]) == 2
    assert "unknown rasterisation rule 'inside'" in _error_line(capsys)


def _error_line(capsys) -> str:
    """The CLI's error: one line (progress bars aside) starting with "npcrepro <command>: error:"."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("npcrepro ")]
    assert len(lines) == 1 and ": error: " in lines[0]
    return lines[0]


def test_missing_series_and_off_grid_contours_are_one_line_errors(tmp_path, capsys):
    s = F.write_ct(tmp_path / "src" / "CT", F.ct_values(SHAPE), spacing=SPACING)
    rs = F.write_rtstruct(tmp_path / "src" / "RS.dcm", s, {"GTV": F.sphere_contours(s, s.plane(5), 5.0)},
                          series_uid="1.2.3.4.5")
    with pytest.raises(DataError) as e:
        convert("rtstruct", tmp_path / "src", tmp_path / "out", progress=False, strict=True)
    assert str(e.value).startswith(f"{rs}: referenced image series 1.2.3.4.5 not found under")
    assert main(["convert", "rtstruct", str(tmp_path / "src"), str(tmp_path / "out2")]) == 2
    err = _error_line(capsys)
    assert "no rtstruct case could be converted" in err and "1.2.3.4.5" in err
    assert not (tmp_path / "out2").exists()
    off = s.plane(5) + 0.5 * SPACING[0] * s.normal
    F.write_rtstruct(rs, s, {"GTV": [(5, F.circle(off, 5, s.row, s.col))]})
    assert main(["convert", "rtstruct", str(tmp_path / "src"), str(tmp_path / "out3")]) == 2
    err = _error_line(capsys)
    assert f"{rs}: ROI 'GTV' contour 0" in err and "off the image grid" in err
    shutil.rmtree(tmp_path / "src" / "CT")
    (tmp_path / "src" / "RS.dcm").unlink()
    with pytest.raises(DataError, match="no RTSTRUCT or SEG file found"):
        convert("rtstruct", tmp_path / "src", tmp_path / "out4", progress=False)


def test_empty_rois_take_no_name_and_another_modality_is_skipped(tmp_path):
    ct = F.write_ct(tmp_path / "src" / "A" / "CT", F.ct_values(SHAPE), spacing=SPACING, patient_id="A")
    centre = ct.plane(6) + np.array([30.0, 40.0, 0.0])
    F.write_rtstruct(tmp_path / "src" / "A" / "RS.dcm", ct,
                     {"GTV": [], "GTV_primary": F.sphere_contours(ct, centre, 6)})  # "GTV" has no contours
    mr = F.write_ct(tmp_path / "src" / "B" / "MR", F.ct_values(SHAPE), spacing=SPACING, patient_id="B",
                    modality="MR")
    F.write_rtstruct(tmp_path / "src" / "B" / "RS.dcm", mr, {"GTV": F.sphere_contours(mr, centre, 6)})
    summary = convert("rtstruct", tmp_path / "src", tmp_path / "out", progress=False)
    assert summary.cases == ["A"] and summary.channels == ["CT"]
    assert summary.skipped[0][0] == "B" and "is MR, the dataset's first case is CT" in summary.skipped[0][1]
    case = open_dataset(tmp_path / "out").load("A")
    assert list(case.labels) == ["GTVp"] and case.meta["roi_names"] == {"GTV_primary": "GTVp"}


@pytest.mark.parametrize("kind", ["dicomseg", "rtstruct"])
def test_import_export_import_round_trip(source, converted, tmp_path, kind, capsys):
    """Masks converted from the clinic's RTSTRUCT, exported for review, imported again: 0 voxels differ."""
    root, made = source
    _, out = converted
    ds = open_dataset(out)
    s, _ = made[1]
    review = tmp_path / "review"
    shutil.copytree(s.folder, review / "CT")
    masks = out / "structuresTr" / "PAT_1"
    assert main(["export", kind, str(masks), str(review / "CT"), str(review / f"{kind}.dcm")]) == 0
    report = capsys.readouterr().out
    assert f"references series {s.series_uid}" in report and "identical to the masks" in report
    again = convert("rtstruct", review, tmp_path / "again", progress=False)
    assert again.cases == ["PAT_1"]
    before, after = ds.load("PAT_1"), open_dataset(tmp_path / "again").load("PAT_1")
    assert set(after.labels) == set(before.labels)
    for name, mask in before.labels.items():
        assert int((after.labels[name] != mask).sum()) == 0, name
    assert main(["export", kind, str(masks), str(review / "CT"), str(review / f"{kind}.dcm")]) == 2
    assert "exists" in _error_line(capsys)


def test_export_finds_the_series_by_grid_and_refuses_bad_masks(source, tmp_path):
    from npcrepro.dicom.export import export

    root, made = source
    s, _ = made[0]
    series = read_series(find_dicom(s.folder).series[s.series_uid])
    g = series.geometry
    mask = np.zeros(SHAPE, bool)
    mask[3:7, 20:30, 10:25] = True
    # the same voxels stored head-first (z flipped): resampled exactly onto the series grid
    flipped_origin = g.index_to_physical([SHAPE[0] - 1, 0, 0])
    flipped_dir = g.direction.copy()
    flipped_dir[:, 0] *= -1
    io.write(io.Volume(mask[::-1].astype(np.uint8), g.spacing, tuple(flipped_origin), flipped_dir),
             tmp_path / "m" / "GTVp.nii.gz")
    with pytest.raises(ParameterError, match="several image series fit the masks' grid"):
        export(tmp_path / "m", root, tmp_path / "seg.dcm")  # the three patients share one grid
    rep = export(tmp_path / "m", s.folder, tmp_path / "seg.dcm")
    assert rep.series_uid == s.series_uid and rep.resampled and rep.voxels == {"GTVp": int(mask.sum())}
    from npcrepro.dicom.seg import read_seg

    np.testing.assert_array_equal(read_seg(rep.path, series)["GTVp"], mask)
    io.write(io.Volume.on_grid(mask.astype(np.uint8) * 2, g), tmp_path / "bad" / "GTVp.nii.gz")
    with pytest.raises(DataError, match=r"GTVp.nii.gz: not a binary mask \(values \[0, 2\]\)"):
        export(tmp_path / "bad", s.folder, tmp_path / "x.dcm")
    io.write(io.Volume(mask.astype(np.uint8), (2.0, 1.0, 1.0)), tmp_path / "grid" / "GTVp.nii.gz")
    with pytest.raises(DataError, match="no image series has the masks' grid"):
        export(tmp_path / "grid", s.folder, tmp_path / "y.dcm")
    with pytest.raises(ParameterError, match="unknown export format"):
        export(tmp_path / "m", s.folder, tmp_path / "z.dcm", kind="nifti")


@pytest.mark.slow
def test_a_chapter_runs_on_the_converted_dataset_and_its_folds_export_case_for_case(converted, tmp_path,
                                                                                      one_torch_thread):
    """luo2020 (multi-structure CT segmentation, smoke sizes) on the RTSTRUCT dataset; then
    `npcrepro splits export luo2020` gives nnU-Net the same folds."""
    from npcrepro import chapters
    from npcrepro.profiles import resolve

    _, out = converted
    P = resolve("luo2020", "smoke", data=str(out), out_dir=str(tmp_path / "runs"), device="cpu",
                methods=["unet"], k_folds=3, max_folds=2)
    res = chapters.run(P, name="cv", progress=False)
    table = res.metrics
    assert res.done and set(res.structures) >= {"GTVp", "Brainstem", "Parotid_L"}
    assert set(table["structure"]) >= {"GTVp", "Brainstem", "Parotid_L"} and np.isfinite(table["dice"]).all()
    assert main(["splits", "export", "luo2020", str(tmp_path / "nn"), "--runs", str(tmp_path / "runs"),
                 "--profile", "smoke", "--dataset", str(out)]) == 0
    splits = json.loads((tmp_path / "nn" / "splits_final.json").read_text())
    assert len(splits) == len(res.splits()) == 2
    for k, (nn, book) in enumerate(zip(splits, res.splits())):
        tested = sorted(set(table.loc[table["fold"] == k, "case"]))
        assert nn["val"] == sorted(book.test) == tested
        assert nn["train"] == sorted(book.train) and not set(nn["train"]) & set(nn["val"])
