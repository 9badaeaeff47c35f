"""Speed of the NPC digital phantom, one CPU thread.

Timed, per virtual patient (anatomy, lesions, every label, the images with their noise):

* ``cpu`` preset (32 x 128 x 128), CT + T1 + T2 + CET1: the book's default cohort. Target <= 1 s.
* ``cpu`` preset with DCE-MRI as well (65 frames).
* paper-scale CT alone (``gpu`` preset: 96 x 512 x 512 at 0.98 x 0.98 x 3 mm). Target: a few s.
* writing a ``cpu`` case to disk (``generate``: 4 channels + 24 masks, gzip NIfTI: ISA-L's where the
  ``isal`` package is installed, else zlib's, as :mod:`npcrepro.gz` does).
* making and writing a ``gpu`` case (five channels, every mask), its images stored as whole numbers
  (int16, the preset's ``integer_images``) and as float32, its noise drawn from the table (the
  preset's ``table_noise``) and by numpy's normal draws, and its elementwise steps taken a cache-sized
  slab at a time (:data:`npcrepro.phantom.render.SLAB_VOXELS`) and on whole blocks.

The first case of each size is a warm-up (the process maps its memory then) and is not counted.
Wall and process-CPU seconds are both reported: on a busy machine wall time overstates the cost.

Run ``python benchmarks/bench_phantom.py`` (``--quick``: fewer cases, a smaller "paper" grid), or
import and call :func:`main`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from npcrepro import gz, phantom  # noqa: E402

TARGET_CPU_CASE_S = 1.0
TARGET_PAPER_CT_S = 5.0


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(1)


def time_cases(n: int, **params) -> dict:
    """Median wall and CPU seconds per case over ``n`` cases after one warm-up case."""
    phantom.make_case(10_000, **params)
    wall, cpu = [], []
    for i in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        phantom.make_case(i, **params)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu)), "n": n}


def time_generate(n: int, preset: str = "cpu", **params) -> dict:
    """Seconds per case of :func:`phantom.generate` (make and write), in this process, after a
    one-case warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        phantom.generate(os.path.join(tmp, "warm"), 1, 1, preset=preset, progress=False, workers=1, **params)
        t0, c0 = time.perf_counter(), time.process_time()
        phantom.generate(os.path.join(tmp, "ds"), n, 0, preset=preset, progress=False, workers=1, **params)
        return {"wall_s": (time.perf_counter() - t0) / n, "cpu_s": (time.process_time() - c0) / n,
                "n": n}


@contextlib.contextmanager
def _whole_blocks():
    """The phantom's elementwise steps on whole blocks and whole noise chunks, as before they went a
    cache-sized slab at a time (the same bytes either way)."""
    from npcrepro.phantom import render, scanners

    saved = render.SLAB_VOXELS, scanners._PIECE
    render.SLAB_VOXELS, scanners._PIECE = 1 << 40, scanners._CHUNK
    try:
        yield
    finally:
        render.SLAB_VOXELS, scanners._PIECE = saved


def main(quick: bool = False) -> dict:
    limiter = _one_thread()
    n = 2 if quick else 5
    paper = dict(preset="gpu", modalities=("CT",))
    if quick:
        paper.update(shape=(48, 512, 512))
    results = {
        "cpu_multimodal": time_cases(n, preset="cpu"),
        "cpu_with_dce": time_cases(max(1, n // 2), preset="cpu", modalities=phantom.MODALITIES),
        "paper_ct": time_cases(1 if quick else 2, **paper),
        "cpu_generate_per_case": time_generate(2 if quick else 4),
    }
    # the gpu preset's five channels, stored as the preset stores them (whole numbers, int16) and as
    # float32 (how every preset stored them before): the ratio is what integer_images buys
    big = {"shape": (48, 512, 512)} if quick else {}
    results["gpu_generate_per_case"] = time_generate(1 if quick else 2, preset="gpu", **big)
    results["gpu_generate_float_per_case"] = time_generate(1 if quick else 2, preset="gpu", integer_images=False,
                                                           **big)
    results["gpu_generate_numpy_noise_per_case"] = time_generate(1 if quick else 2, preset="gpu", table_noise=False,
                                                                 **big)
    with _whole_blocks():
        results["gpu_generate_whole_blocks_per_case"] = time_generate(1 if quick else 2, preset="gpu", **big)
    shape = paper.get("shape", phantom.PRESETS["gpu"].shape)
    print(f"phantom, one thread ({'quick' if quick else 'full'} run)")
    print(f"  cpu preset {phantom.PRESETS['cpu'].shape}, CT+T1+T2+CET1: "
          f"{results['cpu_multimodal']['wall_s']:.2f} s/case wall, "
          f"{results['cpu_multimodal']['cpu_s']:.2f} s CPU (target <= {TARGET_CPU_CASE_S:.0f} s)")
    print(f"  cpu preset with DCE (65 frames):       "
          f"{results['cpu_with_dce']['wall_s']:.2f} s/case wall, {results['cpu_with_dce']['cpu_s']:.2f} s CPU")
    print(f"  paper-scale CT {tuple(shape)}:       "
          f"{results['paper_ct']['wall_s']:.2f} s/case wall, {results['paper_ct']['cpu_s']:.2f} s CPU "
          f"(target a few s)")
    print(f"  generate (render + write), cpu preset:  "
          f"{results['cpu_generate_per_case']['wall_s']:.2f} s/case wall, "
          f"{results['cpu_generate_per_case']['cpu_s']:.2f} s CPU")
    g, f = results["gpu_generate_per_case"], results["gpu_generate_float_per_case"]
    z = results["gpu_generate_numpy_noise_per_case"]
    b = results["gpu_generate_whole_blocks_per_case"]
    results["gzip"] = gz.compressor()  # what npcrepro.io.write gzips NIfTI files with
    print(f"  generate, gpu preset {tuple(big.get('shape', phantom.PRESETS['gpu'].shape))}, five channels: "
          f"{g['wall_s']:.2f} s/case wall, {g['cpu_s']:.2f} s CPU; stored as float32 {f['cpu_s']:.2f} s CPU "
          f"({f['cpu_s'] / g['cpu_s']:.1f}x); with numpy's normal draws {z['cpu_s']:.2f} s CPU "
          f"({z['cpu_s'] / g['cpu_s']:.1f}x); each step on whole blocks, not cache-sized slabs, {b['cpu_s']:.2f} s "
          f"CPU ({b['cpu_s'] / g['cpu_s']:.1f}x); gzipped by {results['gzip']}")
    results["targets"] = {"cpu_case_s": TARGET_CPU_CASE_S, "paper_ct_s": TARGET_PAPER_CT_S}
    results["met"] = {"cpu_case": results["cpu_multimodal"]["cpu_s"] <= TARGET_CPU_CASE_S,
                      "paper_ct": results["paper_ct"]["cpu_s"] <= TARGET_PAPER_CT_S}
    if limiter is not None:
        limiter.restore_original_limits()
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer cases, a smaller paper-scale grid")
    main(quick=ap.parse_args().quick)
