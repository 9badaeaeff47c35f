"""What a profile costs on a GPU, estimated on the CPU and measured where a device calibrated it:
``npcrepro plan --profile gpu``.

The estimate is built from a **dry run** of each chapter at the profile
(:func:`npcrepro.chapters.dry_run`): the profile's full sizes (images, crops, patches, phantom grid,
networks, batch sizes) on three patients, every stage of every network trained for two iterations.
The dry run measures the first iteration of every stage on the CPU (``plan.json`` in each job
folder, written by the Trainer's ``probe``):

* FLOPs of one forward and backward pass at the profile's batch size
  (:class:`torch.utils.flop_counter.FlopCounterMode`: convolutions and matrix products, 2 per
  multiply-add);
* the bytes of the tensors autograd saves for the backward pass
  (:func:`torch.autograd.graph.saved_tensors_hooks`, each storage once), of the parameters, their
  gradients, the optimiser state and the input batch. Their sum is the estimate of peak GPU memory
  of that network (fp32; bf16 autocast keeps most saved activations in half the bytes, and the CUDA
  caching allocator and cuDNN workspaces add some).

The plan then counts what the full profile trains: each stage's budget (iterations; epochs times
iterations per epoch, the latter scaled from one training patient to the profile's training set
when the chapter derives it from the data), times the folds and seeds of each method (the chapter's
own split of ``n_cases`` patients). Hours = FLOPs / (peak dense bf16 tensor rate x
:data:`UTILISATION`): **estimates**, not measurements; inference and data preparation are left out.
Early-stopping stages count their whole budget (an upper bound). The phantom's disk is the dry run's
dataset per patient times ``n_cases``; the total adds the chapters up, because each ``n_cases``
is cached as its own cohort.

**Measured** columns come from calibrations (:mod:`npcrepro.calibration`, made by ``npcrepro bench
gpu`` on the device and committed under ``npcrepro/calibrations/<profile>/``): the same counting with
each stage's timed ms per iteration instead of FLOPs, plus the phantom, the preparation and the
prediction of every case (:func:`measured`). A row says "measured on <device>" only where that
device's calibration covers the chapter.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from npcrepro import pages
from npcrepro.errors import DataError, ParameterError

__all__ = ["GPUS", "UTILISATION", "chapter_plan", "plan", "measured", "markdown", "TRAINING_CHAPTERS"]

#: Peak dense bf16 tensor-core rates (FLOP/s) from the vendors' data sheets (without sparsity):
#: H100 SXM 989 TFLOPS, A100 312, RTX 4090 165 (fp32 accumulate), RTX 3090 71 (fp32 accumulate).
GPUS: dict[str, float] = {"H100": 989e12, "A100": 312e12, "RTX 4090 (24 GB)": 165e12,
                         "RTX 3090 (24 GB)": 71e12}

#: Assumed share of the peak rate a training loop of these networks reaches (small convolutions,
#: instance norms and data loading keep it well below the peak).
UTILISATION = 0.35

#: Chapters that train networks, in the book's order (:mod:`npcrepro.pages`).
TRAINING_CHAPTERS = pages.training()


def _newest_dry_run(out_dir: Path, profile: str, chapter: str) -> Path | None:
    base = Path(out_dir) / "dryrun" / profile / chapter
    runs = sorted((p for p in base.glob("*") if (p / "DONE").exists() and (p / "DRY_RUN").exists()),
                  key=lambda p: p.name)
    return runs[-1] if runs else None


def _jobs(chapter: str, P: Mapping[str, Any]) -> tuple[dict[str, int], int, dict[str, int]]:
    """Jobs per method at the full profile, training patients of the first fold, and test cases
    predicted per method (over its folds and seeds)."""
    from npcrepro.chapters import module
    from npcrepro.engine.experiment import load_chapter

    ch = load_chapter(module(chapter))
    names = [f"case_{i:04d}" for i in range(int(P.get("n_cases") or 8))]
    folds = ch.folds(names, P)
    seeds = len(ch.seeds(P))
    methods = ch.methods(P)
    jobs = {m.name: len(folds[: m.folds]) * seeds for m in methods}
    tests = {m.name: sum(len(f.test) for f in folds[: m.folds]) * seeds for m in methods}
    return jobs, len(folds[0].train), tests


def measured(chapter: str, cal: Mapping[str, Any], P: Mapping[str, Any]) -> dict | None:
    """Seconds of ``chapter`` at the full profile ``P`` on the device of calibration ``cal``
    (:mod:`npcrepro.calibration`), or None where it does not cover the chapter:

    * ``train``: each stage's ms per iteration (timed) x its full budget x the method's jobs (a stage
      too short to time takes its network's mean over the timed ones, or its FLOPs at the chapter's
      measured ms per FLOP);
    * ``infer``: seconds per predicted case x the test cases of every job, twice where the half-budget
      check predicts them again;
    * ``prepare``: seconds per case x the cases, once per job process (each keeps its prepared cases);
    * ``generate``: the phantom's seconds per case x the cases, over the processes that make them
      (one per core of the calibrated machine at the gpu preset, one at smaller ones);
    * ``total``: generate + (prepare, train and infer over the jobs that run at once: the profile's
      ``workers`` on a CPU; one on a GPU, which parallel jobs share).
    """
    rec = cal.get("chapters", {}).get(chapter)
    if rec is None:
        return None
    jobs, n_train, tests = _jobs(chapter, P)
    all_rows = [r for rows in rec["methods"].values() for r in rows]
    timed_rows = [r for r in all_rows if r.get("ms_per_iteration") is not None]
    if not timed_rows:
        return None
    # a stage too short to time (one that stopped early): its network's mean, else its FLOPs at the
    # chapter's measured ms per FLOP
    ms_per_flop = sum(r["ms_per_iteration"] for r in timed_rows) / max(1.0, sum(float(r["flops"]) for r in timed_rows))
    train = 0.0
    for method, rows in rec["methods"].items():
        for r in rows:
            ms = r.get("ms_per_iteration")
            if ms is None:
                same = [t["ms_per_iteration"] for t in timed_rows if t["network"] == r["network"]]
                ms = sum(same) / len(same) if same else float(r["flops"]) * ms_per_flop
            train += ms / 1000 * _full_budget(r, n_train, 1) * jobs.get(method, 1)
    half = 2 if P.get("half_budget_check", True) else 1
    infer = (rec.get("infer_s_per_case") or 0.0) * sum(tests.get(m, 0) for m in rec["methods"]) * half
    cuda = cal["device"].get("kind") == "cuda"
    at_once = 1 if cuda else max(1, int(P.get("workers") or 1))
    n_cases = int(P.get("n_cases") or 0)
    prepare = (rec.get("prepare_s_per_case") or 0.0) * n_cases * min(at_once, max(1, sum(jobs.values())))
    from npcrepro import phantom
    from npcrepro.phantom.make import PARALLEL_VOXELS
    from npcrepro.profiles import PHANTOM_PRESETS

    generate = 0.0
    if P.get("data", "phantom") == "phantom" and n_cases:
        shape = phantom.PRESETS[PHANTOM_PRESETS.get(P["profile"], P["profile"])].shape
        makers = min(int(cal["device"].get("cores") or 1), n_cases) if math.prod(shape) >= PARALLEL_VOXELS else 1
        generate = float(cal.get("phantom_s_per_case") or 0.0) * n_cases / makers
    total = generate + (prepare + train + infer) / at_once
    return {"train": train, "infer": infer, "prepare": prepare, "generate": generate, "total": total}


def _full_budget(row: Mapping[str, Any], n_train_full: int, n_train_dry: int) -> int:
    if row.get("iterations") is not None:
        return int(row["iterations"])
    ipe = int(row["iterations_per_epoch"])
    if not row.get("iterations_per_epoch_given"):
        items = int(row["train_items"]) * n_train_full / max(1, n_train_dry)
        ipe = max(1, int(items // int(row["batch_size"])))
    return int(row["epochs"]) * ipe


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def chapter_plan(chapter: str, profile: str = "gpu", *, out_dir: str | Path = "runs",
                 run_missing: bool = True, progress: bool = False, calibrations: Sequence[Mapping] = ()) -> dict:
    """The plan of one chapter at ``profile`` (see the module docstring), from its newest dry run in
    ``<out_dir>/dryrun/<profile>/<chapter>/`` (made first when missing and ``run_missing``)."""
    from npcrepro.profiles import resolve

    if chapter not in TRAINING_CHAPTERS:
        raise ParameterError(f"unknown chapter {chapter!r} (valid: {', '.join(TRAINING_CHAPTERS)})")
    out_dir = Path(out_dir).absolute()
    run = _newest_dry_run(out_dir, profile, chapter)
    if run is None:
        if not run_missing:
            raise DataError(f"no dry run of {chapter} at {profile} under {out_dir / 'dryrun'} (run "
                            f"`npcrepro run {chapter} --profile {profile} --dry-run`)")
        from npcrepro.chapters import dry_run

        dry_run(chapter, profile, out_dir=str(out_dir), progress=progress, mode="plan")
        run = _newest_dry_run(out_dir, profile, chapter)
    info = json.loads((run / "run.json").read_text(encoding="utf-8"))
    dry = json.loads((run / "params.json").read_text(encoding="utf-8"))
    splits = json.loads((run / "splits.json").read_text(encoding="utf-8"))
    first = splits[0] if isinstance(splits, list) else splits.get("folds", [{}])[0]
    n_train_dry = len(first.get("train", [])) or 1
    P = resolve(chapter, profile=profile)
    jobs, n_train_full, _ = _jobs(chapter, P)
    flops = 0.0
    iterations = 0
    peak, peak_net = 0, ""
    networks = 0
    for m in info["methods"]:
        rows = []
        for f in sorted((run / m["name"]).rglob("plan.json")):
            rows += json.loads(f.read_text(encoding="utf-8"))
        if not rows:
            continue
        networks += len({r["network"] for r in rows})
        n_jobs = jobs.get(m["name"], 1)
        for r in rows:
            budget = _full_budget(r, n_train_full, n_train_dry)
            flops += float(r["flops"]) * budget * n_jobs
            iterations += budget * n_jobs
            mem = sum(int(r[k]) for k in ("activation_bytes", "parameter_bytes", "gradient_bytes",
                                          "optimizer_bytes", "input_bytes"))
            if mem > peak:
                peak, peak_net = mem, f"{r['network']} ({r['stage']}, batch {r['batch']})"
    disk = None
    data = Path(info.get("data") or dry.get("data", ""))
    if (data / "dataset.json").exists():
        n_have = len(list((data / "imagesTr").glob("*_0000.nii.gz"))) or int(dry.get("n_cases") or 1)
        disk = _dir_bytes(data) / n_have * int(P.get("n_cases") or n_have)
    hours = {g: flops / (rate * UTILISATION) / 3600 for g, rate in GPUS.items()}
    return {"chapter": chapter, "profile": profile, "dry_run": str(run), "networks": networks,
            "jobs": sum(jobs.values()), "iterations": iterations, "pflop": flops / 1e15,
            "hours": hours, "peak_gib": peak / 2**30, "peak_network": peak_net,
            "disk_gb": disk / 1e9 if disk is not None else None,
            "dry_run_seconds": info.get("seconds"),
            "measured": {c["device"]["device"]: measured(chapter, c, P) for c in calibrations}}


def plan(profile: str = "gpu", chapters: Sequence[str] | None = None, **kw) -> list[dict]:
    """:func:`chapter_plan` of every training chapter (or ``chapters``), plus a "total" row."""
    rows = [chapter_plan(c, profile, **kw) for c in (chapters or TRAINING_CHAPTERS)]
    devices = list(dict.fromkeys(d for r in rows for d in r["measured"]))
    total = {"chapter": "total", "profile": profile, "networks": sum(r["networks"] for r in rows),
             "jobs": sum(r["jobs"] for r in rows), "iterations": sum(r["iterations"] for r in rows),
             "pflop": sum(r["pflop"] for r in rows),
             "hours": {g: sum(r["hours"][g] for r in rows) for g in GPUS},
             "peak_gib": max(r["peak_gib"] for r in rows), "peak_network": "",
             # each chapter's cohort is its own cache folder today (one per n_cases), so they add up
             "disk_gb": sum(r["disk_gb"] or 0 for r in rows) or None,
             "dry_run_seconds": sum(r["dry_run_seconds"] or 0 for r in rows),
             "measured": {d: _sum([r["measured"].get(d) for r in rows]) for d in devices}}
    return rows + [total]


def _sum(parts: Sequence[Mapping | None]) -> dict | None:
    """The sum of measured rows, or None where one chapter is not measured."""
    if not parts or any(p is None for p in parts):
        return None
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def _duration(seconds: float) -> str:
    """A measured time: seconds under a minute, minutes to one decimal under an hour, else hours."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else _hours(seconds / 3600)


