"""The leaderboard: every method of the five papers under one common protocol.

None of the five papers compared its method with the others on the same patients. This module trains
each paper's network (and a plain U-Net baseline per input family) on **one cohort, one split, one
budget, one loss and one evaluation**, so that differences come from the architectures and their
inputs only:

* cohort and split: the phantom at the profile's preset, ``n_cases`` patients, a seeded hold-out of
  ``n_test`` test patients (the same for every method); on OpenKBP CT (when present) the CT methods
  again, with PTV70 as the stand-in target;
* input: the modality each paper used (CT for xue2020/luo2020; contrast-enhanced T1 for li2018,
  guo2021 and the single-sequence chen2020 row; T1+T2+CET1 for MMFNet), CT windowed to [-200, 300] HU
  and MR z-scored per patient;
* training: Adam at ``lr``, ``iterations_2d`` / ``iterations_3d`` iterations, loss = soft Dice +
  cross-entropy on the final output (averaged over deep-supervision outputs where a network has them),
  2D methods on random ``crop_2d`` crops of axial slices (tumour slices plus half as many others), 3D
  methods on random ``patch_3d`` patches (half centred on tumour);
* inference: 2D slice by slice over the whole volume, 3D by Gaussian sliding window with the training
  patch; threshold 0.5, no post-processing;
* evaluation: DSC, HD95, ASSD and NSD (tolerance ``nsd_mm``) on the native grid with
  :func:`npcrepro.evaluation.evaluate_cases`, 95% bootstrap CIs, paired t-test and Wilcoxon against
  the U-Net baseline that sees the same images.

Methods run as independent jobs on a process pool (``workers``; one torch thread each). Every job
writes its predictions to the run folder (``predictions/<case>/<method>.nii.gz``) so that the
explorer can show them, and returns its per-case rows.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from npcrepro.errors import DataError, ParameterError
from npcrepro.profiles import register_profile

PAPER = "leaderboard"
STRUCTURE = "GTVp"
REAL_STRUCTURE = "PTV70"
METRICS = ("dice", "hd95", "assd", "nsd")
METRIC_LABELS = {"dice": "DSC", "hd95": "HD95 (mm)", "assd": "ASSD (mm)", "nsd": "NSD"}
CT_WINDOW = (-200.0, 300.0)

# ----------------------------------------------------------------------------------- profiles
_COMMON_SIZES = dict(lr=1e-3, fg_prob=0.5, background_fraction=0.5, threshold=0.5, nsd_mm=2.0,
                     overlap=0.25, n_boot=2000)
# ----------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """One leaderboard entry.

    ``key`` names the prediction files; ``paper`` is the chapter it comes from (``"baseline"`` for
    the U-Nets); ``dims`` "2d"/"3d"; ``channels`` the input images; ``baseline`` the key of the U-Net
    it is tested against; ``builder`` makes the network from (width, in_channels)."""

    key: str
    label: str
    paper: str
    dims: str
    channels: tuple[str, ...]
    baseline: str
    builder: str
    reported: tuple[str, str] | None = None   # (table, method) of the paper's row for this network
    ct: bool = False


METHODS: tuple[Method, ...] = (
    Method("unet_ct", "U-Net (CT)", "baseline", "2d", ("CT",), "unet_ct", "unet2d", ct=True),
    Method("deeplab_ct", "DeepLabv3+ (xue2020)", "xue2020", "2d", ("CT",), "unet_ct", "xue_deeplab",
           ("Sec. 2", "DeepLabv3+"), ct=True),
    Method("luo_ours_ct", "Two-stage U-Net + MSP (luo2020)", "luo2020", "2d", ("CT",), "unet_ct",
           "luo_ours", ("Table 1", "Ours"), ct=True),
    Method("fcn8_ct", "FCN-8s (luo2020)", "luo2020", "2d", ("CT",), "unet_ct", "luo_fcn8",
           ("Table 1", "FCN-8"), ct=True),
    Method("unet_cet1", "U-Net (CET1)", "baseline", "2d", ("CET1",), "unet_cet1", "unet2d"),
    Method("li2018_cnn", "CNN (li2018)", "li2018", "2d", ("CET1",), "unet_cet1", "li2018",
           ("Table 2", "CNN")),
    Method("guo_cnn", "3D CNN (guo2021)", "guo2021", "3d", ("CET1",), "unet_cet1", "guo:CNN",
           ("Table 1", "CNN")),
    Method("vnet", "V-Net (guo2021)", "guo2021", "3d", ("CET1",), "unet_cet1", "guo:V-Net"),
    Method("bunet", "BUNet (guo2021)", "guo2021", "3d", ("CET1",), "unet_cet1", "guo:BUNet"),
    Method("cscn", "CSCN (guo2021)", "guo2021", "3d", ("CET1",), "unet_cet1", "guo:CSCN",
           ("Table 1", "CSCN")),
    Method("unet3d_cet1", "3D U-Net, CET1 (chen2020)", "chen2020", "3d", ("CET1",), "unet_cet1",
           "chen:unet3d_cet1", ("Table I", "3D U-net (CET1)")),
    Method("mmfnet", "MMFNet, T1+T2+CET1 (chen2020)", "chen2020", "3d", ("T1", "T2", "CET1"),
           "unet_cet1", "chen:multi_mlp_std", ("Table II", "MMFNet+multi-MLP+stdPool")),
)
BY_KEY = {m.key: m for m in METHODS}
#: Jobs: one per method, except that CSCN's job also yields its coarse stage, BUNet.
JOB_YIELDS = {"cscn": ("bunet", "cscn")}

_ALL = [m.key for m in METHODS]
register_profile(PAPER, "smoke", **_COMMON_SIZES, methods=_ALL, n_cases=5, n_test=2, iterations_2d=4, iterations_3d=3,
                 batch_2d=4, batch_3d=2, crop_2d=[64, 64], patch_3d=[8, 32, 32], width=0.25, workers=2,
                 real_cases=0)
register_profile(PAPER, "cpu", **_COMMON_SIZES, methods=_ALL, n_cases=20, n_test=8, iterations_2d=120,
                 iterations_3d=85, batch_2d=8, batch_3d=2, crop_2d=[96, 96], patch_3d=[16, 48, 48],
                 width=0.5, workers=2, real_cases=0)
register_profile(PAPER, "gpu", **_COMMON_SIZES, methods=_ALL, n_cases=100, n_test=25, iterations_2d=20000,
                 iterations_3d=20000, batch_2d=16, batch_3d=2, crop_2d=[256, 256], patch_3d=[32, 160, 160],
                 width=1.0, workers=1, real_cases=64)

#: The papers' comparisons the common protocol can test: (paper, where, better key, worse key).
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("xue2020", "Sec. 2", "deeplab_ct", "unet_ct"),
    ("luo2020", "Table 1", "luo_ours_ct", "unet_ct"),
    ("luo2020", "Table 1", "luo_ours_ct", "fcn8_ct"),
    ("guo2021", "Table 1", "cscn", "guo_cnn"),
    ("chen2020", "Table I/II", "mmfnet", "unet3d_cet1"),
)
#: The reported row of each baseline key that a claim compares against (paper's own U-Net etc.).
CLAIM_REPORTED = {
    ("xue2020", "unet_ct"): ("Sec. 2", "U-Net"),
    ("luo2020", "unet_ct"): ("Table 1", "U-Net"),
}


def select_methods(selection: str | Sequence[str], ct_only: bool = False) -> list[Method]:
    """``"all"`` or a list of method keys (ParameterError for unknown keys). Baselines of the chosen
    methods are added, since every method is tested against one."""
    keys = [m.key for m in METHODS] if selection in ("all", None) else list(
        [selection] if isinstance(selection, str) else selection)
    unknown = [k for k in keys if k not in BY_KEY]
    if unknown:
        raise ParameterError(f"unknown leaderboard method(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(BY_KEY)}, all)")
    keys += [BY_KEY[k].baseline for k in keys if BY_KEY[k].baseline not in keys]
    chosen = [m for m in METHODS if m.key in keys and (m.ct or not ct_only)]
    return chosen


def jobs_for(methods: Sequence[Method]) -> list[str]:
    """The job keys that produce ``methods`` (BUNet comes out of the CSCN job when both are asked)."""
    keys = [m.key for m in methods]
    jobs = []
    for k in keys:
        owner = next((j for j, ys in JOB_YIELDS.items() if k in ys and j in keys), k)
        if owner not in jobs:
            jobs.append(owner)
    return jobs


def build_network(builder: str, width: float = 1.0, in_channels: int = 1) -> nn.Module:
    """The network named by a :class:`Method`'s ``builder`` at width multiplier ``width``."""
    from npcrepro.models import build

    def w(c: int) -> int:
        return max(4, int(round(c * width)))

    if builder == "unet2d":
        return build("unet2d", in_channels=in_channels, n_classes=1, widths=[w(32), w(64), w(128), w(256)])
    if builder == "xue_deeplab":
        from npcrepro.pipelines import xue2020

        return xue2020.build_model("DeepLabv3+", {"output_stride": 16, "deeplab_width": width,
                                                  "scale_aspp": True}, in_channels, pixel_mm=2.0)
    if builder in ("luo_ours", "luo_fcn8"):
        from npcrepro.pipelines import luo2020
        from npcrepro.profiles import parameters

        sizes = dict(parameters("luo2020", "cpu"))
        sizes.update(prior=None)
        return luo2020.build_method("ours" if builder == "luo_ours" else "fcn8", sizes, 1, in_channels)
    if builder == "li2018":
        from npcrepro.pipelines import li2018

        return li2018.build_model("working", width / 2, in_channels)
    if builder.startswith("guo:"):
        from npcrepro.pipelines import guo2021

        name = builder.split(":", 1)[1]
        if name == "CSCN":  # the fine stage: its constructor adds the coarse-probability channel itself
            return guo2021.build_model("ACDNet_cascade", width, in_channels - 1)
        return guo2021.build_model(name, width, in_channels)
    if builder.startswith("chen:"):
        from npcrepro.pipelines import chen2020

        return chen2020.build_row(builder.split(":", 1)[1], width=width)
    raise ParameterError(f"unknown builder {builder!r}")


