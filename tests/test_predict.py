"""`npcrepro predict`: a finished run's network on new patients (npcrepro.predict). A smoke run of the
template chapter on the phantom's CT, applied again to its own dataset (the masks equal the run's own
predictions), to one image file, and to a DICOM series written from a phantom case (RTSTRUCT read back);
and the one-line refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

import dicomfake as F
from npcrepro import chapters, io, metrics, profiles
from npcrepro.cli import main
from npcrepro.errors import DataError, ParameterError
from npcrepro.predict import predict


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "runs"
    P = profiles.resolve("template", "smoke", out_dir=str(out), device="cpu", channel="CT")
    return chapters.run(P, name="full", progress=False)


def test_predicting_the_runs_own_patients_gives_its_own_masks(run, tmp_path):
    report = predict(run.path, run.data, tmp_path / "out")
    assert run.info["spacing_mm"] == [3.5, 4.0, 4.0]  # the runner records the training voxel size
    test = run.test_cases()
    assert set(test) <= set(report.masks) and report.folds == [0] and report.seeds == [0]
    for case in test:
        mine = io.read(report.masks[case]["GTVp"])
        theirs = io.read(run.prediction_path("unet2d", case))
        assert np.array_equal(mine.array, theirs.array) and io.geometry_mismatch(mine.geometry, theirs.geometry) is None
    record = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert record["method"] == "unet2d" and record["channels"] == ["CT"] and record["chapter"] == "template"


def test_one_image_file_and_a_dicom_series_with_an_rtstruct_read_back(run, tmp_path):
    from npcrepro.datasets import open_dataset
    from npcrepro.dicom import find_dicom, read_series
    from npcrepro.dicom.rtstruct import rasterise, read_rtstruct

    ds = open_dataset(run.data)
    name = run.test_cases()[0]
    case = ds.load(name, channels=["CT"], structures=[])
    io.write(io.Volume.on_grid(case.images["CT"], case.geometry), tmp_path / "scan.nii.gz")
    one = predict(run.path, tmp_path / "scan.nii.gz", tmp_path / "file")
    expected = io.read(run.prediction_path("unet2d", name)).array
    assert np.array_equal(io.read(one.masks["scan"]["GTVp"]).array, expected)
    # the same CT as a DICOM series (HU stored as integers), then an RTSTRUCT referencing it
    F.write_ct(tmp_path / "dicom", np.round(case.images["CT"]), spacing=tuple(case.spacing), patient_id="NEW 1")
    report = predict(run.path, tmp_path / "dicom", tmp_path / "dcm", export="rtstruct")
    mask = io.read(report.masks["NEW_1"]["GTVp"]).array.astype(bool)
    assert metrics.dice(mask, expected.astype(bool)) > 0.9  # integer HU change a few border voxels at most
    series = read_series(next(iter(find_dicom(tmp_path / "dicom").series.values())))
    back = rasterise(read_rtstruct(report.exports[0]), series)["GTVp"]
    assert np.array_equal(back, mask)


def test_refusals_are_one_line_errors(run, tmp_path, capsys):
    from npcrepro.datasets import Case, write_dataset

    with pytest.raises(ParameterError, match="unknown method 'unet' .* Did you mean 'unet2d'"):
        predict(run.path, run.data, tmp_path / "a", method="unet")
    with pytest.raises(ParameterError, match="fold 3: the run has folds 0-0"):
        predict(run.path, run.data, tmp_path / "a", fold=3)
    # a dataset without the network's channel; a scan of other voxels
    img = np.zeros((8, 16, 16), np.float32)
    write_dataset(tmp_path / "t1", [Case("p", {"T1": img}, {}, (3.5, 4.0, 4.0))], channels=["T1"], structures=[],
                  source="test")
    with pytest.raises(DataError, match="reads channel.s. CT; the dataset has T1"):
        predict(run.path, tmp_path / "t1", tmp_path / "a")
    io.write(io.Volume(img, (1.0, 1.0, 1.0)), tmp_path / "fine.nii.gz")
    with pytest.raises(DataError, match="voxels of 1 x 1 x 1 mm, the network was trained on 3.5 x 4 x 4 mm"):
        predict(run.path, tmp_path / "fine.nii.gz", tmp_path / "a")
    assert predict(run.path, tmp_path / "fine.nii.gz", tmp_path / "b", any_spacing=True).masks["fine"]
    with pytest.raises(ParameterError, match="needs a DICOM series"):
        predict(run.path, tmp_path / "fine.nii.gz", tmp_path / "c", any_spacing=True, export="rtstruct")
    assert main(["predict", str(run.path), str(tmp_path / "t1"), str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("npcrepro predict: error: ")
    assert main(["predict", str(run.path), str(run.data), str(tmp_path / "b")]) == 2  # not empty
    assert "exists and is not empty" in capsys.readouterr().err
