"""The chapter contract: what a chapter tells the runner (:class:`Chapter`, its :class:`Method` s),
one unit of work (:class:`JobSpec`) and what a job's ``fit``/``predict`` get (:class:`JobContext`).

The runner that carries them out is :mod:`npcrepro.engine.experiment`."""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from npcrepro.engine.half_budget import save_half_budget
from npcrepro.engine.runs import job_dir
from npcrepro.errors import DataError, ParameterError

__all__ = ["Method", "Track", "Chapter", "JobContext", "JobSpec", "JobKilled", "load_chapter", "DRY_RUN_ITERATIONS",
           "DRY_RUN_VAL_ITEMS", "DRY_RUN_CASES", "TIMED_ITERATIONS", "DRY_RUN_OVERRIDES", "uses_held_out"]

#: A dry run (:func:`run_experiment` with ``dry_run=True``): training iterations per stage of every
#: network, validation items per evaluation, and patients (train, validation, test: one each).
DRY_RUN_ITERATIONS = 2
DRY_RUN_VAL_ITEMS = 2
DRY_RUN_CASES = 3
#: A timed dry run (``dry_run="time"``, ``npcrepro bench gpu``): iterations per stage, of which the
#: probe times those after its warm-up (:data:`npcrepro.engine.probe.WARMUP_ITERATIONS`).
TIMED_ITERATIONS = 12
#: Chapter extras a dry run keeps to their minimum where a chapter has them: inference timing, and the
#: training batches that measure batch-norm statistics (the leaderboard's gpu profile measures over 256
#: batches two or three times per network: its dry run took over 25 minutes on 2 CPU cores, 4.5 with
#: two batches, which still run every step of the measurement).
DRY_RUN_OVERRIDES = {"timing_slices": 1, "bn_batches": 2}


def _folder_name(what: str, name: str) -> None:
    """A method's or track's name names a folder of the run: no separators, spaces or leading dot."""
    if not name or any(ch in name for ch in "/\\ ") or name.startswith("."):
        raise ParameterError(f"{what} name {name!r} must be a plain folder name")


@dataclass(frozen=True)
class Method:
    """One trainable entry of a chapter.

    ``name`` names its folder and its rows in metrics.csv; ``label`` is what tables show; ``after``
    lists methods of the same fold and seed whose trained models this one needs (self-transfer,
    cascades); ``info`` holds plain facts the chapter's report uses (family, inputs ...); ``folds``
    limits the method to the first few folds (None: every fold)."""

    name: str
    label: str = ""
    after: tuple[str, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)
    folds: int | None = None

    def __post_init__(self) -> None:
        _folder_name("method", self.name)
        if not self.label:
            object.__setattr__(self, "label", self.name)


@dataclass(frozen=True)
class Track:
    """A second run of a chapter beside its main one (a real-data track, an audit), declared as data
    in the chapter's :class:`Chapter` and run by :func:`npcrepro.chapters.run_track` through the same
    runner, in a run folder of its own (``<stamp>-<name>``).

    ``source(P)`` returns (the dataset the track reads: an opened dataset or a dataset folder, or
    None when the track cannot run here; a sentence saying what it read or why it was skipped);
    None reads the main run's data. ``params(P, data)`` returns the track's parameters from the
    chapter's ``P`` (``data``: what ``source`` returned)."""

    name: str
    params: Callable[[Any, Any], Any]
    source: Callable[[Any], tuple[Any, str]] | None = None

    def __post_init__(self) -> None:
        _folder_name("track", self.name)


class JobKilled(RuntimeError):
    """Raised inside a job by the ``kill_after_iterations`` test hook, as a kill would stop it."""


@dataclass
class JobSpec:
    """One unit of work: ``method`` on fold ``fold`` with seed ``seed`` (picklable)."""

    chapter: str
    method: str
    fold: int
    seed: int
    run: str
    params: dict
    train: list[str]
    val: list[str]
    test: list[str]
    kill_after_iterations: int | None = None

    @property
    def label(self) -> str:
        return f"{self.method} fold {self.fold} seed {self.seed}"


