"""luo2020: every method is one network trained on labelled CT slices with the paper's loss.

Methods (the rows of the chapter): the paper's "U-Net", "FCN-8" and "Ours" (stage 1 + stage 2 + MSP,
one network trained end to end with the loss on both stages' outputs), and two ablations that test the
paper's two claims with the same code: "Two-stage, no MSP" and "One-stage + MSP". Stage 1 *is* a
five-level U-Net, so the U-Net row is also the "one stage, no MSP" corner of the 2 x 2 ablation.

Recipe (:mod:`npcrepro.chapters.luo2020.recipe`): beta * two-sided Dice + (1 - beta) * focal on sigmoid
outputs (one per structure: CTV2 contains the primary GTV, so one softmax class per structure cannot
describe a voxel in both), Adam, lr decayed x``lr_gamma`` ten times over the run (or literally every
``lr_every`` iterations), no augmentation, no model selection. Scores per patient and structure over
its labelled slices: DSC, AUC (rank formula), F1, JSC and the soft L2 DSC of Eq. (4).
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Mapping

import numpy as np

from npcrepro import metrics as M
from npcrepro.chapters.luo2020 import prepare as prep
from npcrepro.engine.experiment import Chapter, Method, Track
from npcrepro.errors import DataError, ParameterError

__all__ = ["METHODS", "Luo2020", "CHAPTER", "luo2020", "network", "build_method", "prior_init",
           "make_loss", "schedule_spec", "schedule_text", "method_label", "score_rows", "AUDIT_DIR",
           "split_audit_params", "OPENKBP_FOLDS", "openkbp_source", "openkbp_params"]

#: Method key -> (label, model name, fixed model arguments). The widths come from the profile.
METHODS: dict[str, tuple[str, str, dict]] = {
    "unet": ("U-Net", "unet2d", {}),
    "fcn8": ("FCN-8", "fcn8s", {}),
    "ours": ("Ours", "two_stage_unet", {"two_stage": True, "msp": "both"}),
    "two_stage_no_msp": ("Two-stage, no MSP", "two_stage_unet", {"two_stage": True, "msp": "none"}),
    "one_stage_msp": ("One-stage + MSP", "two_stage_unet", {"two_stage": False, "msp": "stage1"}),
}


def method_label(key: str) -> str:
    """Display name of a method key (``"ours"`` -> ``"Ours"``)."""
    if key not in METHODS:
        raise ParameterError(f"unknown luo2020 method {key!r} (valid: {', '.join(METHODS)})")
    return METHODS[key][0]


# ----------------------------------------------------------------------------------- networks
def build_method(key: str, P: Mapping[str, Any], n_classes: int, in_channels: int = 1):
    """The network of method ``key`` at the widths of ``P`` (a profile's parameters), output layers
    initialised at probability ``P.prior`` when it is set; with ``P.coord_channel`` it is also given each
    pixel's column as an input channel (:class:`~npcrepro.models.blocks.WithColumnCoordinate`)."""
    import npcrepro.models.fcn  # noqa: F401  (registers fcn8s)
    import npcrepro.models.two_stage_unet  # noqa: F401  (registers two_stage_unet)
    import npcrepro.models.unet  # noqa: F401
    from npcrepro.models import build

    method_label(key)
    _, name, fixed = METHODS[key]
    coord = bool(P.get("coord_channel"))
    in_channels = in_channels + coord
    if name == "unet2d":
        model = build(name, in_channels=in_channels, n_classes=n_classes, widths=list(P["stage1_widths"]))
    elif name == "fcn8s":
        fc = int(P["fcn_channels"])
        model = build(name, in_channels=in_channels, n_classes=n_classes, widths=list(P["fcn_widths"]),
                      fc_channels=fc, fc_kernel=7 if fc >= 1024 else 3)
    else:
        model = build(name, in_channels=in_channels, n_classes=n_classes, stage1_widths=list(P["stage1_widths"]),
                      stage2_widths=list(P["stage2_widths"]),
                      deep_supervision=bool(P.get("deep_supervision", True)), **fixed)
    if P.get("prior"):
        prior_init(model, float(P["prior"]))
    if coord:
        from npcrepro.models.blocks import WithColumnCoordinate

        model = WithColumnCoordinate(model)
    return model


def network(name: str, *, width: float = 1.0, in_channels: int = 1, profile: str = "cpu"):
    """The leaderboard's network ``name`` ("ours" or "fcn8"): one output, the widths and the output
    initialisation (``prior``) of this chapter's recipe at ``profile``, as the chapter builds it.
    ``width`` is accepted for the leaderboard's one signature and, as before, not applied: the recipe's
    widths are used as they are. The leaderboard's one structure (GTVp) has no side, so the column
    input of the chapter's 14 structures (``coord_channel``) is left out."""
    from npcrepro import recipes

    if name not in ("ours", "fcn8"):
        raise ParameterError(f"luo2020 network {name!r}: the leaderboard uses 'ours' or 'fcn8'")
    sizes = recipes.load("luo2020").PROFILES.get(profile)
    if sizes is None:
        raise ParameterError(f"unknown profile {profile!r} for luo2020")
    return build_method(name, {**sizes, "coord_channel": False}, 1, in_channels)


def prior_init(model, prior: float = 0.01):
    """Initialise the output layer(s) so that every structure starts at probability ``prior``: weights
    N(0, 0.01) and bias log(prior / (1 - prior)) -- the initialisation the focal loss was introduced
    with (Lin et al. 2017), which keeps the many background pixels from swamping the first updates.
    Applied to U-Net's head, both heads of the two-stage network, and FCN-8s's last upsampling bias
    (its weights stay bilinear)."""
    import torch
    from torch import nn

    from npcrepro.models.fcn import FCN8s

    if not 0 < prior < 1:
        raise ParameterError(f"prior must be in (0, 1), got {prior}")
    bias = math.log(prior / (1 - prior))
    if isinstance(model, FCN8s):
        heads, last = [model.score_fr], [model.up8]
    else:
        heads = [m for m in (getattr(model, "head", None), getattr(model, "head1", None),
                             getattr(model, "head2", None)) if m is not None]
        last = heads
    if not heads:
        raise ParameterError(f"prior_init: no output layer found in {type(model).__name__}")
    with torch.no_grad():
        for h in heads:
            nn.init.normal_(h.weight, 0.0, 0.01)
            nn.init.zeros_(h.bias)
        for h in last:
            h.bias.fill_(bias)
    return model


# ----------------------------------------------------------------------------------- recipe
def make_loss(P: Mapping[str, Any]):
    """Eq. (3), beta * two-sided Dice + (1 - beta) * focal, on every stage's output (averaged). The Dice
    term is Eq. (1) as printed with ``P.dice_form="eq1"`` (the default), else its normalised form
    (:class:`~npcrepro.losses.TwoSidedDiceLoss`)."""
    from npcrepro.chapters.luo2020.losses import BatchDiceFocalLoss, StagewiseLoss

    form = P.get("dice_form", "eq1")
    if form not in ("eq1", "normalised"):
        raise ParameterError(f"dice_form must be 'eq1' or 'normalised', got {form!r}")
    return StagewiseLoss(BatchDiceFocalLoss(float(P["beta"]), float(P["focal_alpha"]), float(P["focal_gamma"]),
                                            float(P["dice_eps"]), bool(P.get("batch_dice", True)),
                                            literal=form == "eq1"))


def schedule_spec(P: Mapping[str, Any], iterations: int) -> dict:
    """The Trainer's schedule: ``lr_schedule="literal"`` decays x``lr_gamma`` every ``lr_every``
    iterations (as written); ``"scaled"`` spreads ``lr_decays`` decays evenly over the run (both after a
    linear warm-up over the share ``warmup`` of the run, when given); ``"cosine"`` a linear warm-up over
    ``warmup`` of each cycle then a cosine decay to 0, ``cycles`` times over the run."""
    mode = P.get("lr_schedule", "scaled")
    gamma = float(P.get("lr_gamma", 0.9))
    if mode == "literal":
        every = int(P.get("lr_every", 10))
    elif mode == "scaled":
        every = max(1, int(iterations) // int(P.get("lr_decays", 10)))
    elif mode == "cosine":
        from npcrepro.engine.schedules import cosine_cycles

        return cosine_cycles(int(iterations), float(P.get("warmup") or 0), int(P.get("cycles") or 1))
    else:
        raise ParameterError(f"lr_schedule must be 'scaled', 'literal' or 'cosine', got {mode!r}")
    spec = {"kind": "exponential", "every": every, "gamma": gamma}
    warmup = int(round(float(P.get("warmup") or 0) * int(iterations)))
    return {**spec, "warmup": warmup} if warmup else spec


def schedule_text(P: Mapping[str, Any], iterations: int) -> str:
    """The run's schedule in words, e.g. "x0.9 every 60 iterations, ten decays over the run"."""
    spec = schedule_spec(P, iterations)
    if spec["kind"] == "cosine":
        cycles = int(spec.get("cycles", 1))
        return (f"a linear warm-up over {100 * float(P.get('warmup') or 0):.0f} % of each cycle, then a cosine "
                f"decay to 0, {cycles} time{'s' if cycles > 1 else ''} over the run"
                + (" (a warm restart at its middle)" if cycles == 2 else ""))
    n = int(iterations) // spec["every"]
    text = f"x{spec['gamma']:g} every {spec['every']} iterations, {n} decays over the run"
    return (f"a linear warm-up over the first {spec['warmup']} iterations, then " + text if spec.get("warmup")
            else text)


# ----------------------------------------------------------------------------------- the split audit
#: Sub-folder of ``out_dir`` that holds the split audit's runs: no reader of ``<out_dir>/<profile>/``
#: (explorer, leaderboard, summary, ``npcrepro splits export``) takes them for the chapter's run.
AUDIT_DIR = "audit"


def split_audit_params(P, methods=None, folds: int | None = None):
    """The parameters of the split audit's run: ``P`` (same data, network widths, iterations, batch
    size, seeds) with ``split_unit="slice"``, ``methods`` (default ``P.split_audit_methods``), the first
    ``folds`` folds (default ``P.split_audit_folds``), a new run folder under
    ``<out_dir>/audit/``. Pass the chapter run's dataset to :func:`npcrepro.chapters.run` with them
    (``dataset=``), so that the phantom is not generated again under the new ``out_dir``."""
    from pathlib import Path

    keys = list(P.get("split_audit_methods") or []) if methods is None else list(methods)
    for k in keys:
        method_label(k)
    n = int(P.get("split_audit_folds") or 0) if folds is None else int(folds)
    if not keys or n < 1:
        raise ParameterError("the split audit needs a method and a fold (split_audit_methods, split_audit_folds)")
    return P.replace(resume="", split_unit="slice", methods=keys, max_folds=min(n, int(P["k_folds"])),
                     out_dir=str(Path(P["out_dir"]) / AUDIT_DIR))


#: The OpenKBP track's folds: it tests on OpenKBP's own held-out patients and trains on the others
#: (:meth:`~npcrepro.engine.chapter.Chapter.split`), so only the first fold of a split by patient is
#: used, and its count sets the share of training patients that validate (a third).
OPENKBP_FOLDS = 3


def openkbp_source(P):
    """The OpenKBP track's data (:class:`~npcrepro.engine.chapter.Track`): the first ``real_cases``
    training and ``real_test`` held-out patients of the ``openkbp-subset`` extract, converted once
    (:func:`npcrepro.datasets.adapters.cached.cached_openkbp`). Returns (the dataset folder or None,
    what was read or why the track is skipped)."""
    from npcrepro.datasets.adapters.cached import cached_openkbp

    if P.get("real_data") == "off" or int(P.get("real_cases") or 0) <= 0:
        return None, (f"the real-data track is off in this run (real_data={P.get('real_data')!r}, "
                      f"real_cases={P.get('real_cases')})")
    kbp = cached_openkbp(P["out_dir"], int(P["real_cases"]), n_test=int(P.get("real_test") or 0))
    if kbp is None:
        return None, "OpenKBP was not found (set $NPCREPRO_SHARED_DATA to the folder holding openkbp-subset/)"
    return str(kbp.root), (f"OpenKBP: {len(kbp.cases)} training and {len(kbp.test_cases)} held-out test "
                           "patients")


def openkbp_params(P, data: str):
    """The OpenKBP track's parameters: ``P`` on ``data`` (all its patients) with the ``real_*`` image
    size, budget and methods, :data:`OPENKBP_FOLDS` folds of which the first, a fresh run folder."""
    from npcrepro.datasets import open_dataset

    return P.replace(data=data, resume="", image_size=P["real_image_size"], iterations=int(P["real_iterations"]),
                     methods=list(P["real_methods"]), k_folds=OPENKBP_FOLDS, max_folds=1,
                     n_cases=len(open_dataset(data).cases))


# ----------------------------------------------------------------------------------- scoring
def score_rows(probs: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray], prepared) -> list[dict]:
    """Per-structure rows of one patient over its test slices (``prepared.idx``: its labelled slices,
    or its part of a slice-level fold): DSC, AUC by the rank formula, F1, JSC, the soft DSC of Eq. (4)
    as printed, precision, recall, voxel counts (``tp`` too) and whether reference/prediction are
    empty; and the additive sums of Eq. (4) (``soft_pg2``, ``soft_pg``, ``soft_p2``, ``soft_g2``,
    :func:`npcrepro.metrics.soft_dice_sums`), from which the report pools the soft DSC over a fold's
    test slices without keeping any probability. ``probs``/``masks`` are on the case's grid. A
    patient with no test slice gives no rows."""
    case, idx = prepared.case, prepared.idx
    if not len(idx):
        return []
    rows = []
    for s in prepared.structures:
        ref = case.labels.get(s)
        ref = np.zeros((len(idx),) + case.shape[1:], bool) if ref is None else ref[idx]
        p, pred = probs[s][idx], masks[s][idx]
        sums = M.soft_dice_sums(p, ref)
        rows.append({"case": case.name, "structure": s, "dice": M.dice(pred, ref), "auc": M.auc(p, ref),
                     "f1": M.f1(pred, ref), "jaccard": M.jaccard(pred, ref),
                     "soft_dice": M.soft_dice_from_sums(sums, "printed"),
                     "precision": M.precision(pred, ref), "recall": M.recall(pred, ref),
                     "ref_voxels": int(ref.sum()), "pred_voxels": int(pred.sum()), "tp": int((pred & ref).sum()),
                     **{f"soft_{k}": v for k, v in sums.items()},
                     "ref_empty": not ref.any(), "pred_empty": not pred.any(), "n_slices": int(len(idx))})
    return rows


# ----------------------------------------------------------------------------------- the chapter
#: Cases loaded in this process and still referenced (the two sides of a slice-level fold share one).
_LOADED: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()


class Luo2020(Chapter):
    name = "luo2020"
    channels = ("CT",)
    #: The paper's 14 structures (phantom names); a run on another dataset uses those it has
    #: (:func:`~npcrepro.chapters.luo2020.prepare.structures_for`, :meth:`structures_for`).
    structures = tuple(prep.STRUCTURES.values())
    tracks = (Track("openkbp", openkbp_params, openkbp_source),)

    def methods(self, P):
        keys = list(P["methods"])
        for k in keys:
            method_label(k)
        return [Method(k, METHODS[k][0], info={"model": METHODS[k][1], **METHODS[k][2]}) for k in keys]

    def all_methods(self, P):
        return [Method(k, v[0], info={"model": v[1], **v[2]}) for k, v in METHODS.items()]

    def structures_for(self, P, dataset=None):
        # phantom: the paper's 14 (less P.skip_structures); OpenKBP: its organs and PTVs
        have = self.structures if dataset is None else dataset.structures
        return tuple(prep.structures_for(have, P.get("skip_structures") or ()))

    def folds(self, cases, P):
        """``k_folds``-fold by patient; with ``split_unit="slice"``, by slice: fold ``f`` trains on every
        patient's labelled slices outside its part ``f`` and tests on the parts ``f``
        (:func:`npcrepro.datasets.splits.slice_kfold`), each side of each patient named by
        :func:`~npcrepro.chapters.luo2020.prepare.part_name` (so splits.json records it)."""
        from npcrepro.datasets.splits import Fold, make_splits

        unit = P.get("split_unit", "patient")
        if unit not in ("patient", "slice"):
            raise ParameterError(f"split_unit must be 'patient' or 'slice', got {unit!r}")
        if unit == "slice":
            k = int(P["k_folds"])
            if k < 2 or not cases:
                raise DataError(f"luo2020: a slice-level split needs k_folds >= 2 and a case, got {k} and "
                                f"{len(cases)} case(s)")
            folds = [Fold([prep.part_name(c, f, k, "train") for c in cases], [],
                          [prep.part_name(c, f, k, "test") for c in cases]) for f in range(k)]
        else:
            k = min(int(P["k_folds"]), len(cases))
            if k < 2:
                raise DataError(f"luo2020: cross-validation needs at least 2 cases, got {len(cases)}")
            folds = make_splits(list(cases), "kfold", seed=int(P["seed"]), k=k)
        return folds[: int(P["max_folds"])] if P.get("max_folds") else folds

    def load(self, dataset, name, P):
        structures = list(self.structures_for(P, dataset))
        part = prep.parse_part(name)
        base = part.case if part else name
        # both sides of a slice-level fold name the same patient: load it once while either is alive
        key = (str(getattr(dataset, "root", id(dataset))), base, tuple(structures))
        case = _LOADED.get(key)
        if case is None:
            case = dataset.load(base, channels=["CT"], structures=structures)
            _LOADED[key] = case
        return case, structures, part

    def prepare(self, loaded, P):
        case, structures, part = loaded
        return prep.prepare(case, structures, P.get("image_size"), part, seed=int(P.get("seed") or 0))

    def build(self, method, P, n_classes: int | None = None):
        return build_method(method.name, P, len(self.structures_for(P)) if n_classes is None else n_classes)

    def fit(self, method, train, val, ctx):
        from npcrepro.engine import Trainer, seed_everything
        from npcrepro.models import count_parameters

        P = ctx.P
        structures = train[0].structures
        seed = ctx.seed + 1000 * ctx.fold  # each fold starts from its own initialisation
        seed_everything(seed)
        model = self.build(method, P, len(structures))
        slices = {p.case.name: p.idx for p in train} if P.get("split_unit") == "slice" else None
        data = prep.slice_dataset([p.case for p in train], structures, P.get("image_size"), seed=ctx.seed,
                                  slices=slices, sampling=P.get("sampling") or "uniform")
        iterations = int(P["iterations"])
        trainer = Trainer(model, make_loss(P), data, batch_size=int(P["batch_size"]), iterations=iterations,
                          optimizer="adam", lr=float(P["lr"]), schedule=schedule_spec(P, iterations),
                          eval_every=max(1, iterations // 10), restore_best=False,
                          **{**ctx.trainer_args(), "seed": seed})
        hist = ctx.fit(trainer)
        ctx.facts.update(label=method.label, iterations=hist.iterations, parameters=count_parameters(model),
                         final_train_loss=hist.final_train_loss, train_slices=len(data))
        return model

    def predict(self, method, model, prepared, ctx):
        from npcrepro.engine import predict_slices

        if not len(prepared.idx):
            return {s: np.zeros(prepared.case.shape, np.float32) for s in prepared.structures}
        prob = predict_slices(model, prep.slice_image(prepared), batch_size=int(ctx.P.get("infer_batch") or 32),
                              device=ctx.device, activation="sigmoid")
        return prep.to_grid(prob, prepared)

    def case_of(self, prepared):
        return prepared.case

    def score(self, method, prepared, probs, masks, ctx):
        return score_rows(probs, masks, prepared)

    def reference(self, results):
        """The location prior (:func:`npcrepro.chapters.luo2020.prepare.location_prior`) at the run's
        ``real_prior_threshold`` for a run on a dataset split by patient; None on the phantom (the
        reference is for the real-data track), for a split by slice and for runs made before the
        parameter existed."""
        P = results.params
        if P.get("data") == "phantom" or P.get("real_prior_threshold") is None or P.get("split_unit") == "slice":
            return None
        return prep.location_prior(results, float(P["real_prior_threshold"]))


CHAPTER = Luo2020()
luo2020 = CHAPTER
