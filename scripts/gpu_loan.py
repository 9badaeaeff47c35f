"""Run book chapters on a lent GPU within a deadline, and pack what a session brings back.

    python scripts/gpu_loan.py template li2018 xue2020 --profile gpu-lite --deadline 540 --out "$OUT"

Starts ``python -m npcrepro run <chapter> --profile <profile>`` for every chapter at once, each in its
own process (the book's own code path: the executed notebook lands in ``book/runs/<profile>/``), and
samples ``nvidia-smi`` every 2 s. A chapter still running at the deadline (seconds from the start of
this script) is stopped. As each chapter ends, its executed notebook, its log and the small files of
its run folders (parameters, environment, splits, metrics, curves, training records, predictions; no
checkpoints or models) are packed into ``<out>/<chapter>.tar.gz`` (predictions left out if the archive
would pass ``--max-mb``). ``<out>/loan.json`` holds each chapter's status and wall time, the GPU, torch
and CUDA, and the GPU's utilisation while each chapter ran.

A GPU session unpacks the archives at the repository root (``tar xzf <chapter>.tar.gz``) and commits
``book/runs/<profile>/<chapter>.ipynb``, its log and the run folders under
``book/runs/folders/<profile>/<chapter>/`` (the layout of ``runs/``; predictions stay out of git).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Files of a run folder never brought back (weights and optimiser state).
HEAVY = (".pt",)
#: nnU-Net's own folders in a leaderboard run (its datasets, preprocessed arrays, checkpoints): left there.
NNUNET_WORK = ("raw", "preprocessed", "results")


def gpu_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_count": os.cpu_count(),
             "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
    try:
        facts["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total",
                                          "--format=csv,noheader"], capture_output=True, text=True,
                                         timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["driver"] = None
    return facts


class Sampler(threading.Thread):
    """``nvidia-smi`` utilisation and memory every ``every`` seconds: (seconds since start, %, MiB)."""

    def __init__(self, t0: float, every: float = 2.0):
        super().__init__(daemon=True)
        self.t0, self.every, self.rows, self.stop = t0, every, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                     timeout=10).stdout.strip().splitlines()
                util, mem = (float(v) for v in out[0].split(","))
                self.rows.append((round(time.perf_counter() - self.t0, 1), util, mem))
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                pass
            self.stop.wait(self.every)

    def between(self, a: float, b: float) -> dict:
        sel = [r for r in self.rows if a <= r[0] <= b]
        if not sel:
            return {}
        return {"gpu_util_mean": round(sum(r[1] for r in sel) / len(sel), 1),
                "gpu_util_max": max(r[1] for r in sel), "gpu_mem_max_mib": max(r[2] for r in sel)}


def run_folders(profile: str, chapter: str, since: float) -> list[Path]:
    """Run folders of ``chapter`` at ``profile`` created after ``since`` (epoch seconds)."""
    base = ROOT / "runs" / profile / chapter
    return sorted(p for p in base.glob("*") if p.is_dir() and p.stat().st_mtime >= since - 5) if base.exists() else []


def first_iterations(folders: list[Path]) -> dict:
    """Seconds from each job's start to its first training step (its ``training.json``), over the
    jobs of ``folders``: the most and the median (issue 48: within 60 s on a GPU)."""
    seconds = []
    for folder in folders:
        for f in folder.glob("*/fold_*/seed_*/training.json"):
            try:
                value = json.loads(f.read_text()).get("first_iteration_seconds")
            except (OSError, ValueError):
                continue
            if isinstance(value, (int, float)):
                seconds.append(float(value))
    if not seconds:
        return {}
    return {"first_iteration_s_max": round(max(seconds), 1),
            "first_iteration_s_median": round(statistics.median(seconds), 1), "jobs_timed": len(seconds)}


def pack(chapter: str, profile: str, since: float, log: Path, out: Path, max_mb: float) -> dict:
    """``<out>/<chapter>.tar.gz``: the executed notebook, the log, the run folders' small files."""
    nb = ROOT / "book" / "runs" / profile / f"{chapter}.ipynb"
    folders = run_folders(profile, chapter, since)

    def write(with_predictions: bool) -> Path:
        path = out / f"{chapter}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            if nb.exists():
                tar.add(nb, arcname=str(nb.relative_to(ROOT)))
            tar.add(log, arcname=f"book/runs/{profile}/logs/{chapter}.log")
            for folder in folders:
                for f in sorted(folder.rglob("*")):
                    parts = f.relative_to(folder).parts
                    nnunet = parts[0] == "nnunet"
                    if not f.is_file() or f.suffix in HEAVY or (nnunet and parts[1] in NNUNET_WORK):
                        continue
                    if not with_predictions and ("predictions" in parts or nnunet and f.name.endswith(".nii.gz")):
                        continue
                    rel = f.relative_to(ROOT / "runs")
                    tar.add(f, arcname=f"book/runs/folders/{rel}")
        return path

    path = write(True)
    dropped = False
    if path.stat().st_size > max_mb * 2**20:
        path, dropped = write(False), True
    return {"archive": path.name, "mb": round(path.stat().st_size / 2**20, 2), "notebook": nb.exists(),
            "run_folders": [f.name for f in folders], "predictions_dropped": dropped}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("chapters", nargs="+")
    ap.add_argument("--profile", default="gpu-lite")
    ap.add_argument("--deadline", type=float, default=540, help="seconds from start; later chapters are stopped")
    ap.add_argument("--out", default=os.environ.get("OUT", "loan-out"))
    ap.add_argument("--max-mb", type=float, default=15.0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, wall0 = time.perf_counter(), time.time()
    summary = {"profile": a.profile, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **gpu_facts(),
               "chapters": {}}
    print(json.dumps({k: v for k, v in summary.items() if k != "chapters"}), flush=True)
    sampler = Sampler(t0)
    sampler.start()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = {}
    for ch in a.chapters:
        log = Path(f"/tmp/gpu_loan_{ch}.log")
        fh = open(log, "w")
        procs[ch] = (subprocess.Popen([sys.executable, "-m", "npcrepro", "run", ch, "--profile", a.profile],
                                      cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True), fh, log, time.perf_counter())
        print(f"[loan] {ch} started", flush=True)
    while procs:
        time.sleep(1)
        now = time.perf_counter()
        for ch in list(procs):
            proc, fh, log, start = procs[ch]
            rc = proc.poll()
            late = rc is None and now - t0 > a.deadline
            if late:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
                    proc.wait()
                rc = proc.returncode
            if rc is None:
                continue
            fh.close()
            seconds = time.perf_counter() - start
            status = "stopped at the deadline" if late else ("done" if rc == 0 else f"failed (exit {rc})")
            row = {"status": status, "seconds": round(seconds, 1), **sampler.between(start - t0, now - t0)}
            row.update(first_iterations(run_folders(a.profile, ch, wall0)))
            row.update(pack(ch, a.profile, wall0, log, out, a.max_mb))
            summary["chapters"][ch] = row
            print(f"[loan] {ch}: {status} in {seconds:.0f} s; {json.dumps(row)}", flush=True)
            print("\n".join(log.read_text(errors="replace").splitlines()[-6:]), flush=True)
            del procs[ch]
    sampler.stop.set()
    summary["gpu_samples"] = sampler.rows
    (out / "loan.json").write_text(json.dumps(summary, indent=1))
    return 0 if all(r["status"] == "done" for r in summary["chapters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