# ----------------------------------------------------------------------------------- the common recipe
def normaliser(channels: Sequence[str]) -> dict:
    """Per-channel normalisation of the common protocol: CT windowed to :data:`CT_WINDOW` and scaled
    to [0, 1]; every other channel z-scored per patient; ``coarse`` (a cascade's input) untouched."""
    lo, hi = CT_WINDOW

    def ct(a):
        return (np.clip(a, lo, hi) - lo) / (hi - lo)

    return {c: (ct if c == "CT" else None if c == "coarse" else "zscore") for c in channels}


class CommonLoss(nn.Module):
    """Soft Dice (eps 1, per sample) + cross-entropy on the foreground.

    ``input``: logits (N, 1, ...) (sigmoid) or (N, 2, ...) (softmax, channel 1 = tumour), or a
    list/tuple of such (deep supervision: the mean over outputs). ``target``: (N, 1, ...) {0, 1}.
    Returns a scalar."""

    def forward(self, input, target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, (list, tuple)):
            return torch.stack([self.forward(o, target) for o in input]).mean()
        t = target.float()
        if input.shape[1] == 1:
            p = torch.sigmoid(input)
            ce = F.binary_cross_entropy_with_logits(input, t)
        elif input.shape[1] == 2:
            p = torch.softmax(input, 1)[:, 1:2]
            ce = F.cross_entropy(input, t[:, 0].long())
        else:
            raise DataError(f"CommonLoss: expected 1 or 2 output channels, got {input.shape[1]}")
        dims = tuple(range(1, p.ndim))
        dice = 1 - (2 * (p * t).sum(dims) + 1) / (p.sum(dims) + t.sum(dims) + 1)
        return ce + dice.mean()


