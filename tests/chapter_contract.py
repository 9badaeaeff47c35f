"""The chapter contract: every chapter's test module subclasses :class:`ChapterContract`.

>>> class TestContract(ChapterContract):
...     chapter = "chen2020"
...     overrides = {"rows": "single_t1,multi_encoder_mm"}   # optional: faster smoke settings

It checks, for that chapter:

* the notebook's parameters cell and the registry (:mod:`npcrepro.recipes`) name the same parameters;
* a smoke run through the runner writes the one run-folder layout (run.json, params.json,
  environment.json, splits.json, metrics.csv with method/fold/seed/case/structure, and every
  test case's prediction on the case's own grid in every job folder);
* a run killed inside its first job's training and resumed gives the same metrics as an uninterrupted run;
* :class:`~npcrepro.engine.results.Results` round-trips (what the runner returned = what it reads);
* every recipe value that differs from the paper at some profile has a reason in DEVIATIONS, and
  every paper value in PAPER equals the transcription in :mod:`npcrepro.papers`;
* a chapter that judges claims trains at least :attr:`ChapterContract.min_seeds` seeds per network.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
KEYS = ["method", "fold", "seed", "case", "structure"]


def parameters_cell_names(notebook: str) -> list[str]:
    """Names assigned in a notebook's cell tagged "parameters"."""
    nb = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


class ChapterContract:
    chapter: str = ""
    overrides: dict = {}
    #: The first job is killed at this training iteration (after a checkpoint, ideally).
    kill_at: int = 2
    #: The fewest trainings (seeds) per network at the profiles where the chapter judges claims
    #: (issue 44: 2 at cpu, 3 at gpu); empty for a chapter that judges none (the template).
    min_seeds: dict = {"cpu": 2, "gpu": 3}

    # ------------------------------------------------------------------ fixtures
    @pytest.fixture(scope="class")
    def params(self, tmp_path_factory):
        from npcrepro import profiles

        out = tmp_path_factory.mktemp(f"contract-{self.chapter}")
        return profiles.resolve(self.chapter, "smoke", out_dir=str(out), device="cpu", **self.overrides)

    @pytest.fixture(scope="class")
    def full(self, params):
        from npcrepro import chapters

        return chapters.run(params, name="full", progress=False)

    # ------------------------------------------------------------------ the contract
    def test_parameters_cell_matches_registry(self):
        from npcrepro import profiles

        cell = parameters_cell_names(self.chapter)
        registry = list(profiles.parameters(self.chapter, "cpu"))
        assert sorted(cell) == sorted(registry), (
            f"only in the notebook: {sorted(set(cell) - set(registry))}; "
            f"only in the registry: {sorted(set(registry) - set(cell))}")

    def test_claims_rest_on_several_trainings(self):
        from npcrepro import profiles

        for profile, n in self.min_seeds.items():
            P = profiles.resolve(self.chapter, profile)
            assert int(P["seeds"]) >= n, f"{self.chapter} at {profile}: {P['seeds']} seed(s), claims need {n}"

    def test_smoke_run_writes_the_layout(self, full):
        from npcrepro.engine.experiment import job_dir

        p = full.path
        for name in ("run.json", "params.json", "environment.json", "splits.json", "metrics.csv",
                     "training.csv", "DONE"):
            assert (p / name).exists(), name
        assert full.done and full.chapter == self.chapter
        if full.params.get("data") == "phantom":  # which phantom its numbers are of, however the chapter made it
            from npcrepro.phantom import GENERATOR_VERSION

            assert full.info["phantom"]["generator_version"] == GENERATOR_VERSION
        assert list(full.metrics.columns[:5]) == KEYS
        assert len(full.metrics) > 0
        for k, fold in enumerate(full.splits()):
            for method in full.methods:
                for seed in full.seeds:
                    d = job_dir(p, method, k, seed)
                    assert (d / "DONE").exists() and (d / "model.pt").exists(), d
                    for case in fold.test:
                        shape = full.load_case(case).shape
                        for structure in full.structures:
                            f = d / "predictions" / case / f"{structure}.nii.gz"
                            assert f.exists(), f
                            mask = full.prediction(method, case, structure, seed)
                            assert mask.dtype == bool
                            assert mask.shape == shape, (f, mask.shape, shape)
        # every job's first training step, timed from the job's start (reading its cases included)
        first = full.training["first_iteration_seconds"].astype(float)
        assert first.notna().all(), full.training[["method", "first_iteration_seconds"]]
        assert ((first > full.training["prepare_seconds"]) & (first <= full.training["train_seconds"])).all()

    def test_kill_and_resume_gives_identical_metrics(self, params, full):
        from npcrepro import chapters

        killed = chapters.run(params, name="killed", kill_after_iterations=self.kill_at, progress=False)
        assert not killed.done and killed.status == "running"
        assert killed.metrics.empty
        resumed = chapters.run(params.replace(resume=str(killed.path)), progress=False)
        assert resumed.path == killed.path and resumed.done
        a = full.metrics.sort_values(KEYS).reset_index(drop=True)
        b = resumed.metrics.sort_values(KEYS).reset_index(drop=True)
        num = [c for c in a.columns if c != "seconds" and pd.api.types.is_numeric_dtype(a[c])]
        pd.testing.assert_frame_equal(a[KEYS], b[KEYS])
        np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float), rtol=1e-9, atol=1e-12,
                                   equal_nan=True)

    def test_resume_refuses_other_parameters(self, params, full):
        from npcrepro import chapters
        from npcrepro.errors import ParameterError

        with pytest.raises(ParameterError, match="cannot resume"):
            chapters.run(params.replace(resume=str(full.path), seed=int(params["seed"]) + 1), progress=False)

    def test_results_round_trip(self, full):
        from npcrepro.engine.results import Results

        again = Results.open(full.path)
        pd.testing.assert_frame_equal(full.metrics, again.metrics)
        assert again.methods == full.methods and again.folds == full.folds and again.seeds == full.seeds
        assert set(full.metrics["method"]) == set(full.methods)

    def test_deviations_are_complete(self):
        from npcrepro import profiles, recipes

        for profile in profiles.PROFILES:
            missing = [d["parameter"] for d in recipes.deviations(self.chapter, profile) if not d["why"]]
            assert not missing, f"{self.chapter} {profile}: no reason given for {missing}"

    def test_deviations_test_catches_a_removed_reason(self, monkeypatch):
        """Mutation check of the test above: dropping any one reason from DEVIATIONS makes it fail."""
        from npcrepro import recipes

        mod = recipes.load(self.chapter)
        needed = {d["parameter"] for p in ("smoke", "cpu", "gpu") for d in recipes.deviations(self.chapter, p)}
        full = dict(mod.DEVIATIONS)
        for param in sorted(needed):
            monkeypatch.setattr(mod, "DEVIATIONS", {k: v for k, v in full.items() if k != param})
            with pytest.raises(AssertionError, match=param):
                self.test_deviations_are_complete()
        monkeypatch.undo()

    def test_paper_values_match_the_transcription(self):
        from npcrepro import papers, recipes

        mod = recipes.load(self.chapter)
        if not mod.PAPER:
            pytest.skip(f"{self.chapter} has no paper values")
        recipe = papers.info(self.chapter).recipe
        for param, (item, value) in mod.PAPER.items():
            assert item in recipe, f"{param}: {item!r} is not an item of papers.{self.chapter} recipe"
            stated = recipe[item]["value"]
            if isinstance(stated, (int, float)) and not isinstance(stated, bool):
                assert float(value) == pytest.approx(float(stated)), (param, value, stated)
