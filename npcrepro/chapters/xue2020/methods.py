"""xue2020: the two networks as methods of one chapter, trained alike with the paper's recipe.

    DeepLabv3+ (``deeplabv3plus``) and U-Net (``unet2d``), one output (the target's logit):
      loss 1 - DSC (soft Dice over the batch, sigmoid), Adam lr 0.005, lr x0.8 after 5 validations
      without improvement of the validation loss, best-validation weights tested (``weights``)
      -> every slice of each test patient predicted, stacked back into the volume (the case's own
         grid), thresholded at 0.5 and scored in 3D by the runner (DSC, JI, ASD, HD in mm)
      -> inference time per slice recorded with the training facts.

:func:`network` builds the same networks for the leaderboard at a width multiplier.
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from npcrepro.chapters.xue2020.prepare import (TARGET, has_structure, location_prior, normalise_ct, openkbp_source,
                                               pixel_size, real_params, slice_datasets, source_structures,
                                               split_sizes, xue_case)
from npcrepro.engine.experiment import Chapter, Method, Track
from npcrepro.errors import DataError, ParameterError
from npcrepro.chapters.xue2020.recipe import PAPER_PIXEL_MM

__all__ = ["MODELS", "METHODS", "aspp_rates_for", "build_model", "network", "make_loss", "time_per_slice",
           "Xue2020", "CHAPTER"]

#: Display name -> registered model name. The order is the paper's (proposed model first).
MODELS: dict[str, str] = {"DeepLabv3+": "deeplabv3plus", "U-Net": "unet2d"}

#: Method (folder) name -> display name.
METHODS: dict[str, str] = {"deeplabv3plus": "DeepLabv3+", "unet": "U-Net"}


# ----------------------------------------------------------------------------------- networks
def aspp_rates_for(pixel_mm: float | None, scale: bool = True) -> tuple[int, ...]:
    """ASPP rates for a pixel size: (6, 12, 18) scaled by ``PAPER_PIXEL_MM / pixel_mm`` (at least 1,
    rounded), or (6, 12, 18) unscaled when ``scale`` is False or the pixel size is unknown."""
    base = (6, 12, 18)
    if not scale or not pixel_mm:
        return base
    return tuple(max(1, int(math.floor(r * PAPER_PIXEL_MM / float(pixel_mm) + 0.5))) for r in base)


def build_model(label: str, P: Mapping, in_channels: int = 1, pixel_mm: float | None = None) -> nn.Module:
    """``"DeepLabv3+"`` or ``"U-Net"`` at the sizes of ``P`` (one output: the target's logit).
    ``pixel_mm`` (the data's in-plane pixel size) sets the ASPP rates when ``P.scale_aspp``; ``P.prior``
    (when set) the output layer's initial foreground probability (:func:`~npcrepro.models.blocks.init_output`)."""
    import npcrepro.models.deeplab  # noqa: F401  (registers deeplabv3plus)
    import npcrepro.models.unet  # noqa: F401
    from npcrepro.models import build
    from npcrepro.models.blocks import init_output

    if label not in MODELS:
        raise ParameterError(f"unknown xue2020 model {label!r} (valid: {', '.join(MODELS)})")
    if label == "DeepLabv3+":
        rates = aspp_rates_for(pixel_mm, bool(P.get("scale_aspp", True)))
        os_ = int(P["output_stride"])
        model = build(MODELS[label], in_channels=in_channels, n_classes=1, output_stride=os_,
                      width=float(P["deeplab_width"]), aspp_rates=[r * 16 // os_ for r in rates])
    else:
        model = build(MODELS[label], in_channels=in_channels, n_classes=1, widths=list(P["unet_widths"]))
    init_output(model.head, P.get("prior"))
    return model


def network(name: str, *, width: float, in_channels: int, profile: str = "cpu",
            pixel_mm: float | None = 2.0) -> nn.Module:
    """The network ``name`` ("DeepLabv3+" or "U-Net", or a method name) of this chapter's recipe at
    ``profile``, at width multiplier ``width``, for the leaderboard. DeepLabv3+ takes the recipe's
    output stride and ASPP scaling with MobileNetV2 width ``deeplab_width * width`` and the ASPP rates
    of ``pixel_mm`` pixels (the leaderboard's phantom: 2 mm); the U-Net the recipe's widths times
    ``width`` (at least 4 channels); both with the recipe's output initialisation (``prior``)."""
    from npcrepro.recipes import load

    sizes = load("xue2020").PROFILES.get(profile)
    if sizes is None:
        raise ParameterError(f"unknown profile {profile!r} for xue2020 (valid: smoke, cpu, gpu)")
    label = METHODS.get(name, name)
    P = {"output_stride": sizes["output_stride"], "scale_aspp": sizes["scale_aspp"], "prior": sizes["prior"],
         "deeplab_width": float(sizes["deeplab_width"]) * float(width),
         "unet_widths": [max(4, int(round(c * width))) for c in sizes["unet_widths"]]}
    return build_model(label, P, in_channels, pixel_mm=pixel_mm)


def schedule(P, budget: dict) -> dict:
    """The learning-rate schedule of ``P`` over ``budget`` ({"iterations": n} or {"epochs": n}, counted
    in that unit): the paper's plateau rule (x ``lr_factor`` after ``lr_patience`` evaluations without
    improvement) or ``P.schedule`` (cosine/poly) decaying to 0 at the end, after a linear warm-up over
    ``P.warmup`` of the budget; with ``P.cycles`` > 1, cosine/poly restart that many times (each
    cycle with its warm-up, ``P.warmup`` of the cycle)."""
    unit, n = ("iteration", budget["iterations"]) if "iterations" in budget else ("epoch", budget["epochs"])
    if P["schedule"] == "plateau":
        warm = {"unit": unit, "warmup": int(round(float(P["warmup"]) * int(n)))}
        return {"kind": "plateau", "factor": float(P["lr_factor"]), "patience": int(P["lr_patience"]), **warm}
    from npcrepro.engine.schedules import cosine_cycles

    return cosine_cycles(int(n), float(P["warmup"]), int(P.get("cycles") or 1), kind=str(P["schedule"]), unit=unit)


def make_loss(eps: float = 1.0) -> nn.Module:
    """1 - DSC: soft Dice of the sigmoid probabilities, pooled over the batch."""
    from npcrepro.losses import DiceLoss

    return DiceLoss(eps=eps, activation="sigmoid", batch=True)


# ----------------------------------------------------------------------------------- timing
@torch.no_grad()
def time_per_slice(model: nn.Module, shape: Sequence[int], device="cpu", n: int = 20, warmup: int = 3,
                   in_channels: int = 1) -> dict:
    """Inference time of one slice of ``shape`` (H, W), batch 1, eval mode: median and mean over
    ``n`` timed runs after ``warmup`` (CUDA synchronised). Returns ms and the device. Draws its input
    from its own generator (the global RNG is left alone)."""
    dev = torch.device(device)
    was_training = model.training
    model.eval().to(dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, *[int(s) for s in shape], generator=gen).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(max(0, warmup)):
        model(x)
    sync()
    times = []
    for _ in range(max(1, n)):
        t = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - t) * 1000.0)
    model.train(was_training)
    return {"ms_median": float(np.median(times)), "ms_mean": float(np.mean(times)), "n": len(times),
            "shape": tuple(int(s) for s in shape), "device": _device_name(dev),
            "threads": torch.get_num_threads()}


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from npcrepro.engine.runs import cpu_model

    try:
        return f"CPU ({cpu_model()}, {torch.get_num_threads()} threads)"
    except Exception:  # noqa: BLE001 - the name is decoration
        return f"CPU ({torch.get_num_threads()} threads)"


# ----------------------------------------------------------------------------------- the chapter
class Xue2020(Chapter):
    """DeepLabv3+ and U-Net on 2D axial CT slices (``P.channel``: CECT, the paper's contrast-enhanced
    CT, or CT), one hold-out split by patient."""

    name = "xue2020"
    structures = (TARGET,)
    tracks = (Track("openkbp", real_params, openkbp_source),)

    def channels_for(self, P, dataset=None):
        return (str(P["channel"]),)

    def methods(self, P):
        return [Method(m, label, info={"model": MODELS[label]}) for m, label in METHODS.items()]

    def cases(self, dataset, P):
        names = super().cases(dataset, P)
        if P["target"] == "ptv70":  # OpenKBP: only the cases that carry the stand-in target
            names = [n for n in names if has_structure(dataset, n, "PTV70")]
        if len(names) < 3:
            raise DataError(f"xue2020: need at least 3 cases (train/validation/test), got {len(names)}")
        return names

    def held_out(self, dataset, P):
        names = super().held_out(dataset, P)
        return [n for n in names if has_structure(dataset, n, "PTV70")] if P["target"] == "ptv70" else names

    def folds(self, cases, P):
        """One seeded random split by patient: ``n_test`` / ``n_val``, in the same proportions when
        the dataset holds fewer cases than ``n_cases``."""
        from npcrepro.datasets.splits import make_splits

        n_test, n_val = split_sizes(len(cases), P)
        return make_splits(list(cases), "holdout", seed=int(P["seed"]), n_test=n_test, n_val=n_val)

    def load(self, dataset, name, P):
        channel = str(P["channel"])
        if channel not in dataset.channels:
            raise DataError(f"{dataset.root}: xue2020 trains on channel {channel!r} (parameter channel), which "
                            f"the dataset lacks (channels {dataset.channels}); channel='CT' trains on its CT")
        return dataset.load(name, channels=[channel], structures=source_structures(dataset, P["target"]))

    def prepare(self, case, P):
        return xue_case(case, P["target"], str(P["channel"]))

    def build(self, method, P, pixel_mm: float | None = None):
        """The untrained network; ``fit`` passes the data's pixel size (ASPP rates)."""
        return build_model(method.label, P, in_channels=2 * int(P["context"]) + 1, pixel_mm=pixel_mm)

    def fit(self, method, train, val, ctx):
        from npcrepro.engine import Trainer

        P = ctx.P
        train_ds, val_ds = slice_datasets(train, val, P)
        pixel_mm = pixel_size(list(train) + list(val))
        model = self.build(method, P, pixel_mm=pixel_mm)
        iterations = P.get("iterations")
        epochs = None if iterations else P.get("epochs")
        if not iterations and not epochs:
            raise ParameterError("xue2020: give iterations or epochs (the profile sets one)")
        budget = {"iterations": int(iterations)} if iterations else {"epochs": int(epochs)}
        eval_every = min(int(P["eval_every"]), int(iterations)) if (P.get("eval_every") and iterations) else None
        trainer = Trainer(model, make_loss(float(P["dice_eps"])), train_ds, val_data=val_ds,
                          batch_size=int(P["batch_size"]), optimizer="adam", lr=float(P["lr"]),
                          schedule=schedule(P, budget), grad_clip=float(P["grad_clip"]) or None,
                          eval_every=eval_every, restore_best=val_ds is not None and P["weights"] == "best", **budget,
                          **ctx.trainer_args())
        t0 = time.perf_counter()
        h = ctx.fit(trainer)
        fit_seconds = time.perf_counter() - t0
        f = h.frame
        shape = tuple(P["image_size"]) if P.get("image_size") else tuple(train[0].shape[1:])
        tm = time_per_slice(model, shape, ctx.device, n=int(P["timing_slices"]), in_channels=train_ds.in_channels)
        ctx.facts.update(
            label=method.label, train_slices=len(train_ds), iterations=h.iterations, fit_seconds=fit_seconds,
            best_val_loss=h.best_val_loss, best_iteration=h.best_iteration, final_train_loss=h.final_train_loss,
            final_lr=float(f["lr"].iloc[-1]) if len(f) and "lr" in f else None,
            # a cut is the plateau rule's; a cosine or poly schedule lowers the rate at every evaluation
            lr_cuts=(int((f["lr"].diff() < 0).sum()) if len(f) and "lr" in f else 0)
            if P["schedule"] == "plateau" else None,
            pixel_mm=pixel_mm, parameters=int(sum(p.numel() for p in model.parameters())),
            aspp_rates="/".join(map(str, model.aspp.rates)) if hasattr(model, "aspp") else "",
            ms_median=tm["ms_median"], ms_mean=tm["ms_mean"], timing_shape="×".join(map(str, tm["shape"])),
            timing_device=tm["device"], threads=tm["threads"])
        return model

    def structure_label(self, results, structure):
        """The PTV70 of a run on that target (scored under the chapter's target name, GTVp)."""
        return "PTV70" if structure == TARGET and results.params.get("target") == "ptv70" else structure

    def reference(self, results):
        """The OpenKBP track's location prior (:func:`npcrepro.chapters.xue2020.prepare.location_prior`) at the
        run's ``real_prior_threshold``; None for a run on another target."""
        P = results.params
        if P.get("target") != "ptv70" or P.get("real_prior_threshold") is None:
            return None
        return location_prior(results, float(P["real_prior_threshold"]))

    def predict(self, method, model, case, ctx):
        """Every axial slice (centre crop/pad to ``image_size`` when set, mapped back), stacked into
        the case's grid: {target: probability}."""
        from npcrepro import transforms as T
        from npcrepro.engine import predict_slices, prepare_case

        P = ctx.P
        image, _ = prepare_case(case, [str(P["channel"])], (), normalise=normalise_ct)
        size = P.get("image_size")
        kw = dict(batch_size=int(P["infer_batch"]), device=ctx.device, activation="sigmoid",
                  context=int(P["context"]))
        if size:
            box = tuple(((n - int(s)) // 2, (n - int(s)) // 2 + int(s)) for n, s in zip(image.shape[2:], size))
            full = ((0, image.shape[0]), (0, image.shape[1])) + box
            prob = T.uncrop(predict_slices(model, T.crop(image, full), **kw), box, image.shape[2:])
        else:
            prob = predict_slices(model, image, **kw)
        return {TARGET: np.asarray(prob[0], np.float32)}


CHAPTER = Xue2020()
