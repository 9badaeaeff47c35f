"""guo2021: the methods (CSCN = BUNet coarse stage + ACDNet fine stage, and the 3D baselines), how each
trains and predicts.

Methods (the paper's Table 1 rows plus the cascade's coarse stage alone)::

    BUNet                  3D U-Net on blocks: the coarse stage (and its own control row)
    CSCN   after BUNet     ACDNet on (image, BUNet's coarse map of the whole crop), then the coarse and
                           fine probabilities fused; model.pt holds both stages (models.cscn.CSCN)
    CNN, ACDNet, Deeplab, V-Net    the baselines, on the image alone

Every network: Adam ``lr``, x0.9 every ``decay_every`` iterations, the distance-weighted focal loss
(Eq. 6-7, 2-class softmax, :class:`~.losses.GuoLoss`), the weights of the best validation loss
kept. Inference: Gaussian-blended sliding windows over the whole crop in each of the three views, the
views' probabilities averaged ("multi-view fusion"), mapped back to the patient's original grid. A
training loss that turns non-finite ends that network's training and is recorded (``status``
"diverged", no prediction) instead of raising: the paper reports exactly that outcome for V-Net.
"""
from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np

from npcrepro.chapters.guo2021.prepare import STRUCTURE, Prepared, blocks, prepare_case, with_coarse
from npcrepro.engine.experiment import Chapter, Method, job_dir
from npcrepro.errors import DataError, ParameterError

#: Methods in the chapter's order (labels as in the paper's Table 1, plus the coarse stage alone).
METHODS = ("CSCN", "BUNet", "CNN", "ACDNet", "Deeplab", "V-Net")
#: The rows of Table 1 (V-Net has no reported numbers).
TABLE1_METHODS = ("CNN", "ACDNet", "Deeplab", "V-Net", "CSCN")
NETWORK = {"BUNet": "bunet3d", "ACDNet_cascade": "acdnet3d", "CNN": "plaincnn3d",
           "ACDNet": "acdnet3d", "Deeplab": "deeplab3d", "V-Net": "vnet3d"}
_INFO = {"BUNet": "coarse stage (3D U-Net on blocks)", "CSCN": "BUNet -> ACDNet(image, coarse) -> fusion",
         "CNN": "six 3x3x3 conv layers, no pooling", "ACDNet": "3D DenseNet with ASPP dense layers",
         "Deeplab": "DeepLabv3+-style 3D network", "V-Net": "residual 5x5x5 V-Net"}
CONVERGED = "converged"


# ------------------------------------------------------------------------------------------ networks
def model_kwargs(method: str, width: float = 1.0, in_channels: int = 1,
                 acd_layers: Sequence[int] = (2, 2, 2)) -> dict:
    """Constructor arguments of ``method``'s network at width multiplier ``width`` (1.0: the defaults
    of :mod:`npcrepro.models.cscn`; ``acd_layers``: ACDNet's layers per dense block). ``method`` is a
    :data:`METHODS` label or ``"ACDNet_cascade"`` (``in_channels`` image channels + the coarse map)."""
    def w(c: int) -> int:
        return max(2, int(round(c * width)))

    if method == "BUNet":
        return dict(in_channels=in_channels, widths=[w(16), w(32), w(64)])
    if method in ("ACDNet", "ACDNet_cascade"):
        return dict(in_channels=in_channels + (1 if method == "ACDNet_cascade" else 0), stem=w(16),
                    growth=w(8), layers=[int(n) for n in acd_layers])
    if method == "CNN":
        return dict(in_channels=in_channels, width=w(16), depth=6)
    if method == "Deeplab":
        return dict(in_channels=in_channels, width=w(16), aspp_channels=w(32), low_channels=w(8))
    if method == "V-Net":
        return dict(in_channels=in_channels, widths=[w(16), w(32), w(64)], n_convs=[1, 2, 3])
    raise ParameterError(f"unknown method {method!r} (valid: {', '.join(METHODS)}, ACDNet_cascade)")


