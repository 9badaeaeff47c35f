"""scripts/gpu_loan.py: what a GPU session brings back about each chapter's jobs."""
from __future__ import annotations

import importlib.util
import json

from npcrepro.paths import repo_root


def _loan():
    spec = importlib.util.spec_from_file_location("gpu_loan", repo_root() / "scripts" / "gpu_loan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_first_iterations_are_the_slowest_and_median_job_over_the_run_folders(tmp_path):
    loan = _loan()
    runs = [tmp_path / "a", tmp_path / "b"]
    for run, method, seconds in ((runs[0], "unet", 12.5), (runs[0], "fcn", 40.0), (runs[1], "unet", 7.25)):
        job = run / method / "fold_0" / "seed_0"
        job.mkdir(parents=True)
        (job / "training.json").write_text(json.dumps({"first_iteration_seconds": seconds}))
    skipped = runs[1] / "nnunet" / "fold_0" / "seed_0"
    skipped.mkdir(parents=True)
    (skipped / "training.json").write_text("{not json")  # a record cut short is left out, not fatal
    (runs[1] / "fcn" / "fold_0" / "seed_1").mkdir(parents=True)
    (runs[1] / "fcn" / "fold_0" / "seed_1" / "training.json").write_text(json.dumps({"train_seconds": 3}))
    assert loan.first_iterations(runs) == {"first_iteration_s_max": 40.0, "first_iteration_s_median": 12.5,
                                           "jobs_timed": 3}
    assert loan.first_iterations([tmp_path / "none"]) == {}