def foreground(prob: np.ndarray) -> np.ndarray:
    """Tumour probability (z, y, x) from (1, ...) sigmoid or (2, ...) softmax probabilities."""
    return prob[1] if prob.shape[0] == 2 else prob[0]


def _train(model: nn.Module, dataset, S: Mapping[str, Any], *, iterations: int, batch: int, seed: int,
           desc: str, device: str = "cpu") -> dict:
    from npcrepro.engine import Trainer, seed_everything

    seed_everything(seed)
    trainer = Trainer(model, CommonLoss(), dataset, batch_size=batch, iterations=int(iterations),
                      optimizer="adam", lr=float(S["lr"]), schedule=None, seed=seed, device=device,
                      amp=device != "cpu", progress=False, desc=desc, restore_best=False)
    t0 = time.perf_counter()
    try:
        hist = trainer.fit()
        rows, status = hist.rows, "trained"
    except FloatingPointError:
        rows, status = list(trainer.rows), "diverged"
    model.eval()
    losses = [r["train_loss"] for r in rows if r.get("train_loss") is not None]
    return {"status": status, "train_seconds": time.perf_counter() - t0,
            "final_loss": float(losses[-1]) if losses else math.nan}


def _dataset(cases, channels, S, dims: str, seed: int, structure: str):
    from npcrepro.engine import PatchDataset, SliceDataset

    norm = normaliser(channels)
    if dims == "2d":
        return SliceDataset(cases, channels, [structure], slices="labelled",
                            background_fraction=float(S["background_fraction"]),
                            size=tuple(S["crop_2d"]) if S.get("crop_2d") else None, random_crop=True,
                            crop_fg_prob=float(S["fg_prob"]), normalise=norm, seed=seed)
    per_case = max(1, math.ceil(int(S["iterations_3d"]) * int(S["batch_3d"]) / max(1, len(cases))))
    return PatchDataset(cases, channels, [structure], S["patch_3d"], samples_per_case=per_case,
                        fg_prob=float(S["fg_prob"]), normalise=norm)


def _predict(model: nn.Module, case, channels, S, dims: str, activation: str, device: str = "cpu"
             ) -> np.ndarray:
    """Tumour probability (z, y, x) of ``case`` on its grid: 2D slice by slice, 3D by sliding window."""
    from npcrepro.engine import predict_case

    kw = (dict(mode="2d", batch_size=16) if dims == "2d" else
          dict(mode="3d", patch_size=S["patch_3d"], overlap=float(S["overlap"]), batch_size=2))
    prob = predict_case(model, case, list(channels), normalise=normaliser(channels),
                        activation=activation, device=device, amp=device != "cpu", **kw)
    return foreground(prob)


def _with_channel(case, name: str, array: np.ndarray):
    from dataclasses import replace

    return replace(case, images={**case.images, name: array.astype(np.float32)})