def build_model(method: str, width: float = 1.0, in_channels: int = 1, acd_layers: Sequence[int] = (2, 2, 2)):
    """The registered network of ``method`` (see :func:`model_kwargs`)."""
    from npcrepro.models import build
    from npcrepro.models import cscn as _cscn  # noqa: F401 - registers the networks

    if method not in NETWORK:
        raise ParameterError(f"unknown network {method!r} (valid: {', '.join(NETWORK)})")
    return build(NETWORK[method], **model_kwargs(method, width, in_channels, acd_layers))


def build_cascade(P: Mapping[str, Any], in_channels: int = 1):
    """Both stages of CSCN in one module (:class:`npcrepro.models.cscn.CSCN`: ``.bunet``, ``.acdnet``)."""
    from npcrepro.models import build

    width, layers = float(P["width"]), P["acd_layers"]
    bunet = model_kwargs("BUNet", width, in_channels, layers)
    acd = model_kwargs("ACDNet_cascade", width, in_channels, layers)
    bunet.pop("in_channels"), acd.pop("in_channels")
    return build("cscn3d", in_channels=in_channels, bunet=bunet, acdnet=acd, fusion=P["fusion"],
                 fusion_weight=float(P["fusion_weight"]))


def network(name: str, *, width: float, in_channels: int, profile: str = "cpu"):
    """The network the leaderboard trains for ``name``, ACDNet's depth from this chapter's recipe at
    ``profile``: ``CNN``, ``V-Net``, ``BUNet``, ``ACDNet``, ``Deeplab`` on ``in_channels`` image
    channels; ``ACDNet_cascade`` (or ``CSCN``) is the cascade's fine stage, whose ``in_channels``
    include the coarse map."""
    from npcrepro import recipes

    layers = recipes.load("guo2021").PROFILES[profile]["acd_layers"]
    if name in ("CSCN", "ACDNet_cascade"):
        return build_model("ACDNet_cascade", width, in_channels - 1, layers)
    return build_model(name, width, in_channels, layers)


# ------------------------------------------------------------------------------------------ inference
def _n_out(model) -> int:
    head = getattr(model, "head", None)
    return int(getattr(head, "out_channels", 2))


def predict_views(model, image: np.ndarray, window: Sequence[int], *, views: Sequence[str] | None = None,
                  overlap: float = 0.25, batch_size: int = 2, device=None) -> np.ndarray:
    """Tumour probability (z, y, x) of ``model`` over a whole volume ``image`` (C, z, y, x): a Gaussian-
    blended sliding window (``window`` in canonical (thin, a, b) order) in each view, the views'
    probabilities averaged. Logits are read with a softmax (channel 1 = tumour) when the model has 2 or
    more output channels, else a sigmoid."""
    from npcrepro.chapters.guo2021.samplers import VIEWS, from_view, to_view
    from npcrepro.engine.inference import predict_sliding_window

    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise DataError(f"predict_views expects (C, z, y, x), got shape {image.shape}")
    views = VIEWS if views is None else tuple(views)
    acc = np.zeros(image.shape[1:], np.float32)
    for view in views:
        prob = predict_sliding_window(model, np.ascontiguousarray(to_view(image, view)), window,
                                      overlap=overlap, batch_size=batch_size, device=device,
                                      activation="softmax" if _n_out(model) > 1 else "sigmoid")
        acc += from_view(prob[-1], view)
    return acc / len(views)


def _infer(P, device) -> dict:
    return dict(window=P["infer_window"], overlap=float(P["overlap"]), batch_size=int(P["infer_batch"]),
                device=device)


# ------------------------------------------------------------------------------------------ training
#: Where a network's accuracy curve goes, in its run folder (the paper's Fig. 4).
ACCURACY_CSV = "accuracy.csv"


