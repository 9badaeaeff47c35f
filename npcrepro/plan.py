"""What a profile costs on a GPU, estimated on the CPU: ``npcrepro plan --profile gpu``.

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
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from npcrepro import pages
from npcrepro.errors import DataError, ParameterError

__all__ = ["GPUS", "UTILISATION", "chapter_plan", "plan", "markdown", "TRAINING_CHAPTERS"]

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


def _jobs(chapter: str, P: Mapping[str, Any]) -> tuple[dict[str, int], int]:
    """Jobs per method at the full profile, and training patients of the first fold."""
    from npcrepro.chapters import module
    from npcrepro.engine.experiment import load_chapter

    ch = load_chapter(module(chapter))
    names = [f"case_{i:04d}" for i in range(int(P.get("n_cases") or 8))]
    folds = ch.folds(names, P)
    seeds = len(ch.seeds(P))
    return {m.name: len(folds[: m.folds]) * seeds for m in ch.methods(P)}, len(folds[0].train)


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
                 run_missing: bool = True, progress: bool = False) -> dict:
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
    jobs, n_train_full = _jobs(chapter, P)
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
            "dry_run_seconds": info.get("seconds")}


def plan(profile: str = "gpu", chapters: Sequence[str] | None = None, **kw) -> list[dict]:
    """:func:`chapter_plan` of every training chapter (or ``chapters``), plus a "total" row."""
    rows = [chapter_plan(c, profile, **kw) for c in (chapters or TRAINING_CHAPTERS)]
    total = {"chapter": "total", "profile": profile, "networks": sum(r["networks"] for r in rows),
             "jobs": sum(r["jobs"] for r in rows), "iterations": sum(r["iterations"] for r in rows),
             "pflop": sum(r["pflop"] for r in rows),
             "hours": {g: sum(r["hours"][g] for r in rows) for g in GPUS},
             "peak_gib": max(r["peak_gib"] for r in rows), "peak_network": "",
             # each chapter's cohort is its own cache folder today (one per n_cases), so they add up
             "disk_gb": sum(r["disk_gb"] or 0 for r in rows) or None, "dry_run_seconds": sum(r["dry_run_seconds"] or 0 for r in rows)}
    return rows + [total]


def _hours(h: float) -> str:
    if h < 1:
        return "<1 min" if h * 60 < 0.5 else f"{h * 60:.0f} min"
    return f"{h:.1f} h" if h < 100 else f"{h:,.0f} h"


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The plan as a Markdown table (every number an estimate; see the module docstring)."""
    gpus = list(GPUS)
    head = (["chapter", "networks", "training jobs", "iterations", "PFLOP"]
            + [f"{g} (est.)" for g in gpus] + ["peak GPU memory (est., fp32)", "phantom disk"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"`{r['chapter']}`" if r["chapter"] != "total" else "**total**", str(r["networks"]),
                 str(r["jobs"]), f"{r['iterations']:,}", f"{r['pflop']:,.1f}"]
        cells += [_hours(r["hours"][g]) for g in gpus]
        cells += [f"{r['peak_gib']:.1f} GiB", f"{r['disk_gb']:.1f} GB" if r.get("disk_gb") else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(profile: str = "gpu", chapters: Sequence[str] | None = None, *, out_dir: str | Path = "runs",
         run_missing: bool = True, as_json: bool = False) -> str:
    t0 = time.perf_counter()
    rows = plan(profile, chapters, out_dir=out_dir, run_missing=run_missing)
    if as_json:
        return json.dumps(rows, indent=1)
    note = (f"Estimates for profile {profile!r}: training FLOPs measured per iteration on the CPU "
            f"(dry run), times the profile's iterations, at {UTILISATION:.0%} of each GPU's peak dense "
            f"bf16 rate; peak memory = saved activations + parameters + gradients + optimiser state "
            f"+ batch, fp32, of the largest network. ({time.perf_counter() - t0:.0f} s)")
    return markdown(rows) + "\n\n" + note + "\n" + "\n".join(
        f"- {r['chapter']}: largest network {r['peak_network']}" for r in rows if r.get("peak_network"))