def run_job(job: str, *, data: str, train: Sequence[str], test: Sequence[str], S: Mapping[str, Any],
            run: str, structure: str = STRUCTURE, seed: int = 0) -> dict:
    """Train one job's network(s) on ``train``, predict ``test``, write the predictions into the run
    folder and return ``{"rows": [per-case metric rows], "facts": [one dict per method]}``.

    Top-level and picklable: runs in a pool worker. ``data`` is a dataset folder."""
    from npcrepro.datasets import open_dataset
    from npcrepro.engine import RunFolder
    from npcrepro.evaluation import evaluate_cases
    from npcrepro.models import count_parameters

    torch.set_num_threads(1)
    m = BY_KEY[job]
    ds = open_dataset(data)
    need = list(m.channels)
    train_cases = [ds.load(n, channels=need, structures=[structure]) for n in train]
    test_cases = [ds.load(n, channels=need, structures=[structure]) for n in test]
    rf = RunFolder(run)
    iters = int(S["iterations_2d" if m.dims == "2d" else "iterations_3d"])
    batch = int(S["batch_2d" if m.dims == "2d" else "batch_3d"])
    width = float(S["width"])
    from npcrepro.profiles import resolve_device

    dev = resolve_device(str(S.get("device") or "auto"))
    act = "softmax" if m.builder.startswith("guo:") else "sigmoid"  # guo2021's nets: 2-class softmax
    outputs: dict[str, dict[str, np.ndarray]] = {}
    facts = []

    def fit(key: str, builder: str, cases, channels) -> nn.Module:
        from npcrepro.engine import seed_everything

        # Seed before building: a pool worker runs several jobs, so the global RNG state here would
        # otherwise depend on which jobs ran before (and the initial weights with it).
        seed_everything(seed)
        net = build_network(builder, width, len(channels))
        f = _train(net, _dataset(cases, channels, S, m.dims, seed, structure), S, iterations=iters,
                   batch=batch, seed=seed, desc=key, device=dev)
        facts.append({"method": key, "parameters": count_parameters(net), "iterations": iters, **f})
        return net

    t0 = time.perf_counter()
    if job == "cscn":
        coarse_net = fit("bunet", "guo:BUNet", train_cases, need)
        coarse = {c.name: _predict(coarse_net, c, need, S, "3d", act, dev) for c in train_cases + test_cases}
        fine_ch = need + ["coarse"]
        fine_net = fit("cscn", "guo:CSCN", [_with_channel(c, "coarse", coarse[c.name]) for c in train_cases],
                       fine_ch)
        for c in test_cases:
            fine = _predict(fine_net, _with_channel(c, "coarse", coarse[c.name]), fine_ch, S, "3d", act, dev)
            outputs.setdefault("bunet", {})[c.name] = coarse[c.name]
            outputs.setdefault("cscn", {})[c.name] = (coarse[c.name] + fine) / 2
    else:
        net = fit(job, m.builder, train_cases, need)
        outputs[job] = {c.name: _predict(net, c, need, S, m.dims, act, dev) for c in test_cases}
    rows = []
    thr = float(S["threshold"])
    for key, probs in outputs.items():
        masks = {}
        for c in test_cases:
            mask = probs[c.name] >= thr
            rf.write_prediction(c.name, key, mask, c.geometry)
            masks[c.name] = {structure: mask}
        table = evaluate_cases(masks, test_cases, method=key)
        rows += table.to_dict("records")
    seconds = time.perf_counter() - t0
    for f in facts:
        f["job_seconds"] = seconds
    return {"rows": rows, "facts": facts}


def _call_job(kwargs: dict) -> dict:
    return run_job(**kwargs)


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_methods(jobs: Sequence[str], *, workers: int = 1, progress: bool = True, **common) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run leaderboard jobs (in a spawn process pool when ``workers > 1``); returns (per-case rows,
    facts per method). A failing job raises with its method's name."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from tqdm.auto import tqdm

    # Slow jobs first, so the pool does not end with one long job running alone.
    order = sorted(jobs, key=lambda j: -_COST.get(j, 1.0))
    results: dict[str, dict] = {}
    bar = tqdm(total=len(order), desc="leaderboard", disable=not progress, unit="method")
    if workers <= 1:
        for j in order:
            results[j] = run_job(j, **common)
            bar.update(1)
    else:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                    initializer=_init_worker) as pool:
            futs = {pool.submit(_call_job, {"job": j, **common}): j for j in order}
            for fut in cf.as_completed(futs):
                j = futs[fut]
                try:
                    results[j] = fut.result()
                except Exception as exc:  # noqa: BLE001 - re-raised with the method named
                    raise RuntimeError(f"leaderboard method {j!r} failed: {type(exc).__name__}: {exc}") from exc
                bar.set_postfix_str(j)
                bar.update(1)
    bar.close()
    rows = [r for j in jobs for r in results[j]["rows"]]
    facts = [f for j in jobs for f in results[j]["facts"]]
    return pd.DataFrame(rows), pd.DataFrame(facts)