class JobContext:
    """What a chapter's ``fit``/``predict`` get besides the data: where to write, which seed and
    device, whether to resume, and the trained models of the methods this one runs after."""

    def __init__(self, chapter: "Chapter", spec: JobSpec, P: Mapping[str, Any]):
        from npcrepro.engine.runs import RunFolder

        self.chapter, self.spec, self.P = chapter, spec, P
        #: when the job started (``time.perf_counter``), before its cases were read and prepared
        self.started = time.perf_counter()
        self.run = RunFolder(job_dir(spec.run, spec.method, spec.fold, spec.seed))
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.seed = int(spec.seed)
        self.fold = int(spec.fold)
        self.device = str(P.get("device") or "cpu")
        self.progress = bool(P.get("progress", False))
        self.facts: dict[str, Any] = {}

    def trainer_args(self, part: str | None = None) -> dict:
        """Keyword arguments every Trainer of this job takes: seed, device, progress, its run folder
        (the job's, or ``<job>/<part>`` when one job trains several networks) and the test hook.
        Use with :meth:`fit` so that a killed job resumes from its checkpoint."""
        run = self.run if part is None else self.run.sub(part)
        callbacks = [save_half_budget]
        if self.spec.kill_after_iterations is not None:
            limit = int(self.spec.kill_after_iterations)

            def kill(trainer, event, info):
                if event == "iteration" and info["iteration"] >= limit:
                    raise JobKilled(f"{self.spec.label}: killed after {limit} iterations (test hook)")

            callbacks.append(kill)
        # the fold and seed tell apart the lines of jobs that train the same method side by side
        desc = self.spec.method + (f"/{part}" if part else "") + f" fold {self.spec.fold} seed {self.spec.seed}"
        out = dict(seed=self.seed, device=self.device, run=run, progress=self.progress, desc=desc,
                   callbacks=callbacks)
        if self.P.get("dry_run"):  # every stage of every network: DRY_RUN_ITERATIONS, one val batch
            cap = {"plan": 0, "time": TIMED_ITERATIONS}.get(self.P["dry_run"], DRY_RUN_ITERATIONS)
            out.update(stage_iteration_cap=cap, val_item_cap=DRY_RUN_VAL_ITEMS, probe=True)
        if self.P.get("amp_dtype"):  # e.g. "bfloat16": the mixed-precision path on the CPU too
            out["amp_dtype"] = str(self.P["amp_dtype"])
        return out

    def fit(self, trainer):
        """``trainer.fit()``, resuming from its run folder's ``checkpoint_last.pt`` when one exists.
        The job's first network to take a training step records, in its training record's
        ``first_iteration_seconds``, the seconds from the job's start to that step: reading and
        preparing the cases, building the datasets, and the network's first batch."""
        run = trainer.run
        try:
            return trainer.fit(resume=bool(run is not None and run.checkpoint_last.exists()))
        finally:
            if trainer.first_step_at is not None:
                self.facts.setdefault("first_iteration_seconds", trainer.first_step_at - self.started)

    def model_of(self, method: str):
        """The trained network of ``method`` (same fold and seed; one of this method's ``after``),
        built by the chapter and loaded from its ``model.pt`` with ``weights_only=True``."""
        import torch

        if method not in self.chapter.method(self.spec.method, self.P).after:
            raise ParameterError(f"{self.spec.method} does not declare {method!r} in `after`")
        path = job_dir(self.spec.run, method, self.spec.fold, self.spec.seed) / "model.pt"
        if not path.exists():
            raise DataError(f"{path}: the model of {method!r} is missing (it must finish first)")
        net = self.chapter.build(self.chapter.method(method, self.P), self.P)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval()


