"""Calibrate the plan on the device at hand: what each chapter's networks, data and inference cost.

    npcrepro bench gpu [--quick]          # gpu-lite, every training chapter (--quick: smoke, template)
    python benchmarks/bench_gpu.py --profile gpu-lite --chapters li2018 template [--device cuda]
                                   [--out FOLDER] [--runs FOLDER]

On CUDA when there is one, else on this CPU. For each chapter, a **timed dry run** at the profile
(:func:`npcrepro.chapters.dry_run` with ``mode="time"``: the profile's full sizes and precision, three
patients, every stage of every network trained for 12 iterations, the iterations after the first 3
timed, one full-size prediction per method, no scoring; on a CPU each job gets its share of the cores,
as when the profile's ``workers`` jobs run at once); then the phantom of the profile's preset,
two cases made and written by one process.
Prints per network its ms per iteration and the chapter's seconds per case to prepare and to predict.
On a GPU it writes the calibration
(:mod:`npcrepro.calibration`: device name, torch, CUDA) to
``npcrepro/calibrations/<profile>/<device>.json``, which ``npcrepro plan --profile <profile>`` then
reports as measured beside its estimates: commit the file. On a CPU it writes one only with ``--out``
(``npcrepro plan --calibrations FOLDER`` reads it).

``main(quick=False, profile=None, chapters=None, device="auto", out=None, runs=None) -> dict``
returns the calibration.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def _phantom_seconds(profile: str, cases: int = 2) -> float:
    """Seconds per case to make and write the phantom of ``profile``'s preset, one process. (Not
    bench_phantom's timer: importing it sets OMP_NUM_THREADS=1 in this process, which every process
    it starts later, notebook kernels included, would inherit.)"""
    from npcrepro import phantom
    from npcrepro.profiles import PHANTOM_PRESETS

    preset = PHANTOM_PRESETS.get(profile, profile)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        phantom.generate(os.path.join(tmp, "ds"), cases, 0, preset=preset, progress=False, workers=1)
        return (time.perf_counter() - t0) / cases


def main(quick: bool = False, profile: str | None = None, chapters=None, device: str = "auto",
         out: str | None = None, runs: str | None = None) -> dict:
    import torch

    from npcrepro import calibration, chapters as chapters_mod
    from npcrepro.plan import TRAINING_CHAPTERS
    from npcrepro.profiles import resolve

    profile = profile or ("smoke" if quick else "gpu-lite")
    chapters = list(chapters or (["template"] if quick else TRAINING_CHAPTERS))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    info = calibration.device_info(device)
    print(f"calibrating {profile} on {info['device']} (torch {info['torch']}, CUDA {info['cuda']}, "
          f"{info['cores']} cores)", flush=True)
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for chapter in chapters:
            t0 = time.perf_counter()
            before = torch.get_num_threads()
            if info["kind"] == "cpu":  # each job's share of the cores, as when `workers` jobs run at once
                workers = int(resolve(chapter, profile=profile).get("workers") or 1)
                torch.set_num_threads(max(1, info["cores"] // workers))
            try:
                res = chapters_mod.dry_run(chapter, profile, mode="time", score=False, device=device,
                                           out_dir=runs or tmp)
            finally:
                torch.set_num_threads(before)
            rec = calibration.from_run(res.path)
            records[chapter] = rec
            print(f"{chapter}: {time.perf_counter() - t0:.0f} s; prepare {rec['prepare_s_per_case'] or 0:.2f} "
                  f"s/case, predict {rec['infer_s_per_case'] or 0:.2f} s/case", flush=True)
            for method, rows in rec["methods"].items():
                for r in rows:
                    ms = r.get("ms_per_iteration")
                    print(f"  {method:<16} {r['network']:<40} stage {r['stage_index']} batch {r['batch']}: "
                          + (f"{ms:.1f} ms/iteration" if ms is not None else "not timed (too few iterations)"),
                          flush=True)
    t0 = time.perf_counter()
    phantom_s = _phantom_seconds(profile)
    print(f"phantom ({profile}): {phantom_s:.2f} s per case, one process ({time.perf_counter() - t0:.0f} s)")
    cal = {"profile": profile, "device": info, "phantom_s_per_case": phantom_s, "chapters": records}
    if out is None and info["kind"] != "cuda":
        print("a CPU calibration is not written into the package (pass --out FOLDER to keep it)")
    else:
        print(f"calibration written to {calibration.save(cal, out)}")
    return cal


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke profile, template only")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--chapters", nargs="*", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="folder for the calibration (default: npcrepro/calibrations)")
    ap.add_argument("--runs", default=None, help="keep the timed dry runs here (default: a temporary folder)")
    a = ap.parse_args()
    main(quick=a.quick, profile=a.profile, chapters=a.chapters, device=a.device, out=a.out, runs=a.runs)