#: Relative cost of each job at equal iterations (measured on one CPU thread), for scheduling only.
_COST = {"cscn": 6.0, "deeplab_ct": 3.0, "unet_ct": 2.0, "unet_cet1": 2.0, "vnet": 2.5, "mmfnet": 2.5,
         "luo_ours_ct": 1.5, "li2018_cnn": 1.0, "unet3d_cet1": 1.5, "fcn8_ct": 0.5, "guo_cnn": 0.5}


# ----------------------------------------------------------------------------------- the run
@dataclass
class Track:
    """One cohort's results: the per-case table, the per-method facts and where they are."""

    name: str
    data: str
    data_label: str
    structure: str
    train: list[str]
    test: list[str]
    methods: list[Method]
    table: pd.DataFrame
    facts: pd.DataFrame
    run: Path
    seconds: float


def holdout(names: Sequence[str], n_test: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, test) names: a seeded random hold-out of ``n_test`` cases."""
    names = sorted(names)
    if not 1 <= n_test < len(names):
        raise ParameterError(f"n_test must be between 1 and {len(names) - 1} for {len(names)} cases, got {n_test}")
    rng = np.random.default_rng(seed)
    test = sorted(rng.choice(names, n_test, replace=False).tolist())
    return [n for n in names if n not in test], test


def run_track(name: str, dataset, P: Mapping[str, Any], *, methods: Sequence[Method], structure: str,
              data_label: str, n_test: int, progress: bool = True) -> Track:
    """Train and evaluate ``methods`` on ``dataset`` (a Dataset with a ``root``) in a new run folder
    ``<out_dir>/<profile>/leaderboard/<stamp>-<name>/``."""
    from npcrepro.engine import RunFolder

    names = [n for n in dataset.cases]
    train, test = holdout(names, n_test, int(P["seed"]))
    params = dict(P)
    if name != "phantom":
        params["data"] = str(dataset.root)
    from npcrepro.profiles import resolve_device

    rf = RunFolder.create(P["out_dir"], P["profile"], PAPER, name, params=params,
                          device=resolve_device(str(P.get("device") or "auto")))
    S = dict(P)
    t0 = time.perf_counter()
    table, facts = run_methods(jobs_for(methods), workers=int(P["workers"]), progress=progress,
                            data=str(dataset.root), train=train, test=test, S=S, run=str(rf.path),
                            structure=structure, seed=int(P["seed"]))
    seconds = time.perf_counter() - t0
    label = {m.key: m.label for m in methods}
    table.insert(table.columns.get_loc("method") + 1, "label", table["method"].map(label))
    rf.write_metrics(table)
    facts.to_csv(rf.path / "methods.csv", index=False)
    rf.write_summary({"track": name, "structure": structure, "train": train, "test": test,
                      "methods": [m.key for m in methods], "seconds": seconds, "data": data_label})
    rf.mark_done()
    return Track(name, str(dataset.root), data_label, structure, train, test, list(methods), table,
                 facts, rf.path, seconds)


def phantom_track(P: Mapping[str, Any], *, progress: bool = True) -> Track:
    """The main track: every selected method on the phantom cohort (or on ``P.data``)."""
    from npcrepro.profiles import load_data

    ds = load_data(P, progress=progress)
    label = "phantom" if P["data"] == "phantom" else str(P["data"])
    methods = select_methods(P["methods"])
    return run_track("phantom" if P["data"] == "phantom" else "data", ds, P, methods=methods,
                     structure=STRUCTURE, data_label=label, n_test=int(P["n_test"]), progress=progress)


def openkbp_track(P: Mapping[str, Any], *, progress: bool = True) -> tuple[Track | None, str]:
    """The CT methods on OpenKBP (PTV70 as the stand-in target), when the shared data are present
    and ``P.real_cases > 0``. Returns (track or None, one-line reason)."""
    n = int(P.get("real_cases") or 0)
    if n <= 0:
        return None, (f"off in the {P.get('profile')} profile (real_cases = 0; "
                      "`-p real_cases N` runs the CT methods on N OpenKBP patients)")
    from npcrepro.pipelines import luo2020

    try:
        ds = luo2020.openkbp_dataset(P["out_dir"], n, progress=False)
    except DataError as exc:
        return None, f"OpenKBP not available: {exc}"
    if ds is None:
        return None, "OpenKBP extract not found (set $NPCREPRO_SHARED_DATA)"
    names = [c for c in ds.cases if REAL_STRUCTURE in ds.load(c, channels=["CT"]).labels]
    if len(names) < 3:
        return None, f"only {len(names)} OpenKBP patients with {REAL_STRUCTURE}"
    methods = select_methods(P["methods"], ct_only=True)
    if not methods:
        return None, "no CT method selected"
    track = run_track("openkbp", _Subset(ds, names), P, methods=methods, structure=REAL_STRUCTURE,
                      data_label=f"OpenKBP CT ({len(names)} patients)",
                      n_test=max(1, min(len(names) // 3, int(P["n_test"]))), progress=progress)
    return track, f"{len(names)} OpenKBP patients"


class _Subset:
    """A dataset restricted to some case names (the same ``root``)."""

    def __init__(self, ds, names: Sequence[str]):
        self.root, self.cases, self._ds = ds.root, list(names), ds

    def load(self, name, **kw):
        return self._ds.load(name, **kw)


# ----------------------------------------------------------------------------------- tables
def method_table(P: Mapping[str, Any]) -> pd.DataFrame:
    """The selected methods: source chapter, input, 2D/3D, the paper's row it stands for, the baseline
    it is tested against and its number of parameters at this profile's width."""
    from npcrepro.models import count_parameters

    rows = []
    for m in select_methods(P["methods"]):
        n_in = len(m.channels) + (1 if m.key == "cscn" else 0)
        rows.append({"key": m.key, "method": m.label, "chapter": m.paper, "input": "+".join(m.channels),
                     "dims": m.dims.upper(),
                     "paper row": f"{m.reported[1]} ({m.reported[0]})" if m.reported else "—",
                     "baseline": BY_KEY[m.baseline].label if m.baseline != m.key else "(is the baseline)",
                     "parameters": f"{count_parameters(build_network(m.builder, float(P['width']), n_in)):,}"})
    return pd.DataFrame(rows)


