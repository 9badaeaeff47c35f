"""Train and validate nnU-Net v2 with a fixed iteration budget: run by the nnU-Net environment's Python.

    python nnunet_driver.py DATASET CONFIGURATION EPOCHS ITERATIONS_PER_EPOCH DEVICE THREADS

This file imports only the standard library, torch and nnunetv2 (never npcrepro): it runs in the
environment ``scripts/setup_nnunet_env.sh`` makes, with ``nnUNet_raw``, ``nnUNet_preprocessed`` and
``nnUNet_results`` set by :mod:`npcrepro.chapters.leaderboard.nnunet`. It builds nnU-Net's own
``nnUNetTrainer`` with the planned configuration of DATASET (from ``nnUNetPlans.json``), changes only
the budget (``num_epochs`` x ``num_iterations_per_epoch``: nnU-Net's default is 1000 x 250), trains
fold 0 of the dataset's ``splits_final.json`` and runs nnU-Net's own validation, which predicts the
fold's ``val`` cases (the leaderboard's test patients) into ``fold_0/validation/<case>.nii.gz``.
With at least 2 epochs it also keeps the weights at half the epochs and predicts the same cases with
them into ``fold_0/validation_half/`` (the half-budget check every leaderboard network gets), then
deletes that checkpoint.

The trainer class is imported here and not looked up by name, as ``nnUNetv2_train`` does: its lookup
imports every trainer module of the package, the Primus ones included, which need timm and
torchvision.
"""
import json
import os
import shutil
import sys
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_npcrepro(nnUNetTrainer):  # noqa: N801 - nnU-Net names its trainers so
    """nnU-Net's default trainer with the budget of ``$NPCREPRO_NNUNET_EPOCHS`` epochs of
    ``$NPCREPRO_NNUNET_ITERATIONS`` iterations; nothing else changed."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ["NPCREPRO_NNUNET_EPOCHS"])
        self.num_iterations_per_epoch = int(os.environ["NPCREPRO_NNUNET_ITERATIONS"])

    def on_epoch_end(self):
        super().on_epoch_end()  # counts the epoch
        if self.num_epochs >= 2 and self.current_epoch == self.num_epochs // 2:
            self.save_checkpoint(os.path.join(self.output_folder, HALF_CHECKPOINT))


HALF_CHECKPOINT = "checkpoint_half_npcrepro.pth"


def _validate_half(trainer) -> str | None:
    """Predict the validation cases with the half-budget weights into ``validation_half`` (the
    final weights' predictions stay in ``validation``); None without a half-budget checkpoint."""
    out = trainer.output_folder
    half = os.path.join(out, HALF_CHECKPOINT)
    if not os.path.isfile(half):
        return None
    final, kept = os.path.join(out, "validation"), os.path.join(out, "validation_final_npcrepro")
    os.replace(final, kept)
    trainer.load_checkpoint(half)
    trainer.perform_actual_validation()
    target = os.path.join(out, "validation_half")
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.replace(final, target)
    os.replace(kept, final)
    os.remove(half)
    return target


def main(dataset: str, configuration: str, epochs: int, iterations: int, device: str, threads: int) -> None:
    os.environ["NPCREPRO_NNUNET_EPOCHS"], os.environ["NPCREPRO_NNUNET_ITERATIONS"] = str(epochs), str(iterations)
    pre = os.path.join(os.environ["nnUNet_preprocessed"], dataset)
    with open(os.path.join(pre, "nnUNetPlans.json"), encoding="utf-8") as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    plans["continue_training"] = False  # what nnUNetv2_train adds before it builds a trainer
    if device == "cpu":
        torch.set_num_threads(threads)
    trainer = nnUNetTrainer_npcrepro(plans=plans, configuration=configuration, fold=0,
                                     dataset_json=dataset_json, device=torch.device(device))
    t0 = time.perf_counter()
    trainer.run_training()
    t1 = time.perf_counter()
    log = dict(trainer.logger.get_checkpoint())  # before the half-budget weights replace it
    facts = {"train_seconds": t1 - t0, "output_folder": trainer.output_folder,
             "half_epochs": epochs // 2 if epochs >= 2 else None,
             "ema_pseudo_dice": [float(v) for v in log.get("ema_fg_dice", [])],
             "train_loss": [float(v) for v in log.get("train_losses", [])]}
    trainer.perform_actual_validation()
    facts["validation_seconds"] = time.perf_counter() - t1
    facts["half_folder"] = _validate_half(trainer)
    print(json.dumps(facts), flush=True)


if __name__ == "__main__":  # nnU-Net's validation starts worker processes, which import this file
    a = sys.argv[1:]
    if len(a) != 6:
        raise SystemExit(__doc__.splitlines()[2].strip())
    main(a[0], a[1], int(a[2]), int(a[3]), a[4], int(a[5]))