class Chapter:
    """What a chapter tells the runner. Subclass it in ``npcrepro.chapters.<name>`` and expose one
    instance as ``CHAPTER``; every method below may use the resolved parameters ``P``.

    Required: :meth:`methods`, :meth:`build`, :meth:`prepare`, :meth:`fit`, :meth:`predict`.
    Defaults: channels/structures from class attributes, cases = the first ``n_cases``, folds from
    ``cv`` / ``k_folds`` / ``n_test`` / ``val_fraction`` / ``max_folds``, seeds from ``seeds``,
    scoring with :func:`npcrepro.evaluation.evaluate_cases` at threshold ``threshold``, structures
    named as scored (:meth:`structure_label`), no reference that reads no image (:meth:`reference`).
    """

    name: str = ""
    channels: tuple[str, ...] = ()
    structures: tuple[str, ...] = ("GTVp",)
    #: Prepared cases kept per worker process (jobs of one chapter share them); 0 turns it off.
    cache_prepared: int = 64
    #: Runs beside the main one (:class:`Track`), by name.
    tracks: tuple[Track, ...] = ()

    # ------------------------------------------------------------------ what runs
    def methods(self, P) -> list[Method]:
        raise NotImplementedError

    def channels_for(self, P, dataset=None) -> tuple[str, ...]:
        """The image channels a run reads (default: the class attribute ``channels``; empty: all);
        recorded in run.json, and the default of :meth:`load`."""
        return tuple(self.channels)

    def structures_for(self, P, dataset=None) -> tuple[str, ...]:
        """The structures a run on ``dataset`` predicts (default: the class attribute
        ``structures``); recorded in run.json."""
        return tuple(self.structures)

    def method(self, name: str, P) -> Method:
        for m in self.methods(P):
            if m.name == name:
                return m
        for m in self.all_methods(P):
            if m.name == name:
                return m
        raise ParameterError(f"{self.name}: unknown method {name!r}")

    def track(self, name: str) -> Track:
        for t in self.tracks:
            if t.name == name:
                return t
        raise ParameterError(f"{self.name}: unknown track {name!r} (valid: "
                             f"{', '.join(t.name for t in self.tracks) or 'none'})")

    def all_methods(self, P) -> list[Method]:
        """Every method the chapter knows (default: those that run)."""
        return self.methods(P)

    def seeds(self, P) -> list[int]:
        n = int(P.get("seeds") or 1)
        return [int(P["seed"]) + k for k in range(n)]

    def cases(self, dataset, P) -> list[str]:
        names = list(dataset.cases)
        n = P.get("n_cases")
        return names[: int(n)] if n else names

    def held_out(self, dataset, P) -> list[str]:
        """The dataset's own held-out test cases (``imagesTs``) this chapter can score (default: every
        one; a chapter that needs a structure on every case filters them as :meth:`cases` does)."""
        return list(getattr(dataset, "test_cases", []) or [])

    def split(self, dataset, cases: Sequence[str], P):
        """The run's folds over ``cases`` (:meth:`cases`).

        A real dataset that holds its own test cases (``imagesTs``: OpenKBP's test patients) keeps
        them apart as the phantom keeps its cohorts: with ``cohort="evaluation"`` the run trains on
        ``cases`` (validation drawn as the chapter's first fold draws it) and tests on every held-out
        case, in one fold; with ``cohort="development"`` (where recipes are chosen) it never reads
        them and cross-validates over ``cases`` as on a dataset without ``imagesTs``."""
        from npcrepro.datasets.splits import Fold

        folds = self.folds(cases, P)
        test = self.held_out(dataset, P) if uses_held_out(dataset, P) else []
        if not test:
            return folds
        first = folds[0]
        return [Fold(sorted(first.train + first.test), list(first.val), test)]

    def folds(self, cases: Sequence[str], P):
        from npcrepro.datasets.splits import make_splits

        scheme = P.get("cv") or ("kfold" if P.get("k_folds") else "holdout")
        folds = make_splits(list(cases), scheme, seed=int(P["seed"]), k=int(P.get("k_folds") or 5),
                            val_fraction=P.get("val_fraction"), n_val=P.get("n_val"),
                            n_test=P.get("n_test") if P.get("n_test") is not None else 0.2)
        mf = P.get("max_folds")
        return folds[: int(mf)] if mf else folds

    def dataset(self, P, *, progress: bool = False):
        """The dataset the run reads (default :func:`npcrepro.profiles.load_data`)."""
        from npcrepro.profiles import load_data

        return load_data(P, progress=progress)

    # ------------------------------------------------------------------ how it runs
    def build(self, method: Method, P):
        """The untrained network of ``method``."""
        raise NotImplementedError

    def load(self, dataset, name: str, P):
        """One case with this chapter's channels and structures."""
        return dataset.load(name, channels=list(self.channels_for(P, dataset)) or None,
                            structures=list(self.structures_for(P, dataset)) or None)

    def prepare(self, case, P):
        """Case -> whatever ``fit`` and ``predict`` consume (must keep the case for scoring)."""
        raise NotImplementedError

    def fit(self, method: Method, train: list, val: list, ctx: JobContext):
        """Train ``method`` on prepared cases; returns the network (weights loaded)."""
        raise NotImplementedError

    def predict(self, method: Method, model, prepared, ctx: JobContext) -> dict[str, np.ndarray]:
        """{structure: probability (z, y, x) float32 on the case's original grid}."""
        raise NotImplementedError

    def case_of(self, prepared):
        """The original :class:`~npcrepro.datasets.Case` a prepared item came from."""
        return getattr(prepared, "case", prepared)

    def score(self, method: Method, prepared, probs: Mapping[str, np.ndarray],
              masks: Mapping[str, np.ndarray], ctx: JobContext) -> list[dict]:
        """Per-structure metric rows of one test case (default: every metric of
        :func:`npcrepro.metrics.evaluate_case` on the original grid)."""
        from npcrepro.evaluation import evaluate_cases

        case = self.case_of(prepared)
        table = evaluate_cases({case.name: dict(masks)}, [case])
        return table.to_dict("records")

    def threshold(self, P) -> float:
        return float(P.get("threshold") or 0.5)

    def structure_label(self, results, structure: str) -> str:
        """How tables outside the chapter name ``structure`` of the finished run ``results`` (default:
        the name it was scored under; a chapter that scores a stand-in under its own target's name
        says what it is)."""
        return structure

    def rater_agreement(self, dataset, cases: Sequence[str], structures: Sequence[str], P):
        """The raters' agreement on a finished run's test ``cases`` (its ``raters.csv``, the inter-rater
        ceiling): default :func:`npcrepro.evaluation.rater_agreement` over each case's whole grid. A
        chapter that scores its networks on part of a case (some slices) scores the raters on the same
        part (the function's ``part``), so that the ceiling and the networks are measured alike."""
        from npcrepro.evaluation import rater_agreement

        return rater_agreement(dataset, cases, structures)

    def reference(self, results):
        """A reference that reads no image for the finished run ``results`` (a location prior), scored
        on the run's test cases as its networks are: a table with one row per test case (``case``,
        ``dice``), or None where the chapter defines none (the default). :mod:`npcrepro.quality` holds
        the networks of a real-data track to it."""
        return None


def uses_held_out(dataset, P: Mapping[str, Any]) -> bool:
    """Whether a run tests on ``dataset``'s own held-out cases (:meth:`Chapter.split`): a dataset
    with ``imagesTs`` read for the evaluation cohort; never the phantom, never a dry run."""
    from npcrepro.profiles import cohort_of

    return (bool(getattr(dataset, "test_cases", None)) and getattr(dataset, "source", "") != "phantom"
            and cohort_of(P) == "evaluation" and not P.get("dry_run"))


def load_chapter(module: str) -> Chapter:
    """The ``CHAPTER`` of a chapter module (imported by name, so that workers can find it)."""
    mod = importlib.import_module(module)
    chapter = getattr(mod, "CHAPTER", None)
    if not isinstance(chapter, Chapter):
        raise ParameterError(f"{module} has no CHAPTER (a npcrepro.engine.experiment.Chapter)")
    return chapter