def _fmt_ci(mean: float, lo: float, hi: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def summary(track: Track, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Long summary: one row per (method, metric) with mean, 95% bootstrap CI and counts."""
    from npcrepro.evaluation import summarize

    return summarize(track.table, list(METRICS), by="method", n_boot=n_boot, seed=seed)


def leaderboard_table(track: Track, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The leaderboard: one row per method (sorted by mean DSC), each metric as ``mean [95% CI]``,
    the paired difference and Wilcoxon p-value of DSC against the method's U-Net baseline, and the
    number of test patients with an empty prediction."""
    s = summary(track, n_boot, seed)
    rows = []
    for m in track.methods:
        sm = s[s["method"] == m.key].set_index("metric")
        if sm.empty:
            continue
        row = {"method": m.label, "paper": m.paper, "input": "+".join(m.channels), "dims": m.dims.upper()}
        for k in METRICS:
            r = sm.loc[k]
            row[METRIC_LABELS[k]] = _fmt_ci(r["mean"], r["ci_low"], r["ci_high"], 3 if k in ("dice", "nsd") else 1)
        p = paired_vs_baseline(track, m)
        row["Δ DSC vs U-Net"] = "—" if p is None else f"{p['mean_diff']:+.3f}"
        row["p (Wilcoxon)"] = "—" if p is None else f"{p['p_wilcoxon']:.3g}"
        sub = track.table[track.table["method"] == m.key]
        row["empty predictions"] = int(sub["pred_empty"].fillna(False).astype(bool).sum()) if "pred_empty" in sub else 0
        row["_dsc"] = float(sm.loc["dice", "mean"])
        rows.append(row)
    df = pd.DataFrame(rows).sort_values("_dsc", ascending=False).drop(columns="_dsc")
    return df.reset_index(drop=True)


def paired_vs_baseline(track: Track, m: Method, metric: str = "dice") -> dict | None:
    """Paired test of ``m`` against its baseline on the test patients (None for the baseline itself
    or when the baseline did not run)."""
    from npcrepro.evaluation import paired_tests

    if m.key == m.baseline or m.baseline not in set(track.table["method"]):
        return None
    return paired_tests(track.table, m.key, m.baseline, [metric]).iloc[0].to_dict()


def paired_table(track: Track) -> pd.DataFrame:
    """Every method against its U-Net baseline, every metric: mean difference, paired t and Wilcoxon."""
    from npcrepro.evaluation import paired_tests

    parts = []
    present = set(track.table["method"])
    for m in track.methods:
        if m.key == m.baseline or m.baseline not in present or m.key not in present:
            continue
        t = paired_tests(track.table, m.key, m.baseline, list(METRICS))
        t.insert(0, "method", m.label)
        t.insert(1, "baseline", BY_KEY[m.baseline].label)
        parts.append(t.drop(columns=["method_a", "method_b"]))
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    out["metric"] = out["metric"].map(METRIC_LABELS)
    return out[["method", "baseline", "metric", "n", "mean_a", "mean_b", "mean_diff", "p_t", "p_wilcoxon"]]


def _reported_dsc(paper: str, table_method: tuple[str, str] | None) -> float:
    from npcrepro import papers

    if table_method is None:
        return math.nan
    table, method = table_method
    r = papers.reported(paper, metric="dsc", method=method)
    r = r[r["case"].isna()] if "case" in r else r
    if table and not table.startswith("Table I/"):
        exact = r[r["table"] == table]
        r = exact if len(exact) else r
    return float(r["value"].iloc[0]) if len(r) else math.nan


def silent_methods(track: Track) -> set[str]:
    """Keys of the methods that predicted an empty mask on every test patient (untrained)."""
    t = track.table
    if "pred_empty" not in t:
        return set()
    empty = t["pred_empty"].astype("boolean").fillna(False).astype(bool)
    return {k for k, g in empty.groupby(t["method"]) if g.all()}


def claims_table(track: Track) -> pd.DataFrame:
    """Each paper's comparison that the common protocol can test: the reported DSC of both methods
    and their difference (from :mod:`npcrepro.papers`), next to the common protocol's paired result
    and a verdict ("holds" when the difference has the claimed sign with Wilcoxon p < 0.05,
    "reversed" when significant the other way, else "not shown at this sample size"). A method that
    predicted no tumour on any test patient was not trained, so a claim involving it is "not tested"
    whatever the p-value."""
    from npcrepro.evaluation import paired_tests

    present = set(track.table["method"])
    silent = silent_methods(track)
    rows = []
    for paper, where, better, worse in CLAIMS:
        if better not in present or worse not in present:
            continue
        b, w = BY_KEY[better], BY_KEY[worse]
        rep_b = _reported_dsc(paper, b.reported)
        rep_w = _reported_dsc(paper, CLAIM_REPORTED.get((paper, worse), w.reported))
        t = paired_tests(track.table, better, worse, ["dice"]).iloc[0]
        diff, p = float(t["mean_diff"]), float(t["p_wilcoxon"])
        untrained = [BY_KEY[k].label for k in (better, worse) if k in silent]
        if untrained:
            verdict = f"not tested: {' and '.join(untrained)} predicted no tumour"
        elif math.isfinite(p) and p < 0.05:
            verdict = "holds" if diff > 0 else "reversed"
        else:
            verdict = "not shown at this sample size"
        rows.append({"paper": paper, "claim": f"{b.label} > {w.label}", "where": where,
                     "reported DSC": f"{rep_b:.3f} vs {rep_w:.3f}" if math.isfinite(rep_w) else f"{rep_b:.3f}",
                     "reported Δ": f"{rep_b - rep_w:+.3f}" if math.isfinite(rep_b - rep_w) else "n/a",
                     "common protocol DSC": f"{t['mean_a']:.3f} vs {t['mean_b']:.3f}",
                     "common Δ": f"{diff:+.3f}", "p (Wilcoxon)": f"{p:.3g}", "n": int(t["n"]),
                     "verdict": verdict})
    return pd.DataFrame(rows)


#: Each paper's proposed method in the leaderboard.
PROPOSED = {"li2018": "li2018_cnn", "xue2020": "deeplab_ct", "luo2020": "luo_ours_ct", "guo2021": "cscn",
            "chen2020": "mmfnet"}


def headline_table(track: Track) -> pd.DataFrame:
    """Each paper's proposed method: reported DSC (its own data) and the common protocol's mean DSC
    with 95% CI (phantom), side by side."""
    s = summary(track).set_index(["method", "metric"])
    rows = []
    for paper, key in PROPOSED.items():
        m = BY_KEY[key]
        if (key, "dice") not in s.index:
            continue
        r = s.loc[(key, "dice")]
        rows.append({"paper": paper, "method": m.label,
                     "reported DSC": _reported_dsc(paper, m.reported),
                     "reported where": m.reported[0] if m.reported else "",
                     "common protocol DSC [95% CI]": _fmt_ci(r["mean"], r["ci_low"], r["ci_high"], 3)})
    return pd.DataFrame(rows)


def reading(track: Track) -> str:
    """A few sentences on the run, computed from it: the best and worst method, the spread, how each
    paper's method fared against its baseline and how many claims held."""
    s = summary(track)
    d = s[s["metric"] == "dice"].set_index("method")["mean"].sort_values(ascending=False)
    best, worst = d.index[0], d.index[-1]
    lines = [f"On {len(track.test)} test patients ({track.data_label}), {BY_KEY[best].label} had the highest mean "
             f"DSC ({d.iloc[0]:.3f}) and {BY_KEY[worst].label} the lowest ({d.iloc[-1]:.3f})."]
    better = worse = same = 0
    for m in track.methods:
        p = paired_vs_baseline(track, m)
        if p is None:
            continue
        if math.isfinite(p["p_wilcoxon"]) and p["p_wilcoxon"] < 0.05:
            better += p["mean_diff"] > 0
            worse += p["mean_diff"] < 0
        else:
            same += 1
    lines.append(f"Against the U-Net that sees the same images, {better} method(s) were better, {worse} worse "
                 f"and {same} not distinguishable (Wilcoxon p < 0.05).")
    empty = silent_methods(track)
    silent = [BY_KEY[k].label for k in track.table["method"].unique() if k in empty]
    if silent:
        lines.append(f"{', '.join(silent)} predicted no tumour on any test patient: "
                     "not trained enough at this budget, which says nothing about the architecture.")
    c = claims_table(track)
    if len(c):
        held, rev = int((c["verdict"] == "holds").sum()), int((c["verdict"] == "reversed").sum())
        untested = int(c["verdict"].str.startswith("not tested").sum())
        lines.append(f"Testable claims of the papers: {len(c)}; held: {held}, reversed: {rev}, "
                     f"not shown at this sample size: {len(c) - held - rev - untested}, "
                     f"not tested (a method predicted nothing): {untested}.")
    return " ".join(lines)


def timing_table(track: Track) -> pd.DataFrame:
    """Per method: parameters, iterations, training seconds, the whole job's seconds (training,
    inference and scoring; CSCN's job includes BUNet)."""
    f = track.facts.copy()
    f["method"] = f["method"].map(lambda k: BY_KEY[k].label)
    f["train_seconds"] = f["train_seconds"].round(1)
    f["job_seconds"] = f["job_seconds"].round(1)
    return f[["method", "parameters", "iterations", "status", "final_loss", "train_seconds", "job_seconds"]]


# ----------------------------------------------------------------------------------- figures
_PALETTE = {"baseline": "#7f7f7f", "li2018": "#1f77b4", "xue2020": "#ff7f0e", "luo2020": "#2ca02c",
            "guo2021": "#d62728", "chen2020": "#9467bd"}


def fig_leaderboard(track: Track, metrics: Sequence[str] = ("dice", "hd95")):
    """Per-patient dots and mean with 95% bootstrap CI per method, one panel per metric."""
    import matplotlib.pyplot as plt

    s = summary(track)
    order = (s[s["metric"] == "dice"].sort_values("mean")["method"].tolist())
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 0.42 * len(order) + 1.4),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, key in enumerate(order):
            m = BY_KEY[key]
            v = pd.to_numeric(track.table.loc[track.table["method"] == key, metric], errors="coerce")
            v = v[np.isfinite(v)]
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(v))
            color = _PALETTE.get(m.paper, "k")
            ax.scatter(v, i + jitter, s=10, color=color, alpha=0.45, lw=0)
            r = s[(s["method"] == key) & (s["metric"] == metric)].iloc[0]
            if math.isfinite(r["mean"]):
                ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]],
                            fmt="o", color=color, capsize=3, ms=5)
        ax.set_yticks(range(len(order)))
        ax.set_yticklabels([BY_KEY[k].label for k in order], fontsize=8)
        ax.set_xlabel(METRIC_LABELS[metric])
        ax.grid(axis="x", alpha=0.3)
        if metric == "dice":
            ax.set_xlim(-0.02, 1.0)
    axes[0][0].set_title(f"{track.data_label}: {len(track.test)} test patients, {track.structure}",
                         fontsize=9, loc="left")
    fig.tight_layout()
    return fig


