"""nnU-Net v2: converted datasets are valid raw datasets, broken ones are named, and a chapter's folds
become splits_final.json. The last test asks nnunetv2 itself (optional: skipped unless nnunetv2 is
importable here or $NPCREPRO_NNUNET_PYTHON names a Python that has it)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from npcrepro import io
from npcrepro.cli import main
from npcrepro.datasets import Case, Fold, save_splits, write_dataset
from npcrepro.datasets.nnunet_raw import check, to_nnunet_splits, validate, write_splits_final
from npcrepro.engine.folds import chapter_run, recorded_folds
from npcrepro.errors import DataError, ParameterError


def _dataset(root, n: int = 4, channels=("T1", "T2")):
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        img = {c: rng.normal(size=(4, 12, 10)).astype(np.float32) for c in channels}
        gtv = np.zeros((4, 12, 10), bool)
        gtv[1:3, 3:7, 2:6] = True
        labels = {"GTVp": gtv, "Brainstem": np.roll(gtv, 4, axis=1)} if i % 2 == 0 else {"GTVp": gtv}
        cases.append(Case(f"pt{i}", img, labels, (3.0, 1.0, 1.0)))
    write_dataset(root, cases, channels=list(channels), structures=["GTVp", "Brainstem"],
                  test_cases=[Case("ts0", {c: np.zeros((4, 12, 10), np.float32) for c in channels}, {},
                                   (3.0, 1.0, 1.0))])
    return root


def test_a_written_dataset_is_valid(tmp_path):
    root = _dataset(tmp_path / "ds")
    assert validate(root) == []
    check(root)


def _set_meta(root, **changes):
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(changes)
    (root / "dataset.json").write_text(json.dumps(meta))


def _drop_key(root, key):
    meta = json.loads((root / "dataset.json").read_text())
    meta.pop(key)
    (root / "dataset.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("break_it, needle", [
    (lambda r: (r / "dataset.json").write_text("{"), "dataset.json: invalid JSON"),
    (lambda r: _drop_key(r, "file_ending"), "missing key(s) file_ending"),
    (lambda r: _set_meta(r, labels={"background": 0, "GTVp": 1, "Brainstem": 3}),
     "consecutive 0, 1, 2, ... (missing [2])"),
    (lambda r: _set_meta(r, labels={"background": 1, "GTVp": 0, "Brainstem": 2}), "'background' to 0"),
    (lambda r: _set_meta(r, labels={"background": 0, "GTVp": [1, 2], "Brainstem": 2}),
     "region [1, 2] but regions_class_order is missing"),
    (lambda r: _set_meta(r, numTraining=7), "numTraining is 7 but imagesTr holds 4 case(s)"),
    (lambda r: (r / "imagesTr" / "pt1_0001.nii.gz").unlink(), "case 'pt1' has channels [0]"),
    (lambda r: (r / "labelsTr" / "pt2.nii.gz").unlink(), "labelsTr/pt2.nii.gz: missing"),
    (lambda r: shutil.copy(r / "labelsTr" / "pt2.nii.gz", r / "labelsTr" / "ghost.nii.gz"),
     "ghost.nii.gz: label without images"),
    (lambda r: (r / "imagesTr" / "pt3_0000.nii.gz").rename(r / "imagesTr" / "pt3.nii.gz"),
     "pt3.nii.gz: image file not named <case>_XXXX.nii.gz"),
    (lambda r: io.write(io.Volume(np.zeros((4, 12, 10), np.uint8), (3.0, 1.0, 1.0), (0.0, 0.0, 5.0)),
                        r / "labelsTr" / "pt0.nii.gz"), "pt0.nii.gz: grid differs from pt0_0000.nii.gz (origin"),
    (lambda r: io.write(io.Volume(np.full((4, 12, 10), 5, np.uint8), (3.0, 1.0, 1.0)),
                        r / "labelsTr" / "pt0.nii.gz"), "pt0.nii.gz: label values [5] are not declared"),
    (lambda r: (r / "imagesTr" / "pt0_0000.nii.gz").write_bytes(b"garbage"), "pt0_0000.nii.gz: cannot read"),
    (lambda r: shutil.rmtree(r / "labelsTr"), "labelsTr: missing folder"),
])
def test_broken_datasets_name_the_file_and_the_problem(tmp_path, break_it, needle):
    root = _dataset(tmp_path / "ds")
    break_it(root)
    problems = validate(root)
    assert any(needle in p for p in problems), problems
    with pytest.raises(DataError, match="not a valid nnU-Net v2 raw dataset"):
        check(root)


def test_converted_real_and_phantom_datasets_are_valid(tmp_path, openkbp_dir):
    from npcrepro import phantom
    from npcrepro.datasets.adapters import convert

    ph = phantom.generate(tmp_path / "ph", 2, 0, preset="smoke", progress=False)
    assert validate(ph.root) == []
    s = convert("openkbp", openkbp_dir, tmp_path / "kbp", limit=2, progress=False)
    assert validate(s.dst) == [] and "a valid nnU-Net v2 raw dataset" in s.notes


def test_folds_become_nnunet_splits():
    folds = [Fold(["a", "b"], ["c"], ["d"]), Fold(["c", "d"], ["a"], ["b"])]
    assert to_nnunet_splits(folds) == [{"train": ["a", "b"], "val": ["d"]}, {"train": ["c", "d"], "val": ["b"]}]
    assert to_nnunet_splits(folds, book_val="train")[0] == {"train": ["a", "b", "c"], "val": ["d"]}
    with pytest.raises(ParameterError, match="book_val"):
        to_nnunet_splits(folds, book_val="keep")
    with pytest.raises(DataError, match="fold 0 has no test cases"):
        to_nnunet_splits([Fold(["a"], [], [])])


def test_splits_final_checks_cases_and_never_overwrites(tmp_path):
    root = _dataset(tmp_path / "ds")
    folds = [Fold(["pt0", "pt1"], ["pt2"], ["pt3"])]
    path = write_splits_final(folds, tmp_path / "pre", dataset=root)
    assert path == tmp_path / "pre" / "splits_final.json"
    assert json.loads(path.read_text()) == [{"train": ["pt0", "pt1"], "val": ["pt3"]}]
    with pytest.raises(DataError, match="exists"):
        write_splits_final(folds, path)
    with pytest.raises(DataError, match=r"fold 0 names case\(s\) \['ts0'\] that are not training cases"):
        write_splits_final([Fold(["pt0"], [], ["ts0"])], tmp_path / "other", dataset=root)


def test_recorded_folds_of_runs(tmp_path):
    run = tmp_path / "runs" / "smoke" / "luo2020" / "20260101-000000-cv"
    folds = [Fold(["a", "b"], [], ["c"]), Fold(["a", "c"], [], ["b"])]
    save_splits(folds, run / "splits.json")
    (run / "params.json").write_text("{}")
    with pytest.raises(DataError, match="no finished run"):  # not DONE yet
        chapter_run("luo2020", tmp_path / "runs", "smoke")
    (run / "DONE").write_text("")
    got = recorded_folds(chapter_run("luo2020", tmp_path / "runs", "smoke"))
    assert [(f.train, f.test) for f in got] == [(f.train, f.test) for f in folds]
    assert [(f.train, f.test) for f in recorded_folds(run / "splits.json")] == [(f.train, f.test) for f in folds]
    with pytest.raises(DataError, match="records no folds"):
        recorded_folds(tmp_path)
    with pytest.raises(DataError, match="neither a run folder nor a splits file"):
        recorded_folds(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no finished run of track 'phantom'"):
        chapter_run("luo2020", tmp_path / "runs", "smoke", track="phantom")


def test_cli_splits_export_from_a_splits_file(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    save_splits([Fold(["pt0", "pt1"], ["pt2"], ["pt3"])], tmp_path / "splits.json")
    assert main(["splits", "export", str(tmp_path / "splits.json"), str(tmp_path / "out"), "--dataset", str(root),
                 "--book-val", "train"]) == 0
    assert json.loads((tmp_path / "out" / "splits_final.json").read_text()) == [
        {"train": ["pt0", "pt1", "pt2"], "val": ["pt3"]}]
    assert "fold 0: train 2 (book validation: 1, train), val = the book's test 1" in capsys.readouterr().out
    assert main(["splits", "export", "nosuchchapter", str(tmp_path / "out2")]) == 2


def _nnunet_python() -> list[str] | None:
    try:
        import nnunetv2  # noqa: F401

        return [sys.executable]
    except ImportError:
        exe = os.environ.get("NPCREPRO_NNUNET_PYTHON")
        return [exe] if exe else None


@pytest.mark.slow
def test_nnunetv2_accepts_a_converted_dataset_and_its_splits(tmp_path):
    """nnunetv2's own verify_dataset_integrity on a project dataset, and our splits_final.json read as
    nnUNetTrainer.do_split reads it (every case one of the identifiers nnunetv2 finds).

    Optional: nnunetv2 pulls a large stack. It installs against torch 2.13 into a separate venv
    (`python -m venv /tmp/nnv && /tmp/nnv/bin/pip install torch==2.13.0 nnunetv2`); then
    NPCREPRO_NNUNET_PYTHON=/tmp/nnv/bin/python runs this test."""
    python = _nnunet_python()
    if python is None:
        pytest.skip("nnunetv2 not importable and $NPCREPRO_NNUNET_PYTHON not set")
    raw = tmp_path / "raw" / "Dataset501_NPC"
    _dataset(raw)
    pre = tmp_path / "pre" / "Dataset501_NPC"
    write_splits_final([Fold(["pt0", "pt1"], [], ["pt2", "pt3"]), Fold(["pt2", "pt3"], [], ["pt0", "pt1"])],
                       pre, dataset=raw)
    script = (
        "import sys, json\n"
        "from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity\n"
        "verify_dataset_integrity(sys.argv[1], num_processes=1)\n"
        "from batchgenerators.utilities.file_and_folder_operations import load_json\n"
        "from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets\n"
        "ids = set(get_filenames_of_train_images_and_targets(sys.argv[1]))\n"
        "splits = load_json(sys.argv[2])\n"
        "for fold in range(len(splits)):\n"
        "    tr, val = splits[fold]['train'], splits[fold]['val']\n"
        "    assert set(tr) | set(val) <= ids and not set(tr) & set(val), (tr, val, ids)\n"
        "print('NNUNET_OK')\n")
    env = dict(os.environ, nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "res"))
    proc = subprocess.run(python + ["-c", script, str(raw), str(pre / "splits_final.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "NNUNET_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    # and nnunetv2 refuses what validate() refuses: a gap in the label values
    _set_meta(raw, labels={"background": 0, "GTVp": 1, "Brainstem": 3})
    proc = subprocess.run(python + ["-c", script, str(raw), str(pre / "splits_final.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode != 0 and "consecutive" in proc.stderr
