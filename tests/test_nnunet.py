"""nnU-Net v2 beside the leaderboard (issue 50): the export of a leaderboard run's split as nnU-Net's raw
dataset and splits_final.json, the environment check, the command's input checks, and (where the
nnU-Net environment exists, made by scripts/setup_nnunet_env.sh) a short end-to-end training."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from npcrepro import io, phantom
from npcrepro.chapters.leaderboard import nnunet
from npcrepro.datasets import Fold, save_splits
from npcrepro.datasets.nnunet_raw import to_nnunet_splits, validate
from npcrepro.engine.results import Results
from npcrepro.errors import DataError, ParameterError


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Results:
    """A finished leaderboard run's folder as nnunet reads it: its data, split, structure and CT channel."""
    root = tmp_path_factory.mktemp("nnunet")
    data = phantom.generate(root / "data", 5, 0, preset="smoke", progress=False)
    folder = root / "leaderboard" / "20260101-000000-phantom"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"chapter": "leaderboard", "status": "done", "methods": [],
                                                 "structures": ["GTVp"], "data": str(data.root)}))
    (folder / "params.json").write_text(json.dumps({"ct_channel": "CECT", "profile": "smoke"}))
    save_splits([Fold(["npc_000", "npc_001"], ["npc_002"], ["npc_003", "npc_004"])], folder / "splits.json")
    return Results.open(folder)


@pytest.mark.parametrize("inputs, channels, names", [("cet1", ["CET1"], {"0": "CET1"}),
                                                     ("mri", ["T1", "T2", "CET1"], {"0": "T1", "1": "T2", "2": "CET1"}),
                                                     ("ct", ["CECT"], {"0": "CT"})])
def test_a_run_is_exported_as_nnunet_raw_data_of_its_training_and_test_patients(run, tmp_path, inputs, channels,
                                                                                 names):
    raw = nnunet.export(run, inputs, tmp_path, 502)
    assert raw.name == f"Dataset502_NPC{inputs.upper()}" and validate(raw) == []
    meta = json.loads((raw / "dataset.json").read_text())
    # CT is named "CT" so that nnU-Net normalises it as CT; the book's validation patient is left out
    assert meta["channel_names"] == names and meta["labels"] == {"background": 0, "GTVp": 1}
    assert meta["numTraining"] == 4
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [f"npc_00{i}.nii.gz" for i in (0, 1, 3, 4)]
    case = run.dataset().load("npc_003", channels=channels, structures=["GTVp"])
    for i, c in enumerate(channels):
        np.testing.assert_array_equal(io.read(raw / "imagesTr" / f"npc_003_{i:04d}.nii.gz").array, case.images[c])
    label = io.read(raw / "labelsTr" / "npc_003.nii.gz")
    np.testing.assert_array_equal(label.array.astype(bool), case.labels["GTVp"])
    assert set(np.unique(label.array)) <= {0, 1}
    # nnU-Net trains on the run's training patients and predicts its test patients as "val"
    assert to_nnunet_splits(run.splits()[:1]) == [{"train": ["npc_000", "npc_001"], "val": ["npc_003", "npc_004"]}]


def test_bad_choices_are_one_line_errors(run, monkeypatch, tmp_path):
    with pytest.raises(ParameterError, match="unknown nnU-Net input set 'pet'"):
        nnunet.export(run, "pet", tmp_path, 501)
    with pytest.raises(ParameterError, match="configuration '3d'"):
        nnunet.train(run, ["cet1"], configuration="3d")
    with pytest.raises(ParameterError, match="epochs and iterations"):
        nnunet.train(run, ["cet1"], epochs=0)
    monkeypatch.setenv("NPCREPRO_NNUNET_PYTHON", str(tmp_path / "none" / "python"))
    with pytest.raises(DataError, match="no nnU-Net environment .*setup_nnunet_env.sh") as err:
        nnunet.train(run, ["cet1"])
    assert "\n" not in str(err.value)
    import importlib.util

    if importlib.util.find_spec("nnunetv2") is None:  # this environment is a Python without nnU-Net
        monkeypatch.setenv("NPCREPRO_NNUNET_PYTHON", sys.executable)
        with pytest.raises(DataError, match="cannot import nnunetv2"):
            nnunet.environment()


def test_the_command_refuses_a_run_of_another_chapter(tmp_path, capsys):
    from npcrepro import cli

    folder = tmp_path / "li2018" / "x"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"chapter": "li2018", "status": "done", "methods": []}))
    (folder / "params.json").write_text("{}")
    assert cli.main(["nnunet", str(folder)]) == 2
    assert "nnU-Net trains on a leaderboard run's split" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:   # argparse: the usage error, on one line
        cli.main(["nnunet", str(folder), "--inputs", "pet"])
    assert err.value.code == 2 and "invalid choice: 'pet'" in capsys.readouterr().err


def _nnunet_python():
    try:
        return nnunet.environment()
    except DataError as exc:
        pytest.skip(f"no nnU-Net environment ({exc})")


@pytest.mark.slow
def test_nnunet_trains_on_the_split_and_predicts_the_test_patients(run, tmp_path, monkeypatch):
    """End to end with nnU-Net's own pipeline at a tiny budget (2 epochs of 1 iteration): masks of the
    run's test patients on their grids, which the leaderboard's scoring reads, and the masks of the
    weights at half the epochs beside them. From a notebook kernel too, whose matplotlib backend
    nnU-Net's environment cannot load."""
    _nnunet_python()
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    from npcrepro.scoring import read_predictions

    folders = nnunet.train(run, ["cet1"], epochs=2, iterations=1, out=tmp_path, threads=1, progress=lambda *_: None)
    (folder,) = folders
    assert folder.name == "nnunet-2d-cet1"
    cases = [run.dataset().load(n) for n in run.splits()[0].test]
    for where in (folder, folder / nnunet.HALF):
        masks = read_predictions(where, cases, "GTVp")
        assert set(masks) == {"npc_003", "npc_004"} and all(m.shape == c.shape for m, c in zip(masks.values(), cases))
    facts = json.loads((folder / "nnunet.json").read_text())
    assert facts["nnunetv2"] == nnunet.NNUNET_VERSION and facts["epochs"] == 2 and facts["iterations_per_epoch"] == 1
    assert facts["half_epochs"] == 1 and len(facts["ema_pseudo_dice"]) == len(facts["train_loss"]) == 2
    assert not list(tmp_path.rglob("checkpoint_half_npcrepro.pth"))  # the half-budget weights are not kept