def _hours(h: float) -> str:
    if h < 1:
        return "<1 min" if h * 60 < 0.5 else f"{h * 60:.0f} min"
    return f"{h:.1f} h" if h < 100 else f"{h:,.0f} h"


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The plan as a Markdown table (every number an estimate; see the module docstring)."""
    gpus = list(GPUS)
    devices = list(dict.fromkeys(d for r in rows for d in r.get("measured", {})))
    head = (["chapter", "networks", "training jobs", "iterations", "PFLOP"]
            + [f"{g} (est., training)" for g in gpus] + [f"measured on {d} (all)" for d in devices]
            + ["peak GPU memory (est., fp32)", "phantom disk"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['chapter']}`" if r["chapter"] != "total" else "**total**", str(r["networks"]),
                 str(r["jobs"]), f"{r['iterations']:,}", f"{r['pflop']:,.1f}"]
        cells += [_hours(r["hours"][g]) for g in gpus]
        for d in devices:
            m = r.get("measured", {}).get(d)
            cells.append(_duration(m["total"]) if m else "not measured")
        cells += [f"{r['peak_gib']:.1f} GiB", f"{r['disk_gb']:.1f} GB" if r.get("disk_gb") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def nnunet_note(profile: str) -> str:
    """What the plan leaves out of the leaderboard at ``profile``: its nnU-Net rows ("" where none)."""
    from npcrepro.profiles import parameters, profiles

    lb = parameters("leaderboard", profile) if profile in profiles("leaderboard") else {}
    if not lb.get("nnunet"):
        return ""
    return (f"Not counted: the leaderboard's nnU-Net rows ({len(lb['nnunet'])} input sets x "
            f"{len(lb['nnunet_configurations'])} configuration(s), {lb['nnunet_epochs']} epochs x "
            f"{lb['nnunet_iterations']} iterations each, with nnU-Net's own preprocessing and validation).")


def main(profile: str = "gpu", chapters: Sequence[str] | None = None, *, out_dir: str | Path = "runs",
         run_missing: bool = True, as_json: bool = False, calibrations: str | Path | None = None) -> str:
    from npcrepro import calibration

    t0 = time.perf_counter()
    cals = calibration.load_all(profile) + (calibration.load_all(profile, calibrations) if calibrations else [])
    rows = plan(profile, chapters, out_dir=out_dir, run_missing=run_missing, calibrations=cals)
    if as_json:
        return json.dumps(rows, indent=1)
    note = (f"Estimates for profile {profile!r}: training FLOPs measured per iteration on the CPU "
            f"(dry run), times the profile's iterations, at {UTILISATION:.0%} of each GPU's peak dense "
            f"bf16 rate (training only: no data generation, preparation or inference); peak memory = "
            f"saved activations + parameters + gradients + optimiser state + batch, fp32, of the "
            f"largest network. ({time.perf_counter() - t0:.0f} s)")
    if cals:
        note += "\n\nMeasured (`npcrepro bench gpu`): each stage's ms per iteration timed on the device " \
                "at the profile's batch, size and precision, times its budget and jobs, plus the " \
                "phantom, preparation and prediction of every case (`npcrepro.plan.measured`)."
        for c in cals:
            d = c["device"]
            m = next((r["measured"].get(d["device"]) for r in rows if r["chapter"] == "total"), None)
            parts = (f": generate {_duration(m['generate'])}, prepare {_duration(m['prepare'])}, "
                     f"train {_duration(m['train'])}, predict {_duration(m['infer'])} (summed over jobs)"
                     if m else "")
            note += (f"\n- measured on {d['device']} (torch {d['torch']}, CUDA {d['cuda'] or 'none'}, "
                     f"{d['cores']} cores, {d['date']}){parts}")
    else:
        note += (f"\n\nNo calibration for {profile!r}: run `npcrepro bench gpu` (profile gpu-lite) or "
                 f"`python benchmarks/bench_gpu.py --profile {profile}` on the device to measure it.")
    left_out = nnunet_note(profile) if "leaderboard" in (chapters or ["leaderboard"]) else ""
    if left_out:
        note += "\n\n" + left_out
    return markdown(rows) + "\n\n" + note + "\n" + "\n".join(
        f"- {r['chapter']}: largest network {r['peak_network']}" for r in rows if r.get("peak_network"))
