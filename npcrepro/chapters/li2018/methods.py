"""li2018: the Table 1 CNN trained stepwise, as two methods (today's optimiser modes).

Training (Sec. 2.3): three Trainer stages inside one job, each adding layers: stage 1 the feature
part against the 36 x 36 score map, stage 2 Deconv1 + Conv7 against 72 x 72, stage 3 Deconv2 + Conv8
against 144 x 144. With ``finetune`` (the recipe's default) stages 2-3 also train the earlier layers,
the working method at ``lr_finetune`` (the new ones at ``lr_fusion``); without it they train only the
layers they add. Targets of stages 1-2 are the 144 x 144 mask average-pooled by 4 and 2 (soft targets).

* ``faithful`` -- the printed solver: SGD, lr 1e-7, momentum 0.9, weight decay 5e-4, step decay x0.1
  every 1e5 iterations, read with two Caffe conventions: Gaussian initial weights of std
  ``faithful_init_std`` (Caffe's prototxts set fillers to 0.01 or 0.001) and Caffe's
  ``SigmoidCrossEntropyLoss`` summed over pixels (divided by the batch) for the unstated loss, so lr
  1e-7 on 144 x 144 summed pixels acts like about 2e-3 on a mean loss. Trained on the first
  ``faithful_folds`` folds (None: every fold; every fold when it is the only mode).
* ``printed`` -- the same with the printed N(0, 1) initialisation (literal; diverges).
* ``working`` -- Adam (lr, then lr_fusion for stages 2-3), He initialisation with bilinear
  deconvolutions, loss = mean binary cross-entropy + soft Dice; same stages, data and budget.

Predictions: every slice of the case's 144 x 144 working grid, mapped back through the crop/resample
record onto the case's own grid. Scores: per patient over its evaluated (tumour-bearing) slices, as
the paper's Table 2, plus the Dice of the 36 x 36 / 72 x 72 maps and the Dice over the whole case.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from npcrepro import transforms as T
from npcrepro.chapters.li2018.prepare import (SIZE, STRUCTURE, phantom_dataset, prepare_case, real_t2_params,
                                              real_t2_source, training_slices)
from npcrepro.engine.experiment import Chapter, Method, Track
from npcrepro.errors import ParameterError

MODES = ("working", "faithful", "printed")
#: Modes that train with the printed SGD solver (the faithful-recipe test).
SGD_MODES = ("faithful", "printed")
LABELS = {"working": "CNN (working: Adam, He init)",
          "faithful": "CNN (faithful: printed SGD, Caffe conventions: Gaussian std 0.01, summed loss)",
          "printed": "CNN (printed: SGD, N(0, 1))"}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ParameterError(f"unknown li2018 mode {mode!r} (valid: {', '.join(MODES)})")


def build_model(mode: str, width: float = 1.0, in_channels: int = 1, init_std: float = 0.01):
    """``build("score_fusion_fcn")`` with the mode's initialisation (faithful: N(0, ``init_std``);
    printed: N(0, 1); working: He)."""
    from npcrepro.models import build

    _check_mode(mode)
    std = 1.0 if mode == "printed" else float(init_std)
    return build("score_fusion_fcn", in_channels=in_channels, width=width,
                 init="gaussian" if mode in SGD_MODES else "kaiming", init_std=std)


def network(name: str, *, width: float, in_channels: int, profile: str = "cpu"):
    """The network the leaderboard trains for li2018 (the working initialisation at half the
    leaderboard's width, as before), from this chapter's recipe at ``profile``."""
    from npcrepro import recipes

    if profile not in recipes.load("li2018").PROFILES:
        raise ParameterError(f"unknown profile {profile!r} for li2018")
    mode = name if name in MODES else "working"
    return build_model(mode, width / 2, in_channels)


class _Pool:
    """Stage target: the mask average-pooled by ``factor`` (picklable)."""

    def __init__(self, factor: int):
        self.factor = int(factor)

    def __call__(self, y):
        return F.avg_pool2d(y, self.factor) if self.factor > 1 else y


def make_stages(mode: str, iterations: Sequence[int], P: Mapping[str, Any] | None = None):
    """The three :class:`~npcrepro.engine.Stage` objects of the stepwise scheme for ``mode``
    (values from ``P``, default the recipe's cpu profile)."""
    from npcrepro import recipes
    from npcrepro.engine import Stage
    from npcrepro.chapters.li2018.losses import BCEDiceLoss, CaffeSigmoidLoss
    from npcrepro.models.score_fusion_fcn import STAGE_LAYERS, STAGE_SIZE

    _check_mode(mode)
    P = P if P is not None else recipes.load("li2018").PROFILES["cpu"]
    if len(iterations) != 3 or min(int(i) for i in iterations) < 0:
        raise ParameterError(f"li2018: iterations must be three non-negative stage budgets, got {iterations!r}")
    if mode in SGD_MODES:
        opt = dict(optimizer="sgd", lr=float(P["faithful_lr"]), momentum=float(P["momentum"]),
                   weight_decay=float(P["weight_decay"]),
                   schedule={"kind": "step", "step_size": int(P["lr_step"]), "gamma": float(P["lr_gamma"])})
        loss = CaffeSigmoidLoss()
    else:
        opt = dict(optimizer="adam", lr=float(P["lr"]), schedule=None)
        loss = BCEDiceLoss()
    stages = []
    for s, n in zip((1, 2, 3), iterations):
        if mode == "working" and s > 1:
            opt["lr"] = float(P["lr_fusion"])
        earlier = [name for t in STAGE_LAYERS if P["finetune"] and t < s for name in STAGE_LAYERS[t]]
        # finetuning: the layers earlier stages trained move at lr_finetune, the new ones at lr_fusion
        scale = ({f"{name}.": float(P["lr_finetune"]) / opt["lr"] for name in earlier}
                 if mode == "working" else {})
        stages.append(Stage(name=f"stage{s}_{STAGE_SIZE[s]}x{STAGE_SIZE[s]}", iterations=int(n),
                            trainable=[*earlier, *STAGE_LAYERS[s]], lr_scale=scale, loss=loss,
                            target_fn=_Pool(SIZE // STAGE_SIZE[s]),
                            forward_kwargs={"stage": s},
                            eval_every=max(1, int(n) // (10 if mode in SGD_MODES else 3)), **opt))
    return stages


@torch.no_grad()
def predict_maps(model, images: np.ndarray, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Sigmoid probability maps of every stage for raw slices (n, H, W) (z-scored here): ``p36``,
    ``p72``, ``p144`` at their own sizes, ``deconv144`` (the map before the last fusion, raw values)
    and ``up36``/``up72`` (p36/p72 upsampled bilinearly to H x W)."""
    model.eval()
    dev = next(model.parameters()).device
    out: dict[str, list] = {k: [] for k in ("p36", "p72", "p144", "deconv144", "up36", "up72")}
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.stack([T.zscore(im) for im in images[i:i + batch_size]])[:, None]).to(dev)
        m = model(x, stage=3, maps=True)
        for key, src in (("p36", "score36"), ("p72", "score72"), ("p144", "score144")):
            out[key].append(torch.sigmoid(m[src].float())[:, 0].cpu().numpy())
        out["deconv144"].append(m["deconv144"].float()[:, 0].cpu().numpy())
        for key, src in (("up36", "score36"), ("up72", "score72")):
            up = F.interpolate(m[src].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
            out[key].append(torch.sigmoid(up)[:, 0].cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


class Li2018(Chapter):
    name = "li2018"
    channels = ()
    structures = (STRUCTURE,)
    tracks = (Track("real_t2", real_t2_params, real_t2_source),)

    def methods(self, P):
        out = []
        if P["methods"] in ("both", "working"):
            out.append(Method("working", LABELS["working"], info={"mode": "working", "width": P["width"]}))
        nf = P["faithful_folds"]
        if P["methods"] in ("both", "faithful") and (P["methods"] == "faithful" or nf is None or int(nf) > 0):
            folds = None if P["methods"] == "faithful" or nf is None else int(nf)
            for mode in SGD_MODES:
                out.append(Method(mode, LABELS[mode], folds=folds, info={"mode": mode, "width": P["width"]}))
        return out

    def all_methods(self, P):
        return [Method(m, LABELS[m]) for m in MODES]

    def rater_agreement(self, dataset, cases, structures, P):
        """The raters on the slices the networks are scored on (:func:`~npcrepro.chapters.li2018.prepare.scored_part`:
        each patient's evaluated slices, pooled), not on the whole 20-slice slab."""
        from npcrepro.chapters.li2018.prepare import scored_part
        from npcrepro.evaluation import rater_agreement

        known = bool(getattr(dataset, "spacing_known", True))
        return rater_agreement(dataset, cases, structures, part=lambda c: scored_part(c, P, spacing_known=known))

    def reference(self, results):
        """A run on a dataset (the real T2 track): its location prior
        (:func:`npcrepro.chapters.li2018.prepare.location_prior`) at ``real_prior_threshold``; None on the phantom."""
        from npcrepro.chapters.li2018.prepare import location_prior

        P = results.params
        if P.get("data") in (None, "phantom") or P.get("real_prior_threshold") is None:
            return None
        return location_prior(results, float(P["real_prior_threshold"]))

    def dataset(self, P, *, progress: bool = False):
        from npcrepro.datasets import open_dataset

        from npcrepro.profiles import enough_cases

        if P["data"] == "phantom":
            return phantom_dataset(P, progress=progress)
        return enough_cases(open_dataset(P["data"]), P)

    def cases(self, dataset, P):
        """The first ``n_cases`` patients whose tumour is at least ``min_lesion_mm`` across (the
        paper's 1 cm exclusion; not applied to a dataset in pixel units, whose size is unknown)."""
        from npcrepro.chapters.li2018.prepare import lesion_extent_mm

        names = list(dataset.cases)
        min_mm = float(P["min_lesion_mm"] or 0)
        if min_mm > 0 and bool(getattr(dataset, "spacing_known", True)):
            keep = []
            for name in names:
                case = dataset.load(name, structures=[STRUCTURE])
                if lesion_extent_mm(case.labels[STRUCTURE], case.spacing) >= min_mm:
                    keep.append(name)
                if P["n_cases"] and len(keep) >= int(P["n_cases"]):
                    break
            names = keep
        return names[: int(P["n_cases"])] if P["n_cases"] else names

    def folds(self, cases, P):
        from npcrepro.datasets.splits import make_splits

        folds = make_splits(list(cases), P["cv"], seed=int(P["seed"]), k=int(P["k"]))
        return folds[: int(P["max_folds"])] if P["max_folds"] is not None else folds

    def load(self, dataset, name, P):
        case = dataset.load(name, structures=[STRUCTURE])
        case.meta["spacing_known"] = bool(getattr(dataset, "spacing_known", True))
        return case

    def prepare(self, case, P):
        return prepare_case(case, P, spacing_known=case.meta.get("spacing_known", True))

    def build(self, method, P):
        return build_model(method.info.get("mode", method.name), float(P["width"]),
                           init_std=float(P["faithful_init_std"]))

    def fit(self, method, train, val, ctx):
        from npcrepro.engine import Trainer

        P = ctx.P
        model = self.build(method, P)
        stages = make_stages(method.name, P["iterations"], P)
        trainer = Trainer(model, stages[0].loss, training_slices(train, seed=ctx.seed), stages=stages,
                          batch_size=int(P["batch_size"]), **ctx.trainer_args())
        diverged = ""
        try:
            ctx.fit(trainer)
        except FloatingPointError as exc:  # the engine stops on a non-finite loss (printed does)
            diverged = str(exc)
            ctx.run.write_curves(trainer.rows)
        finite = [r["train_loss"] for r in trainer.rows if r.get("train_loss") is not None]
        ctx.facts.update(mode=method.name, diverged=diverged, iterations=trainer.state.iteration,
                         loss_first=float(finite[0]) if finite else float("nan"))
        for st in stages:
            vals = [r["train_loss"] for r in trainer.rows if r["stage"] == st.name and r.get("train_loss") is not None]
            ctx.facts[f"loss_{st.name.split('_')[0]}"] = float(vals[-1]) if vals else float("nan")
        return trainer.model

    def predict(self, method, model, prepared, ctx):
        maps = predict_maps(model.to(ctx.device), prepared.images)
        ctx.__dict__.setdefault("li2018_maps", {})[prepared.case.name] = {
            k: maps[k][prepared.zs] for k in ("p144", "up36", "up72")}
        prob = T.invert(maps["p144"].astype(np.float32), prepared.record, order="linear")
        return {STRUCTURE: np.clip(prob, 0.0, 1.0).astype(np.float32)}

    def score(self, method, prepared, probs, masks, ctx):
        from npcrepro import metrics
        from npcrepro.datasets import Case
        from npcrepro.evaluation import evaluate_cases

        thr = self.threshold(ctx.P)
        maps = ctx.li2018_maps.pop(prepared.case.name)
        ref = prepared.masks[prepared.zs]
        name = prepared.case.name
        sub = Case(name, {prepared.channel: prepared.images[prepared.zs]}, {STRUCTURE: ref},
                   prepared.work.spacing)
        row = evaluate_cases({name: {STRUCTURE: maps["p144"] >= thr}}, [sub]).iloc[0].to_dict()
        row.update(n_slices=int(len(prepared.zs)), dice_36=metrics.dice(maps["up36"] >= thr, ref),
                   dice_72=metrics.dice(maps["up72"] >= thr, ref),
                   dice_case=metrics.dice(masks[STRUCTURE], prepared.case.labels[STRUCTURE]))
        return [row]


li2018 = CHAPTER = Li2018()
