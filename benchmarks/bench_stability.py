"""Stability benchmark: do the chapters' numbers change with the machine's summation order?

    npcrepro bench stability [--quick]          # the leaderboard at cpu (--quick: at smoke, 2 methods)
    python benchmarks/bench_stability.py --profile cpu --chapters leaderboard li2018 xue2020 ... [--json f]
    python benchmarks/bench_stability.py --against runs --chapters ...   # reuse the book's runs

``--against RUNS``: the one-thread run of each chapter is the newest phantom run of that chapter under
``RUNS`` (e.g. the book's own, which trains every job on one torch thread), so only the two-thread
run is made: half the cost.

Runs each chapter's experiment (:func:`npcrepro.chapters.run`) twice on the same data, split and
seeds, once with torch on 1 thread per job and once on 2 (``threads``): the same arithmetic summed
in a different order, which is what changes between two machines. Prints, per chapter and method,
the mean DSC of both runs and their difference; a network that converged gives the same mean DSC
within :data:`TOLERANCE`, one on a knife edge does not. Each chapter costs twice its training time at
the profile, one job at a time (the leaderboard at cpu: about 25 minutes on 2 cores; every chapter in
:data:`CHAPTERS`: about an hour).

``main(quick=False, profile=None, chapters=None, out_dir=None) -> dict`` returns the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

TOLERANCE = 0.05
CHAPTERS = ("leaderboard", "li2018", "xue2020", "luo2020", "guo2021", "chen2020")


def compare(a, b, metric: str = "dice") -> list[dict]:
    """Per method of two Results: mean ``metric`` in each and their absolute difference."""
    ma, mb = a.metrics.groupby("method")[metric].mean(), b.metrics.groupby("method")[metric].mean()
    return [{"method": m, "one thread": float(ma[m]), "two threads": float(mb[m]),
             "difference": abs(float(ma[m]) - float(mb[m]))} for m in ma.index if m in mb.index]


def run_chapter(chapter: str, profile: str, out_dir: str, threads: int, **overrides):
    """Results of ``chapter``'s experiment at ``profile`` with ``threads`` torch threads per job and
    one job at a time (so the two runs differ only in the threads)."""
    from npcrepro import chapters, profiles

    import os

    import torch

    P = profiles.resolve(chapter, profile, out_dir=out_dir, device="cpu", **overrides)
    # chapters without a `threads` parameter take the process's (and their workers' inherited) threads
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    extra = {k: v for k, v in (("threads", threads), ("workers", 1)) if k in P}
    return chapters.run(P.replace(**extra), name=f"threads{threads}", progress=False)


def newest_run(runs: str, chapter: str, profile: str):
    """The newest finished phantom run of ``chapter`` at ``profile`` under ``runs`` (not a dry run or a
    real-data track), or None."""
    from npcrepro.engine.results import find_results

    found = [r for r in find_results(runs, profile, chapter) if r.params.get("data", "phantom") == "phantom"
             and not any(k in r.path.name for k in ("openkbp", "real", "dryrun", "threads2"))]
    return found[-1] if found else None


def main(quick: bool = False, profile: str | None = None, chapters=None, out_dir: str | None = None,
         against: str | None = None) -> dict:
    profile = profile or ("smoke" if quick else "cpu")
    chapters = list(chapters or ["leaderboard"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in chapters:
            t0 = time.perf_counter()
            kw = {"methods": ["unet_cet1", "mmfnet"]} if quick and chapter == "leaderboard" else {}
            one = newest_run(against, chapter, profile) if against else None
            if against and one is None:
                print(f"{chapter}: no finished {profile} run under {against}; running both", flush=True)
            one = one or run_chapter(chapter, profile, out_dir or tmp, 1, **kw)
            two = run_chapter(chapter, profile, out_dir or tmp, 2, **kw)
            for r in compare(one, two):
                rows.append({"chapter": chapter, **r, "stable": r["difference"] <= TOLERANCE})
            print(f"{chapter}: {time.perf_counter() - t0:.0f} s", flush=True)
    _print(rows, profile)
    return {"profile": profile, "tolerance": TOLERANCE, "rows": rows,
            "max_difference": max((r["difference"] for r in rows), default=0.0)}


def _print(rows: list[dict], profile: str) -> None:
    print(f"mean DSC with 1 and 2 torch threads per job ({profile} profile; stable: |difference| <= {TOLERANCE})")
    print(f"  {'chapter':<12}{'method':<16}{'1 thread':>9}{'2 threads':>10}{'|diff|':>8}  stable")
    for r in rows:
        print(f"  {r['chapter']:<12}{r['method']:<16}{r['one thread']:9.3f}{r['two threads']:10.3f}"
              f"{r['difference']:8.3f}  {'yes' if r['stable'] else 'NO'}")
    if rows:
        n = sum(r["stable"] for r in rows)
        print(f"  {n}/{len(rows)} methods stable; largest difference {max(r['difference'] for r in rows):.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--chapters", nargs="*", default=None)
    ap.add_argument("--out-dir", default=None, help="keep the two runs here (default: a temporary folder)")
    ap.add_argument("--against", default=None, help="runs folder whose newest run of each chapter is the "
                                                    "one-thread run (e.g. the book's)")
    ap.add_argument("--json", help="write the rows to this file")
    a = ap.parse_args()
    res = main(quick=a.quick, profile=a.profile, chapters=a.chapters, out_dir=a.out_dir, against=a.against)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    sys.exit(0)
