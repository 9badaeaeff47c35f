"""The leaderboard's methods: every paper's network (built by its own chapter) and a U-Net baseline per
input family, all trained and scored by one common recipe (see the package docstring).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from npcrepro.chapters.leaderboard.prepare import CommonLoss, foreground, normaliser, samples, with_channel
from npcrepro.engine.batchnorm import FixedStatistics
from npcrepro.engine.experiment import Chapter, Method
from npcrepro.errors import ParameterError


@dataclass(frozen=True)
class Entry:
    """One leaderboard entry: ``key`` names its folder and rows; ``paper`` the chapter whose
    ``network()`` builds it (``"baseline"``: this book's U-Net); ``name`` the network's name there;
    ``dims`` "2d"/"3d"; ``channels`` its input images; ``baseline`` the U-Net it is tested against;
    ``reported`` the (table, method) of the paper's row it stands for; ``after`` its cascade stage;
    ``score_maps`` the named outputs it is deeply supervised on (see :class:`ScoreMaps`)."""

    key: str
    label: str
    paper: str
    name: str
    dims: str
    channels: tuple[str, ...]
    baseline: str
    reported: tuple[str, str] | None = None
    ct: bool = False
    after: tuple[str, ...] = ()
    activation: str = "sigmoid"
    score_maps: tuple[str, ...] = ()


METHODS: tuple[Entry, ...] = (
    Entry("unet_ct", "U-Net (CT)", "baseline", "unet2d", "2d", ("CT",), "unet_ct", ct=True),
    Entry("deeplab_ct", "DeepLabv3+ (xue2020)", "xue2020", "DeepLabv3+", "2d", ("CT",), "unet_ct",
          ("Sec. 2", "DeepLabv3+"), ct=True),
    Entry("luo_ours_ct", "Two-stage U-Net + MSP (luo2020)", "luo2020", "ours", "2d", ("CT",), "unet_ct",
          ("Table 1", "Ours"), ct=True),
    Entry("fcn8_ct", "FCN-8s (luo2020)", "luo2020", "fcn8", "2d", ("CT",), "unet_ct", ("Table 1", "FCN-8"),
          ct=True),
    Entry("unet_cet1", "U-Net (CET1)", "baseline", "unet2d", "2d", ("CET1",), "unet_cet1"),
    Entry("li2018_cnn", "CNN (li2018)", "li2018", "working", "2d", ("CET1",), "unet_cet1", ("Table 2", "CNN"),
          score_maps=("score144", "score72", "score36")),
    Entry("guo_cnn", "3D CNN (guo2021)", "guo2021", "CNN", "3d", ("CET1",), "unet_cet1", ("Table 1", "CNN"),
          activation="softmax"),
    Entry("vnet", "V-Net (guo2021)", "guo2021", "V-Net", "3d", ("CET1",), "unet_cet1", activation="softmax"),
    Entry("bunet", "BUNet (guo2021)", "guo2021", "BUNet", "3d", ("CET1",), "unet_cet1", activation="softmax"),
    Entry("cscn", "CSCN (guo2021)", "guo2021", "ACDNet_cascade", "3d", ("CET1",), "unet_cet1",
          ("Table 1", "CSCN"), after=("bunet",), activation="softmax"),
    Entry("unet3d_cet1", "3D U-Net, CET1 (chen2020)", "chen2020", "unet3d_cet1", "3d", ("CET1",), "unet_cet1",
          ("Table I", "3D U-net (CET1)")),
    Entry("mmfnet", "MMFNet, T1+T2+CET1 (chen2020)", "chen2020", "multi_mlp_std", "3d", ("T1", "T2", "CET1"),
          "unet_cet1", ("Table II", "MMFNet+multi-MLP+stdPool")),
)
BY_KEY = {m.key: m for m in METHODS}

#: Each paper's proposed method in the leaderboard.
PROPOSED = {"li2018": "li2018_cnn", "xue2020": "deeplab_ct", "luo2020": "luo_ours_ct", "guo2021": "cscn",
            "chen2020": "mmfnet"}


def select(selection, ct_only: bool = False) -> list[Entry]:
    """``"all"`` or a list of keys (ParameterError for unknown keys). The baselines and cascade stages
    of the chosen methods are added."""
    keys = [m.key for m in METHODS] if selection in ("all", None) else list(
        [selection] if isinstance(selection, str) else selection)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise ParameterError(f"unknown leaderboard method(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(BY_KEY)}, all)")
    for k in list(keys):
        keys += [d for d in (BY_KEY[k].baseline, *BY_KEY[k].after) if d not in keys]
    return [m for m in METHODS if m.key in keys and (m.ct or not ct_only)]


def channels_of(entry: Entry, P: Mapping[str, Any]) -> tuple[str, ...]:
    """``entry``'s input channels in a run: its "CT" is the run's ``ct_channel`` (the phantom's
    contrast-enhanced ``CECT`` or non-contrast ``CT``)."""
    ct = str(P.get("ct_channel") or "CT")
    return tuple(ct if c == "CT" else c for c in entry.channels)


def network(entry: Entry, width: float, profile: str):
    """The untrained network of ``entry``, built by its paper's chapter (``network()`` of
    ``npcrepro.chapters.<paper>.methods``) at ``width`` and ``profile``; the baselines are this book's
    four-level 2D U-Net."""
    n_in = len(entry.channels)
    if entry.paper == "baseline":
        from npcrepro.models import build

        def w(c: int) -> int:
            return max(4, int(round(c * width)))

        return build("unet2d", in_channels=n_in, n_classes=1, widths=[w(32), w(64), w(128), w(256)])
    mod = importlib.import_module(f"npcrepro.chapters.{entry.paper}.methods")
    if entry.after:  # a cascade's fine stage also sees the coarse probability
        n_in += 1
    net = mod.network(entry.name, width=width, in_channels=n_in, profile=profile)
    return ScoreMaps(net, entry.score_maps) if entry.score_maps else net


def built_as(entry: Entry, P: Mapping[str, Any]) -> str:
    """How ``entry``'s network is sized at ``P``'s profile, against its own chapter at that profile:
    the one policy is every network at ``width`` times its paper's channel widths; the rows that
    depart from it say so here (shown in the chapter's method table)."""
    from npcrepro import recipes

    width, profile = float(P["width"]), str(P["profile"])
    if entry.paper == "baseline":
        return f"this book's U-Net at width {width:g}"
    chapter = recipes.load(entry.paper).PROFILES.get(profile, {})
    if entry.paper == "luo2020":
        chapter_ct = str(chapter.get("channel") or "CT")
        read = channels_of(entry, P)[0]
        other_ct = f"; reads {read}, its chapter {chapter_ct} (the paper does not say)" if read != chapter_ct else ""
        return ("exception: the luo2020 chapter's widths at this profile (width not applied), and without "
                "the chapter's column input (it tells left from right structures; GTVp has no side)" + other_ct)
    if entry.paper == "li2018":
        return (f"exception: width {width / 2:g}, half the leaderboard's (the li2018 chapter at this "
                f"profile: {float(chapter.get('width', width)):g})")
    if entry.paper == "xue2020":
        return (f"MobileNetV2 width {width * float(chapter.get('deeplab_width', 1.0)):g} (the xue2020 "
                f"chapter at this profile: {float(chapter.get('deeplab_width', 1.0)):g})")
    return f"width {width:g} (the {entry.paper} chapter at this profile: {float(chapter.get('width', width)):g})"


class ScoreMaps(torch.nn.Module):
    """Deep supervision of a network whose ``forward(x, maps=True)`` returns named score maps
    (li2018's 144/72/36 maps): in training the maps ``keys`` (finest first; the loss compares each
    with the target averaged to its grid), in evaluation the first one alone."""

    def __init__(self, net: torch.nn.Module, keys: Sequence[str]):
        super().__init__()
        self.net, self.keys = net, tuple(keys)

    def forward(self, x):
        if not self.training:
            return self.net(x)
        maps = self.net(x, maps=True)
        return [maps[k] for k in self.keys]


def schedule(P: Mapping[str, Any], iterations: int) -> dict | None:
    """The common learning-rate schedule over a budget of ``iterations``: ``P.schedule`` ("cosine",
    "poly" or "constant") after a linear warm-up over ``P.warmup`` of the budget; cosine and poly run
    ``P.cycles`` times over it (warm restarts, each cycle with its warm-up)."""
    if P["schedule"] == "constant":
        warm = int(round(float(P["warmup"]) * iterations))
        return {"kind": "constant", "warmup": warm} if warm else None
    from npcrepro.engine.schedules import cosine_cycles

    return cosine_cycles(iterations, float(P["warmup"]), int(P.get("cycles") or 1), kind=str(P["schedule"]))


def schedule_text(P: Mapping[str, Any]) -> str:
    """The common training schedule of ``P`` in words (for the chapter's protocol table)."""
    cycles, warm = int(P.get("cycles") or 1), float(P["warmup"])
    peak = f"Adam at a peak learning rate of {float(P['lr']):g}"
    if P["schedule"] == "constant":
        return peak + (f" after a linear warm-up over the first {warm:.0%} of the budget" if warm else "")
    each = "each cycle" if cycles > 1 else "the budget"
    text = (f"{peak}, a linear warm-up over the first {warm:.0%} of {each} and a {P['schedule']} decay to "
            f"zero at its end")
    if cycles > 1:
        text += (f", {cycles} cycles over the budget (warm restarts: the network scored at half its budget "
                 "has finished a whole schedule)" if cycles == 2 else f", {cycles} cycles over the budget "
                 "(warm restarts)")
    return text


class Leaderboard(Chapter):
    name = "leaderboard"
    channels = ("CT", "CECT", "T1", "T2", "CET1")

    def channels_for(self, P, dataset=None) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for m in select(P["methods"]) for c in channels_of(m, P)))

    def structures_for(self, P, dataset=None) -> tuple[str, ...]:
        return (str(P["structure"]),)

    def methods(self, P) -> list[Method]:
        ct_only = str(P["structure"]) != "GTVp"
        # the 3D networks' Trainer settings, checked before any job starts
        FixedStatistics(float(P.get("bn_fixed_3d") or 0), int(P.get("bn_batches") or 0), float(P.get("ema") or 0),
                        where="leaderboard", name="bn_fixed_3d")
        return [Method(m.key, m.label, m.after, info={
            "paper": m.paper, "dims": m.dims, "channels": list(channels_of(m, P)), "baseline": m.baseline,
            "reported": list(m.reported) if m.reported else None, "ct": m.ct})
            for m in select(P["methods"], ct_only=ct_only)]

    def all_methods(self, P) -> list[Method]:
        return [Method(m.key, m.label, m.after) for m in METHODS]

    def folds(self, cases, P):
        from npcrepro.datasets.splits import Fold

        names = sorted(cases)
        n_test = int(P["n_test"])
        if not 1 <= n_test < len(names):
            raise ParameterError(f"n_test must be between 1 and {len(names) - 1} for {len(names)} cases, "
                                 f"got {n_test}")
        rng = np.random.default_rng(int(P["seed"]))
        test = sorted(rng.choice(names, n_test, replace=False).tolist())
        return [Fold([n for n in names if n not in test], [], test)]

    def load(self, dataset, name, P):
        need = sorted(set(self.channels_for(P)) & set(dataset.channels))
        # the hard negatives the dataset has are read to place training samples on, never scored
        have = set(getattr(dataset, "structures", ()))
        negatives = [s for s in (P.get("negatives") or ()) if s in have]
        return dataset.load(name, channels=need, structures=[str(P["structure"]), *negatives])

    def build(self, method, P):
        return network(BY_KEY[method.name], float(P["width"]), str(P["profile"]))

    def prepare(self, case, P):
        return case

    def fit(self, method, train, val, ctx):
        from npcrepro.engine import Trainer

        P, m = ctx.P, BY_KEY[method.name]
        channels = list(channels_of(m, P))
        if m.after:
            coarse_net = ctx.model_of(m.after[0])
            coarse = BY_KEY[m.after[0]]
            train = [with_channel(c, "coarse", self._probability(coarse_net, coarse, c, P, ctx.device))
                     for c in train]
            channels.append("coarse")
        net = self.build(method, P)
        iters = int(P["iterations_2d" if m.dims == "2d" else "iterations_3d"])
        batch = int(P["batch_2d" if m.dims == "2d" else "batch_3d"])
        trainer = Trainer(net, CommonLoss(), samples(train, channels, P, m.dims, ctx.seed), batch_size=batch,
                          iterations=iters, optimizer="adam", lr=float(P["lr"]), schedule=schedule(P, iters),
                          grad_clip=float(P["grad_clip"]) or None, ema=float(P["ema"]), amp=ctx.device != "cpu",
                          restore_best=False, bn_batches=int(P.get("bn_batches") or 0),
                          bn_fixed=float(P.get("bn_fixed_3d") or 0.0) if m.dims == "3d" else 0.0,
                          **ctx.trainer_args())
        try:
            history = ctx.fit(trainer)
            rows, status = history.rows, "trained"
        except FloatingPointError:
            rows, status = list(trainer.rows), "diverged"
        from npcrepro.models import count_parameters

        losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
        ctx.facts.update(status=status, iterations=iters, parameters=count_parameters(net),
                         final_loss=float(losses[-1]) if losses else math.nan)
        return net.eval()

    def _probability(self, model, entry: Entry, case, P, device, channels: Sequence[str] | None = None):
        """Tumour probability (z, y, x) of ``case``: Gaussian sliding windows of the training crop
        (2D, slice by slice) or patch (3D), so that every network is tested on inputs the size it
        was trained on; a 2D run without crops predicts whole slices."""
        from npcrepro.engine import predict_case

        channels = list(channels or channels_of(entry, P))
        window = P.get("crop_2d") if entry.dims == "2d" else P["patch_3d"]
        kw = dict(mode=entry.dims, batch_size=16 if entry.dims == "2d" else 2)
        if window:
            kw.update(patch_size=window, overlap=float(P["overlap"]))
        prob = predict_case(model, case, channels, normalise=normaliser(channels), activation=entry.activation,
                            device=device, amp=device != "cpu", **kw)
        return foreground(prob)

    def predict(self, method, model, case, ctx) -> dict[str, np.ndarray]:
        P, m = ctx.P, BY_KEY[method.name]
        structure = str(P["structure"])
        if not m.after:
            return {structure: self._probability(model, m, case, P, ctx.device)}
        coarse = self._probability(ctx.model_of(m.after[0]), BY_KEY[m.after[0]], case, P, ctx.device)
        fine = self._probability(model, m, with_channel(case, "coarse", coarse), P, ctx.device,
                                 [*channels_of(m, P), "coarse"])
        return {structure: (coarse + fine) / 2}

    def score(self, method, case, probs, masks, ctx) -> list[dict]:
        from npcrepro import metrics

        rows = []
        for structure, mask in masks.items():
            ref = case.labels.get(structure, np.zeros(case.shape, bool))
            r = metrics.evaluate_case(mask, ref, case.spacing, tolerance_mm=float(ctx.P["nsd_mm"]))
            rows.append({"case": case.name, "structure": structure, **r})
        return rows


CHAPTER = Leaderboard()
