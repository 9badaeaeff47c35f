"""nnU-Net v2 beside the leaderboard (issue 50): the real package's planning, preprocessing, trainer and
validation on a finished leaderboard run's patients and split, its predictions scored as the
leaderboard scores everything.

    npcrepro nnunet RUN [--inputs cet1 mri ct] [--configuration 2d] [--epochs 1] [--iterations 250]

For each input set of :data:`INPUTS` (CET1 beside the MRI networks; T1 + T2 + CET1 beside MMFNet; the
run's CT channel beside the CT networks), :func:`train`:

1. writes an nnU-Net v2 raw dataset (``Dataset50<i>_NPC<INPUT>``) of the run's fold-0 training and
   test patients: their channels as the run read them (a CT channel is named "CT", so nnU-Net
   normalises it as CT) and the run's structure (GTVp) as label 1;
2. runs ``nnUNetv2_plan_and_preprocess`` for the configuration, with integrity checks;
3. writes the run's split as nnU-Net's ``splits_final.json``
   (:func:`npcrepro.datasets.nnunet_raw.write_splits_final`: nnU-Net trains on exactly the run's
   training patients; its "val" are the run's test patients, which nnU-Net has no other use for);
4. trains fold 0 with nnU-Net's default trainer at a budget of ``epochs`` x ``iterations``
   (:mod:`.nnunet_driver`; the default is nnU-Net's own 1000 x 250) and runs nnU-Net's own
   validation, which predicts the test patients (with its mirroring);
5. copies those predictions to ``<run>/nnunet/nnunet-<configuration>-<input>/<case>.nii.gz`` (and,
   with at least 2 epochs, those of the weights at half the epochs to its ``half_budget/``): a
   folder of masks that :func:`npcrepro.scoring.score` (``npcrepro score``) and the leaderboard's
   ``external`` rows score against the run's test patients, with the paired tests against the U-Net
   baselines.

nnU-Net runs in its own environment (``scripts/setup_nnunet_env.sh``: the book's torch 2.13.0 and
nnunetv2 pinned; without torchvision and timm where torchvision cannot load beside a CPU build of
torch, as here), as luo2020's Mask R-CNN row does, so that its dependencies never touch the book's.
:func:`environment` finds it (``$NPCREPRO_NNUNET_PYTHON``, else ``.venv-nnunet``) and says how to
make it where it is absent.

What it costs: on the cpu leaderboard's patients nnU-Net plans its 2d configuration with batches of 64
slices of 128 x 128 (32-512 features), and one training iteration takes 24 s on one core of the
developers' 2-core AMD EPYC: its default budget (250,000 iterations) is a GPU's work.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from npcrepro import io
from npcrepro.chapters.leaderboard.external import HALF
from npcrepro.errors import DataError, ParameterError

__all__ = ["INPUTS", "NNUNET_VERSION", "ENV_DIR", "environment", "export", "train", "row_name", "add_to_run",
           "baseline_of", "inputs_of"]

#: The nnunetv2 release the environment pins (scripts/setup_nnunet_env.sh).
NNUNET_VERSION = "2.8.1"
#: The environment's folder, relative to the repository (``$NPCREPRO_NNUNET_PYTHON`` overrides).
ENV_DIR = ".venv-nnunet"
#: Input set -> the channels it reads ("ct": the run's CT channel, CT or CECT).
INPUTS = {"cet1": ("CET1",), "mri": ("T1", "T2", "CET1"), "ct": ("ct",)}
#: First nnU-Net dataset id; input set i of :data:`INPUTS` is ``FIRST_ID + i``.
FIRST_ID = 501
CONFIGURATIONS = ("2d", "3d_fullres")
#: Where the rows' scores go in the run folder (their half-budget scores beside it).
RECORD = "nnunet/metrics.csv"
_DRIVER = Path(__file__).with_name("nnunet_driver.py")


def row_name(configuration: str, inputs: str) -> str:
    """The prediction folder's (and so the leaderboard row's) name: ``nnunet-2d-cet1``."""
    return f"nnunet-{configuration.replace('_', '')}-{inputs}"


def environment() -> tuple[Path, str]:
    """(the nnU-Net environment's Python, its nnunetv2 version); a one-line DataError saying how to
    make it where it is missing or lacks nnunetv2."""
    from npcrepro.paths import repo_root

    exe = os.environ.get("NPCREPRO_NNUNET_PYTHON")
    python = Path(exe) if exe else repo_root() / ENV_DIR / "bin" / "python"
    how = "make it with `bash scripts/setup_nnunet_env.sh` (or set $NPCREPRO_NNUNET_PYTHON)"
    if not python.exists():
        raise DataError(f"no nnU-Net environment at {python}: {how}")
    done = subprocess.run([str(python), "-c", "import importlib.metadata as m, nnunetv2; print(m.version('nnunetv2'))"],
                          capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise DataError(f"{python} cannot import nnunetv2 ({last}): {how}")
    return python, done.stdout.strip()


def _channels(res, inputs: str) -> list[str]:
    if inputs not in INPUTS:
        raise ParameterError(f"unknown nnU-Net input set {inputs!r} (valid: {', '.join(INPUTS)})")
    ct = str(res.params.get("ct_channel") or "CECT")
    return [ct if c == "ct" else c for c in INPUTS[inputs]]


def export(res, inputs: str, raw_root: str | os.PathLike, dataset_id: int) -> Path:
    """Write the nnU-Net raw dataset of ``res``'s fold-0 training and test patients for input set
    ``inputs`` (see the module docstring); returns its folder ``<raw_root>/Dataset<id>_NPC<INPUTS>``."""
    channels = _channels(res, inputs)
    fold = res.splits()[0]
    structure = res.structures[0]
    raw = Path(raw_root) / f"Dataset{int(dataset_id):03d}_NPC{inputs.upper()}"
    if raw.exists():
        shutil.rmtree(raw)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    ds = res.dataset()
    cases = [*fold.train, *fold.test]
    for name in cases:
        case = ds.load(name, channels=channels, structures=[structure])
        g = case.geometry
        for i, c in enumerate(channels):
            io.write(io.Volume.on_grid(case.images[c], g), raw / "imagesTr" / f"{name}_{i:04d}.nii.gz")
        mask = case.labels.get(structure, np.zeros(case.shape, bool))
        io.write(io.Volume.on_grid(mask.astype(np.uint8), g), raw / "labelsTr" / f"{name}.nii.gz")
    meta = {"channel_names": {str(i): ("CT" if c in ("CT", "CECT") else c) for i, c in enumerate(channels)},
            "labels": {"background": 0, structure: 1}, "numTraining": len(cases), "file_ending": ".nii.gz",
            "name": raw.name, "description": f"npcrepro leaderboard run {res.path.name}, fold 0, input {inputs}"}
    (raw / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    from npcrepro.datasets.nnunet_raw import validate

    problems = validate(raw)
    if problems:
        raise DataError(f"{raw}: not a valid nnU-Net dataset: {problems[0]}")
    return raw


def _run(cmd: Sequence[str], env: dict, what: str, log: Path) -> str:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        done = subprocess.run([str(c) for c in cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        f.write(done.stdout)
    if done.returncode:
        tail = [ln for ln in done.stdout.strip().splitlines() if ln.strip()][-1:] or ["?"]
        raise DataError(f"nnU-Net {what} failed (exit {done.returncode}): {tail[0][:200]} (log: {log})")
    return done.stdout


def train(res, inputs: Sequence[str] = ("cet1",), *, configuration: str = "2d", epochs: int = 1000,
          iterations: int = 250, device: str = "cpu", threads: int | None = None, out: str | os.PathLike | None = None,
          progress=print) -> list[Path]:
    """Train nnU-Net on ``res`` (a finished leaderboard run's :class:`~npcrepro.engine.results.Results`)
    for each input set, and return the folders of its test-patient predictions (see the module
    docstring). ``out``: where nnU-Net's raw, preprocessed and results folders and the prediction
    folders go (default ``<run>/nnunet``)."""
    if configuration not in CONFIGURATIONS:
        raise ParameterError(f"unknown nnU-Net configuration {configuration!r} (valid: {', '.join(CONFIGURATIONS)})")
    for k in inputs:
        _channels(res, k)
    if int(epochs) < 1 or int(iterations) < 1:
        raise ParameterError(f"epochs and iterations must be >= 1, got {epochs} and {iterations}")
    python, version = environment()
    out = Path(out) if out is not None else res.path / "nnunet"
    roots = {k: out / k for k in ("raw", "preprocessed", "results")}
    for p in roots.values():
        p.mkdir(parents=True, exist_ok=True)
    # MPLBACKEND: a notebook kernel's inline backend, which nnU-Net's matplotlib cannot load
    env = {**os.environ, "nnUNet_raw": str(roots["raw"]), "nnUNet_preprocessed": str(roots["preprocessed"]),
           "nnUNet_results": str(roots["results"]), "MPLBACKEND": "Agg"}
    # on a CPU, augmentation in the training process (nnU-Net's worker processes would compete with it
    # for the cores); planning needs a positive count, so only training gets it
    train_env = {**env, "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "0" if device == "cpu" else "")}
    if not train_env["nnUNet_n_proc_DA"]:
        del train_env["nnUNet_n_proc_DA"]
    threads = int(threads or os.cpu_count() or 1)
    bin_dir = python.parent
    from npcrepro.datasets.nnunet_raw import write_splits_final

    folders = []
    for k in inputs:
        did = FIRST_ID + list(INPUTS).index(k)
        log = out / f"{row_name(configuration, k)}.log"
        progress(f"nnU-Net {version} ({configuration}, {k}): exporting, planning and preprocessing ...")
        raw = export(res, k, roots["raw"], did)
        _run([bin_dir / "nnUNetv2_plan_and_preprocess", "-d", str(did), "-c", configuration, "-np", "1",
              "--verify_dataset_integrity"], env, "planning and preprocessing", log)
        write_splits_final(res.splits()[:1], roots["preprocessed"] / raw.name / "splits_final.json", dataset=raw,
                           overwrite=True)
        progress(f"nnU-Net ({configuration}, {k}): training {epochs} x {iterations} iterations on {device} ...")
        stdout = _run([python, _DRIVER, raw.name, configuration, int(epochs), int(iterations), device, threads],
                      train_env, "training", log)
        facts = json.loads(stdout.strip().splitlines()[-1])
        pred = Path(facts["output_folder"]) / "validation"
        folder = out / row_name(configuration, k)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        for f in sorted(pred.glob("*.nii.gz")):
            shutil.copy2(f, folder / f.name)
        if facts.get("half_folder"):  # the half-budget weights' predictions (epochs >= 2)
            (folder / HALF).mkdir()
            for f in sorted(Path(facts["half_folder"]).glob("*.nii.gz")):
                shutil.copy2(f, folder / HALF / f.name)
        (folder / "nnunet.json").write_text(json.dumps(
            {"nnunetv2": version, "configuration": configuration, "inputs": k, "channels": _channels(res, k),
             "epochs": int(epochs), "iterations_per_epoch": int(iterations), "device": device, **facts},
            indent=1), encoding="utf-8")
        progress(f"nnU-Net ({configuration}, {k}): {facts['train_seconds']:.0f} s training, "
                 f"{facts['validation_seconds']:.0f} s predicting; masks in {folder}")
        folders.append(folder)
    return folders


def inputs_of(channels: Sequence[str]) -> str | None:
    """The input set of :data:`INPUTS` that reads ``channels`` (a network's input images), or None."""
    names = tuple("ct" if c in ("CT", "CECT") else c for c in channels)
    return next((k for k, v in INPUTS.items() if v == names), None)


def baseline_of(inputs: str) -> str:
    """The U-Net an nnU-Net row is paired against in the leaderboard: the one that reads CT for CT,
    else the one that reads CET1 (no U-Net of the leaderboard reads T1 + T2 + CET1)."""
    return "unet_ct" if inputs == "ct" else "unet_cet1"


def _label(configuration: str, inputs: str, channels: Sequence[str]) -> str:
    return f"nnU-Net {configuration.replace('_fullres', '').upper()} ({'+'.join(channels)})"


def _trained(folder: Path, want: dict) -> bool:
    """Whether ``folder`` holds the predictions of an nnU-Net trained as ``want`` says (a resumed run)."""
    try:
        facts = json.loads((folder / "nnunet.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return all(facts.get(k) == v for k, v in want.items())


def add_to_run(P, res, progress=print):
    """The leaderboard's nnU-Net rows: ``res`` with one row per input set of ``P.nnunet`` and
    configuration of ``P.nnunet_configurations``, each trained by :func:`train` (``P.nnunet_epochs`` x
    ``P.nnunet_iterations``) unless the run already holds its predictions at that budget, and scored
    against the U-Net of :func:`baseline_of` (half-budget predictions too). Returns (Results, a
    one-line account: off at this profile, no environment, or what ran and what failed)."""
    from npcrepro.chapters.leaderboard.external import add_rows
    from npcrepro.profiles import resolve_device

    inputs, configurations = list(P.get("nnunet") or []), list(P.get("nnunet_configurations") or ["2d"])
    if not inputs:
        return add_rows(res, [], RECORD), (f"off in the {P.get('profile')} profile (nnunet = []); `-p nnunet "
                                           "'[\"cet1\", \"mri\", \"ct\"]'` trains nnU-Net beside the networks (a "
                                           "GPU's work: see the text above)")
    for k in inputs:
        _channels(res, k)
    for c in configurations:
        if c not in CONFIGURATIONS:
            raise ParameterError(f"unknown nnU-Net configuration {c!r} (valid: {', '.join(CONFIGURATIONS)})")
    try:
        _, version = environment()
    except DataError as exc:
        return add_rows(res, [], RECORD), f"not run: {exc}"
    epochs, iterations = int(P["nnunet_epochs"]), int(P["nnunet_iterations"])
    device = resolve_device(str(P.get("device") or "auto"))
    rows, failed = [], []
    for configuration in configurations:
        for k in inputs:
            folder = res.path / "nnunet" / row_name(configuration, k)
            want = {"nnunetv2": version, "configuration": configuration, "inputs": k, "epochs": epochs,
                    "iterations_per_epoch": iterations, "channels": _channels(res, k)}
            if not _trained(folder, want):
                try:
                    train(res, [k], configuration=configuration, epochs=epochs, iterations=iterations, device=device,
                          threads=P.get("threads"), progress=progress)
                except DataError as exc:
                    failed.append(f"{row_name(configuration, k)}: {exc}")
                    continue
            rows.append((str(folder), {"paper": "nnU-Net", "baseline": baseline_of(k),
                                       "dims": "3d" if configuration.startswith("3d") else "2d",
                                       "channels": _channels(res, k), "configuration": configuration,
                                       "inputs": k}))
    labels = {r[0]: _label(r[1]["configuration"], r[1]["inputs"], r[1]["channels"]) for r in rows}
    res = add_rows(res, rows, RECORD, label=labels.get, one_model=True)
    said = (f"{len(rows)} nnU-Net row(s) (nnunetv2 {version}, {', '.join(configurations)}; {epochs} epochs x "
            f"{iterations} iterations on {device})")
    return res, said + "".join(f"; failed: {f}" for f in failed)


if __name__ == "__main__":  # pragma: no cover - `npcrepro nnunet` is the entry point
    sys.exit("use `npcrepro nnunet RUN ...`")