class AccuracyCurve:
    """Trainer callback: at every evaluation, the voxel accuracy (argmax class = reference) of the
    current network on a fixed subset of ``n`` training blocks (no flips) and on all validation
    blocks, appended to ``<run folder>/accuracy.csv`` (iteration, train_accuracy, val_accuracy; a
    resumed job may repeat a row, :func:`read_accuracy` keeps the last). The paper's Fig. 4."""

    def __init__(self, train_ds, val_ds, path, n: int = 64):
        from pathlib import Path

        self.train_ds, self.val_ds, self.path = train_ds, val_ds, Path(path)
        self.train_idx = np.unique(np.linspace(0, len(train_ds) - 1, min(n, len(train_ds))).astype(int))

    @staticmethod
    def accuracy(model, ds, idx, batch: int = 16) -> float:
        """Voxel accuracy of ``model`` over blocks ``idx`` of ``ds`` (items (image, (mask, weight)))."""
        import torch

        dev = next(model.parameters()).device
        right = total = 0
        with torch.no_grad():
            for i in range(0, len(idx), batch):
                items = [ds[int(j)] for j in idx[i:i + batch]]
                x = torch.stack([a for a, _ in items]).to(dev)
                y = torch.stack([b[0] for _, b in items]).to(dev) > 0.5
                out = model(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                pred = out.argmax(1) == 1 if out.shape[1] > 1 else out[:, 0] > 0
                right += int((pred == y).sum())
                total += int(y.numel())
        return right / total if total else float("nan")

    def __call__(self, trainer, event, info):
        if event != "evaluation":
            return
        model = trainer.model
        was = model.training
        model.eval()
        row = {"iteration": int(trainer.state.iteration),
               "train_accuracy": self.accuracy(model, self.train_ds, self.train_idx),
               "val_accuracy": (self.accuracy(model, self.val_ds, np.arange(len(self.val_ds)))
                                if self.val_ds is not None and len(self.val_ds) else float("nan"))}
        model.train(was)
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            if new:
                f.write("iteration,train_accuracy,val_accuracy\n")
            f.write(f"{row['iteration']},{row['train_accuracy']:.6g},{row['val_accuracy']:.6g}\n")


def read_accuracy(path) -> "pd.DataFrame":
    """A network's accuracy curve (see :class:`AccuracyCurve`); empty when none was written."""
    import pandas as pd
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return pd.DataFrame(columns=["iteration", "train_accuracy", "val_accuracy"])
    df = pd.read_csv(path)
    return df.drop_duplicates("iteration", keep="last").sort_values("iteration").reset_index(drop=True)


def fit_network(model, train_ds, val_ds, P: Mapping[str, Any], trainer_args: Mapping[str, Any],
                fit=None) -> dict:
    """Train ``model`` in place with the chapter's recipe through the shared Trainer; returns the facts
    (status "converged" or "diverged", iterations, losses, parameters, cpu seconds). ``fit(trainer)``
    runs it (default ``trainer.fit()``; the runner's ``ctx.fit`` resumes from a checkpoint)."""
    from npcrepro.engine import Trainer
    from npcrepro.chapters.guo2021.losses import GuoLoss
    from npcrepro.models import count_parameters

    trainer_args = dict(trainer_args)
    if trainer_args.get("run") is not None:
        acc = AccuracyCurve(train_ds, val_ds, trainer_args["run"].path / ACCURACY_CSV)
        trainer_args["callbacks"] = [*trainer_args.get("callbacks", ()), acc]
    trainer = Trainer(model, GuoLoss(float(P["gamma"])), train_ds, val_data=val_ds,
                      batch_size=int(P["batch_size"]), restore_best=True, iterations=int(P["iterations"]),
                      optimizer="adam", lr=float(P["lr"]), eval_every=int(P["eval_every"]),
                      schedule={"kind": "exponential", "every": int(P["decay_every"]), "gamma": 0.9},
                      **trainer_args)
    c0 = time.process_time()
    status = CONVERGED
    try:
        hist = (fit or (lambda t: t.fit()))(trainer)
        rows, iters = hist.rows, hist.iterations
    except FloatingPointError:
        status = "diverged"
        rows, iters = list(trainer.rows), trainer.state.iteration
    if status == CONVERGED and not all(r.get("train_loss") is None or math.isfinite(r["train_loss"])
                                       for r in rows):
        status = "diverged"
    val = [r["val_loss"] for r in rows if r.get("val_loss") is not None and math.isfinite(r["val_loss"])]
    train = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    model.eval()
    return {"status": status, "iterations": iters, "cpu_seconds": time.process_time() - c0,
            "final_train_loss": train[-1] if train else None, "best_val_loss": min(val) if val else None,
            "parameters": count_parameters(model)}


def selected(P: Mapping[str, Any]) -> list[str]:
    """The methods ``P.methods`` names ('all' or a comma-separated list), in :data:`METHODS` order."""
    m = P.get("methods", "all")
    if m in (None, "all"):
        return list(METHODS)
    names = [x.strip() for x in (m.split(",") if isinstance(m, str) else m) if x.strip()]
    bad = [x for x in names if x not in METHODS]
    if bad:
        raise ParameterError(f"unknown method(s) {bad} (valid: {', '.join(METHODS)}, or 'all')")
    return [x for x in METHODS if x in names]


# ------------------------------------------------------------------------------------------ chapter
class Guo2021(Chapter):
    name = "guo2021"
    structures = (STRUCTURE,)

    def channels_for(self, P, dataset=None):
        return (str(P["channel"]),)

    def methods(self, P):
        names = selected(P)
        if "CSCN" in names and "BUNet" not in names:
            names.insert(names.index("CSCN") + 1, "BUNet")  # the cascade's first stage always runs
        return [Method(n, n, after=("BUNet",) if n == "CSCN" else (), info={"network": _INFO[n]})
                for n in names]

    def all_methods(self, P):
        return self.methods({**dict(P), "methods": "all"})

    def folds(self, cases, P):
        folds = super().folds(cases, P)
        return folds[: int(P["max_rounds"])] if P.get("max_rounds") else folds

    def load(self, dataset, name, P):
        from npcrepro.chapters.guo2021.prepare import RATER2

        if P["channel"] not in dataset.channels or STRUCTURE not in dataset.structures:
            raise DataError(f"{dataset.root}: guo2021 needs channel {P['channel']!r} and structure "
                            f"{STRUCTURE!r}; the dataset has channels {dataset.channels} and structures "
                            f"{dataset.structures}")
        want = [STRUCTURE] + ([RATER2] if RATER2 in dataset.structures else []) + [
            s for s in (P.get("negatives") or ()) if s in dataset.structures and s not in (STRUCTURE, RATER2)]
        return dataset.load(name, channels=[P["channel"]], structures=want)

    def build(self, method, P):
        if method.name == "CSCN":
            return build_cascade(P)
        return build_model(method.name, float(P["width"]), 1, P["acd_layers"])

    def prepare(self, case, P):
        return prepare_case(case, channel=P["channel"], spacing_mm=P["spacing_mm"], box_mm=P["box_mm"],
                            negatives=list(P.get("negatives") or ()))

    def fit(self, method, train, val, ctx):
        P = ctx.P
        val = val or train[:1]
        model = self.build(method, P)
        if method.name != "CSCN":
            ctx.facts.update(fit_network(model, blocks(train, P), blocks(val, P, val=True), P,
                                         ctx.trainer_args(), ctx.fit))
            return model
        # the cascade: BUNet (trained by its own job) gives coarse maps of the whole crops (new arrays;
        # the prepared cases stay as they are), ACDNet trains on (image, coarse map)
        import json

        bunet_facts = json.loads((job_dir(ctx.spec.run, "BUNet", ctx.fold, ctx.seed) / "training.json")
                                 .read_text(encoding="utf-8"))
        model.bunet.load_state_dict(ctx.model_of("BUNet").state_dict())
        if bunet_facts.get("status") != CONVERGED:
            ctx.facts.update(status="not run (BUNet diverged)", iterations=0)
            return model
        t0 = time.perf_counter()
        infer = _infer(P, ctx.device)
        coarse = {p.name: predict_views(model.bunet, p.image, **infer) for p in val}
        coarse.update(self._coarse_training_maps(model.bunet, train, val, ctx))
        ctx.facts["coarse_seconds"] = time.perf_counter() - t0
        ctx.facts.update(fit_network(model.acdnet, blocks(train, P, coarse=coarse),
                                     blocks(val, P, coarse=coarse, val=True), P, ctx.trainer_args(), ctx.fit))
        return model

    def _coarse_training_maps(self, bunet, train, val, ctx) -> dict:
        """Coarse maps of the training patients that ACDNet learns from: the round's BUNet's own
        predictions (``cross_fit`` 0), or cross-fitted ones (``cross_fit`` k >= 2: the patients split
        into k parts by their order, each part predicted by a BUNet trained on the other parts, in
        ``<job>/crossfit_<i>/``)."""
        P, infer = ctx.P, _infer(ctx.P, ctx.device)
        k = int(P.get("cross_fit") or 0)
        if P.get("dry_run") and k > len(train):
            # a dry run trains on one patient: cross-fitting needs two, so it runs the plain path
            ctx.facts["cross_fit_dry_run"] = f"{k} parts asked, {len(train)} training patient(s): off"
            k = 0
        if k == 0:
            return {p.name: predict_views(bunet, p.image, **infer) for p in train}
        if k < 2 or k > len(train):
            raise ParameterError(f"cross_fit must be 0 or 2..{len(train)} (training patients), got {k}")
        out, seconds = {}, 0.0
        for i, part in enumerate(np.array_split(np.arange(len(train)), k)):
            rest = [p for j, p in enumerate(train) if j not in set(part.tolist())]
            net = build_model("BUNet", float(P["width"]), 1, P["acd_layers"])
            facts = fit_network(net, blocks(rest, P), blocks(val or rest[:1], P, val=True), P,
                                ctx.trainer_args(part=f"crossfit_{i}"), ctx.fit)
            seconds += float(facts["cpu_seconds"])
            for j in part:
                out[train[int(j)].name] = predict_views(net, train[int(j)].image, **infer)
        ctx.facts.update(cross_fit=k, cross_fit_cpu_seconds=seconds)
        return out

    def predict(self, method, model, prepared: Prepared, ctx):
        """Probabilities on the case's grid. Also keeps, for :meth:`score`, the DSC on the working grid
        of each single view's map and of the views' mean (what fusing the views adds)."""
        from npcrepro import metrics
        from npcrepro.chapters.guo2021.samplers import VIEWS

        if ctx.facts.get("status") != CONVERGED:
            return {}
        infer = _infer(ctx.P, ctx.device)
        if method.name != "CSCN":
            views = {v: predict_views(model, prepared.image, views=[v], **infer) for v in VIEWS}
            prob = sum(views.values()) / len(views)
        else:
            from npcrepro.models.cscn import fuse_probabilities

            w, rule = float(ctx.P["fusion_weight"]), ctx.P["fusion"]
            coarse_v = {v: predict_views(model.bunet, prepared.image, views=[v], **infer) for v in VIEWS}
            coarse = sum(coarse_v.values()) / len(VIEWS)
            fine_v = {v: predict_views(model.acdnet, with_coarse(prepared, coarse), views=[v], **infer)
                      for v in VIEWS}
            fine = sum(fine_v.values()) / len(VIEWS)
            views = {v: fuse_probabilities(coarse_v[v], fine_v[v], rule, w) for v in VIEWS}
            prob = fuse_probabilities(coarse, fine, rule, w)
        ref = prepared.target
        dice = {f"dice_{v}": metrics.dice(views[v] >= 0.5, ref) for v in VIEWS}
        dice["dice_views_mean"] = metrics.dice(prob >= 0.5, ref)
        ctx.__dict__.setdefault("guo_view_dice", {})[prepared.name] = dice
        return {STRUCTURE: prepared.to_original(prob)}

    def score(self, method, prepared, probs, masks, ctx):
        """Per patient: DSC, ASSD (mm, Eq. 9), F1, precision, recall, HD95, volumes, TP/FP/FN (for a
        pooled F1) and the training ``status``; a network that did not converge gets a row with its
        status and no metrics."""
        from npcrepro import metrics

        row: dict[str, Any] = {"case": prepared.name, "structure": STRUCTURE,
                               "status": ctx.facts.get("status", CONVERGED)}
        if STRUCTURE not in masks:
            return [row]
        pred, ref = masks[STRUCTURE], prepared.reference
        res = metrics.evaluate_case(pred, ref, prepared.spacing)
        tp, fp, fn, _ = metrics.confusion(pred, ref)
        keep = ("dice", "assd", "f1", "precision", "recall", "hd95", "volume_pred_cm3", "volume_ref_cm3",
                "pred_empty", "ref_empty")
        views = getattr(ctx, "guo_view_dice", {}).pop(prepared.name, {})
        return [{**row, **{k: res[k] for k in keep}, "tp": tp, "fp": fp, "fn": fn, **views}]


CHAPTER = Guo2021()
