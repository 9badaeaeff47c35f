"""Calibrations of the plan: what a profile's chapters cost, measured on one device.

``npcrepro bench gpu`` (``benchmarks/bench_gpu.py``) runs a **timed dry run** of each training chapter
at a profile on the device at hand (``dry_run="time"``: the profile's full sizes, three patients,
every stage of every network trained :data:`~npcrepro.engine.chapter.TIMED_ITERATIONS` iterations and
timed after a warm-up, one full-size prediction per method) and times the phantom of the profile's
preset. :func:`from_run` reads one chapter's run folder into a calibration record:

* per method, the probe's rows (``plan.json``) with ``ms_per_iteration`` (batch made and step, at the
  profile's batch and size, the chapter's precision);
* ``prepare_s_per_case``: reading and preparing one case (the job's ``prepare_seconds`` over its
  cases);
* ``infer_s_per_case``: predicting one test case (the jobs' ``infer_seconds`` over their cases);

and :func:`save` writes them with the device's name, torch and CUDA versions and core count to
``npcrepro/calibrations/<profile>/<device>.json``, which :mod:`npcrepro.plan` reads (committed, so
that a plan made anywhere can say "measured on <device>").
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping

from npcrepro.errors import DataError

__all__ = ["CALIBRATIONS", "FORMAT", "device_info", "from_run", "save", "load", "load_all", "slug"]

#: Where committed calibrations live: ``<profile>/<device slug>.json``.
CALIBRATIONS = Path(__file__).resolve().parent / "calibrations"
FORMAT = 1


def device_info(device: str = "cpu") -> dict:
    """Name, kind, torch and CUDA versions and core count of ``device`` ("cpu" or "cuda[:i]")."""
    import torch

    from npcrepro.engine.runs import cpu_model

    cuda = str(device).startswith("cuda")
    name = torch.cuda.get_device_name(torch.device(device)) if cuda else cpu_model() or "CPU"
    return {"device": name, "kind": "cuda" if cuda else "cpu", "torch": torch.__version__.split("+")[0],
            "cuda": torch.version.cuda if cuda else None, "cores": os.cpu_count() or 1,
            "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def slug(name: str) -> str:
    """A file name for a device name: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def from_run(path: str | os.PathLike) -> dict:
    """The calibration record of one timed dry run's folder (see the module docstring)."""
    import pandas as pd

    root = Path(path)
    info = json.loads((root / "run.json").read_text(encoding="utf-8"))
    params = json.loads((root / "params.json").read_text(encoding="utf-8"))
    if params.get("dry_run") != "time":
        raise DataError(f"{root}: not a timed dry run (dry_run={params.get('dry_run')!r}); make one with "
                        f"`npcrepro bench gpu`")
    methods = {}
    for m in info["methods"]:
        rows = []
        for f in sorted((root / m["name"]).rglob("plan.json")):
            rows += json.loads(f.read_text(encoding="utf-8"))
        methods[m["name"]] = rows
    training = pd.read_csv(root / "training.csv")

    def per_case(seconds: str, cases: str) -> float | None:
        if not {seconds, cases} <= set(training.columns) or not training[cases].sum():
            return None
        return float(training[seconds].sum() / training[cases].sum())

    prepare, infer = per_case("prepare_seconds", "prepared_cases"), per_case("infer_seconds", "inferred_cases")
    return {"chapter": info["chapter"], "methods": methods, "prepare_s_per_case": prepare,
            "infer_s_per_case": infer, "dry_run_seconds": info.get("seconds")}


def save(calibration: Mapping[str, Any], folder: str | os.PathLike | None = None) -> Path:
    """Write ``calibration`` (``profile``, ``device`` info, ``chapters``, ``phantom_s_per_case``) to
    ``<folder>/<profile>/<device slug>.json`` (default folder :data:`CALIBRATIONS`)."""
    folder = Path(folder) if folder is not None else CALIBRATIONS
    path = folder / calibration["profile"] / f"{slug(calibration['device']['device'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": FORMAT, **calibration}, indent=1) + "\n", encoding="utf-8")
    return path


def load(path: str | os.PathLike) -> dict:
    """One calibration file, checked: a one-line :class:`DataError` when it is not one."""
    p = Path(path)
    try:
        cal = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not a readable calibration ({exc.__class__.__name__}: {exc})") from None
    missing = [k for k in ("format", "profile", "device", "chapters") if k not in cal] if isinstance(cal, dict) \
        else ["an object"]
    if missing:
        raise DataError(f"{p}: not a calibration (missing {', '.join(missing)})")
    if cal["format"] != FORMAT:
        raise DataError(f"{p}: calibration format {cal['format']!r}, this version reads {FORMAT}")
    return cal


def load_all(profile: str, folder: str | os.PathLike | None = None) -> list[dict]:
    """Every calibration of ``profile`` under ``folder`` (default :data:`CALIBRATIONS`), by device name."""
    base = (Path(folder) if folder is not None else CALIBRATIONS) / profile
    return [load(p) for p in sorted(base.glob("*.json"))]
