"""Stability benchmark: do the chapters' numbers change with what differs between two machines?

    npcrepro bench stability [--quick]          # the leaderboard at cpu (--quick: at smoke, 2 methods)
    python benchmarks/bench_stability.py --profile cpu --chapters leaderboard li2018 xue2020 ... [--json f]
    python benchmarks/bench_stability.py --against runs --chapters ...   # reuse the book's runs
    python benchmarks/bench_stability.py --environments "1 thread" "default kernels"
    python benchmarks/bench_stability.py --methods unet3d_cet1 mmfnet     # some leaderboard methods

Runs each chapter's experiment (:func:`npcrepro.chapters.run`) once per environment of
:data:`ENVIRONMENTS`, on the same data, split and seeds, each in its own process (as many jobs at once
as the chapter's ``workers`` and the cores allow: :func:`job_workers`):

* ``1 thread`` / ``2 threads``: torch on 1 or 2 threads per job, the same arithmetic summed in
  another order;
* ``default kernels``: 1 thread with ``ATEN_CPU_CAPABILITY=default``, torch's plain C++ kernels
  instead of the AVX2/AVX-512 ones this CPU would pick (another machine's kernel choice);
* ``AVX2 machine``: 1 thread with torch's own kernels (``ATEN_CPU_CAPABILITY``) and oneDNN's
  convolutions (``ONEDNN_MAX_CPU_ISA``) both held to AVX2: what a machine without AVX-512 runs. On an
  AVX2 machine it is the same as ``1 thread``;
* ``jobs reversed``: 1 thread with the jobs started in the reverse order (``NPCREPRO_JOB_ORDER``).

Prints per chapter and method: the mean DSC in each environment, the largest difference between two
environments, the largest spread between the seeds of one environment, and the largest fall of one
seed from half to full budget (:meth:`Results.flags`). A method is stable when the environments agree
within :data:`TOLERANCE`, its seeds within :data:`SEED_SPREAD`, and no seed falls more than
:data:`~npcrepro.engine.results.COLLAPSE_DROP`. Each environment costs the chapter's training time
(the leaderboard at cpu: about 30 minutes on 2 cores, two jobs at a time).

``--against RUNS``: the ``1 thread`` run of each chapter is the newest phantom run of that chapter
under ``RUNS`` (e.g. the book's own, which trains every job on one torch thread).

``--out-dir DIR`` keeps each environment's run there, and an environment whose finished run is already
there (:func:`finished_run`: the same chapter, profile, parameters and commit, the tree unmodified) is
read back instead of trained again: a benchmark stopped midway (a full disk, a killed session)
continues with the environments it had not finished.

``--methods``: the leaderboard's methods to run (their baselines and cascade stages are added; the
other chapters run whole).

``main(quick=False, profile=None, chapters=None, out_dir=None, against=None, environments=None,
methods=None) -> dict`` returns the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from npcrepro import pages

TOLERANCE = 0.05
#: Largest spread between the seeds of one environment that counts as stable.
SEED_SPREAD = 0.10
#: Every page that trains except the template (which shows the contract, not a result).
CHAPTERS = tuple(k for k in pages.training() if k != "template")

#: Environment name -> (environment variables, torch threads per job).
ENVIRONMENTS = {
    "1 thread": ({}, 1),
    "2 threads": ({}, 2),
    "default kernels": ({"ATEN_CPU_CAPABILITY": "default"}, 1),
    "AVX2 machine": ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1),
    "jobs reversed": ({"NPCREPRO_JOB_ORDER": "reverse"}, 1),
}


def compare(runs: dict, metric: str = "dice") -> list[dict]:
    """Per method of ``runs`` (environment -> Results): the mean ``metric`` in each environment, the
    largest difference between two of them, the largest seed spread and the largest half-to-full fall
    of one seed in any of them."""
    from npcrepro.engine.results import COLLAPSE_DROP

    means = {env: r.metrics.groupby("method")[metric].mean() for env, r in runs.items()}
    methods = [m for m in next(iter(means.values())).index if all(m in v.index for v in means.values())]
    rows = []
    for m in methods:
        per_env = {env: float(v[m]) for env, v in means.items()}
        spread, drop = 0.0, float("-inf")
        for r in runs.values():
            seeds = r.metrics[r.metrics["method"] == m].groupby("seed")[metric].mean()
            spread = max(spread, float(seeds.max() - seeds.min()) if len(seeds) > 1 else 0.0)
            f = r.flags()
            drops = f[f["method"] == m]["drop"].dropna()
            drop = max(drop, float(drops.max()) if len(drops) else float("-inf"))
        diff = max(per_env.values()) - min(per_env.values())
        rows.append({"method": m, **per_env, "environments differ": diff, "seed spread": spread,
                     "largest drop": drop if drop > float("-inf") else float("nan"),
                     "stable": bool(diff <= TOLERANCE and spread <= SEED_SPREAD
                                    and not drop > COLLAPSE_DROP + 1e-9)})
    return rows


def job_workers(workers: int, threads: int, cores: int) -> int:
    """Jobs at once in an environment of ``threads`` torch threads per job: the chapter's own ``workers``
    (the book's setting), as many as fit the ``cores`` (at least one). A job's numbers do not depend on
    what runs beside it or before it (the "jobs reversed" environment checks the order)."""
    return max(1, min(int(workers), cores // max(1, threads)))


def run_chapter(chapter: str, profile: str, out_dir: str, threads: int, name: str = "", **overrides):
    """Results of ``chapter``'s experiment at ``profile`` with ``threads`` torch threads per job and
    :func:`job_workers` jobs at once, in this process (with its environment)."""
    from npcrepro import chapters, profiles

    import os

    import torch

    P = profiles.resolve(chapter, profile, out_dir=out_dir, device="cpu", **overrides)
    # chapters without a `threads` parameter take the process's (and their workers' inherited) threads
    os.environ.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    workers = job_workers(P.get("workers") or 1, threads, os.cpu_count() or 1)
    extra = {k: v for k, v in (("threads", threads), ("workers", workers)) if k in P}
    return chapters.run(P.replace(**extra), name=name or f"threads{threads}", progress=False)


def run_environment(env: str, chapter: str, profile: str, out_dir: str, **overrides):
    """Results of ``chapter`` run in a new process with environment ``env`` of :data:`ENVIRONMENTS`
    (its variables must be set before torch is imported)."""
    import os
    import subprocess

    from npcrepro.engine.results import Results

    variables, threads = ENVIRONMENTS[env]
    cmd = [sys.executable, __file__, "--one", env, "--chapters", chapter, "--profile", profile,
           "--out-dir", out_dir, "--overrides", json.dumps(overrides)]
    done = subprocess.run(cmd, env={**os.environ, **variables, "OMP_NUM_THREADS": str(threads)},
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{chapter} in environment {env!r} failed: {done.stderr.strip().splitlines()[-1:]}")
    return Results.open(done.stdout.strip().splitlines()[-1])


def finished_run(out_dir: str, chapter: str, profile: str, env: str, **overrides):
    """The newest finished run of ``chapter`` in environment ``env`` under ``out_dir`` that this checkout
    would make again: the same profile and ``overrides``, written at this commit from an unmodified
    tree (and this checkout unmodified); None otherwise."""
    from npcrepro.engine.results import find_results
    from npcrepro.engine.runs import git_revision

    here = git_revision()
    if not here.get("revision") or here.get("dirty"):
        return None
    for r in reversed(find_results(out_dir, profile, chapter)):
        if not (r.done and r.path.name.endswith("-" + env.replace(" ", "-"))):
            continue
        git = r.environment.get("git") or {}
        if git.get("revision") == here["revision"] and git.get("dirty") is False and all(
                r.params.get(k) == v for k, v in overrides.items()):
            return r
    return None


def newest_run(runs: str, chapter: str, profile: str):
    """The newest finished phantom run of ``chapter`` at ``profile`` under ``runs`` (not a dry run or a
    real-data track), or None."""
    from npcrepro.engine.results import find_results

    found = [r for r in find_results(runs, profile, chapter) if r.params.get("data", "phantom") == "phantom"
             and not any(k in r.path.name for k in ("openkbp", "real", "dryrun", "thread", "kernels", "reversed"))]
    return found[-1] if found else None


def main(quick: bool = False, profile: str | None = None, chapters=None, out_dir: str | None = None,
         against: str | None = None, environments=None, methods=None) -> dict:
    profile = profile or ("smoke" if quick else "cpu")
    chapters = list(chapters or ["leaderboard"])
    environments = list(environments or ENVIRONMENTS)
    unknown = [e for e in environments if e not in ENVIRONMENTS]
    if unknown:
        raise SystemExit(f"unknown environment(s) {unknown} (valid: {', '.join(ENVIRONMENTS)})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in chapters:
            t0 = time.perf_counter()
            some = list(methods or (["unet_cet1", "mmfnet"] if quick else []))
            kw = {"methods": some} if some and chapter == "leaderboard" else {}
            runs = {}
            for env in environments:
                old = newest_run(against, chapter, profile) if against and env == "1 thread" else None
                if against and env == "1 thread" and old is None:
                    print(f"{chapter}: no finished {profile} run under {against}; running it", flush=True)
                if old is None and out_dir:
                    old = finished_run(out_dir, chapter, profile, env, **kw)
                    if old is not None:
                        print(f"{chapter}, {env}: reusing {old.path} (finished at this commit)", flush=True)
                runs[env] = old or run_environment(env, chapter, profile, out_dir or tmp, **kw)
                print(f"{chapter}, {env}: {time.perf_counter() - t0:.0f} s", flush=True)
            rows += [{"chapter": chapter, **r} for r in compare(runs)]
    _print(rows, profile, environments)
    return {"profile": profile, "tolerance": TOLERANCE, "seed_spread": SEED_SPREAD, "environments": environments,
            "rows": rows, "max_difference": max((r["environments differ"] for r in rows), default=0.0)}


def _print(rows: list[dict], profile: str, environments) -> None:
    print(f"mean DSC per environment ({profile} profile); stable: environments within {TOLERANCE}, seeds "
          f"within {SEED_SPREAD}, no seed falling from half to full budget")
    width = max(len(e) for e in environments) + 2
    print(f"  {'chapter':<12}{'method':<16}" + "".join(f"{e:>{width}}" for e in environments)
          + f"{'env diff':>10}{'seeds':>8}{'drop':>8}  stable")
    for r in rows:
        print(f"  {r['chapter']:<12}{r['method']:<16}" + "".join(f"{r[e]:>{width}.3f}" for e in environments)
              + f"{r['environments differ']:10.3f}{r['seed spread']:8.3f}{r['largest drop']:8.3f}  "
              + ("yes" if r["stable"] else "NO"))
    if rows:
        n = sum(r["stable"] for r in rows)
        print(f"  {n}/{len(rows)} methods stable; largest difference between environments "
              f"{max(r['environments differ'] for r in rows):.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--chapters", nargs="*", default=None)
    ap.add_argument("--environments", nargs="*", default=None, help=f"of {', '.join(ENVIRONMENTS)} (default: all)")
    ap.add_argument("--out-dir", default=None, help="keep the runs here, and reuse those finished at this "
                                                    "commit (default: a temporary folder)")
    ap.add_argument("--against", default=None, help="runs folder whose newest run of each chapter is the "
                                                    "one-thread run (e.g. the book's)")
    ap.add_argument("--methods", nargs="*", default=None, help="the leaderboard's methods to run (default: all)")
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one environment, print its folder
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        res = run_chapter(a.chapters[0], a.profile, a.out_dir, ENVIRONMENTS[a.one][1],
                          name=a.one.replace(" ", "-"), **json.loads(a.overrides))
        print(res.path)
        sys.exit(0)
    res = main(quick=a.quick, profile=a.profile, chapters=a.chapters, out_dir=a.out_dir, against=a.against,
               environments=a.environments, methods=a.methods)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    sys.exit(0)