def fig_cases(track: Track, n: int = 3, keys: Sequence[str] | None = None):
    """The tumour's largest axial slice of ``n`` test patients (lowest, median, highest mean DSC) with
    the reference (white) and each method's contour."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from npcrepro.datasets import open_dataset
    from npcrepro.engine import RunFolder

    ds = open_dataset(track.data)
    rf = RunFolder(track.run)
    keys = list(keys or [m.key for m in track.methods if m.paper != "baseline"][:6])
    per_case = track.table.groupby("case")["dice"].mean().sort_values()
    picks = list(dict.fromkeys([per_case.index[0], per_case.index[len(per_case) // 2], per_case.index[-1]]))[:n]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.4), squeeze=False)
    for ax, name in zip(axes[0], picks):
        m0 = next(m for m in track.methods if m.key == keys[0])
        case = ds.load(name, channels=[m0.channels[-1]])
        ref = case.labels.get(track.structure, np.zeros(case.shape, bool))
        z = int(np.argmax(ref.sum(axis=(1, 2))))
        img = case.images[m0.channels[-1]][z]
        ys, xs = np.nonzero(ref[z]) if ref[z].any() else (np.array([0, img.shape[0] - 1]), np.array([0, img.shape[1] - 1]))
        pad = 18
        box = (slice(max(0, ys.min() - pad), ys.max() + pad), slice(max(0, xs.min() - pad), xs.max() + pad))
        lo, hi = np.percentile(img[box], [1, 99])
        ax.imshow(img[box], cmap="gray", vmin=lo, vmax=hi)
        ax.contour(ref[z][box], levels=[0.5], colors="white", linewidths=1.6)
        for k, key in enumerate(keys):
            p = rf.path / "predictions" / name / f"{key}.nii.gz"
            if p.exists():
                pred = rf.read_prediction(name, key)[z][box]
                if pred.any():
                    ax.contour(pred, levels=[0.5], colors=[cmap(k)], linewidths=1.0)
        ax.set_title(f"{name}: mean DSC {per_case[name]:.2f} (slice {z})", fontsize=9)
        ax.axis("off")
    handles = [Line2D([], [], color="white", lw=1.6, label="reference")] + [
        Line2D([], [], color=cmap(k), lw=1.0, label=BY_KEY[key].label) for k, key in enumerate(keys)]
    leg = fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=8,
                     facecolor="0.2", labelcolor="white")
    leg.get_frame().set_alpha(0.9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return fig
