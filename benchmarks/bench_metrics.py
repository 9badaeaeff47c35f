"""Speed of npcrepro's HD95 + ASSD against MONAI and medpy on a realistic CT-sized case.

A 512 x 512 x 100 (x, y, z) volume at spacing (z, y, x) = (3, 0.98, 0.98) mm holds a lesion-like
blob of 20-40 cm3 as the reference and a shifted, differently perturbed copy as the prediction.
Timed:

* ours, as two public calls: ``hausdorff(percentile=95)`` + ``assd``;
* ours, shared: one ``surface_distances`` pass giving both;
* MONAI: ``compute_hausdorff_distance(percentile=95)`` + ``compute_average_surface_distance
  (symmetric=True)`` (the two calls a MONAI user makes);
* medpy: ``hd95`` + ``assd`` (slow: timed once).

Values are checked against MONAI: HD95 directly, ASSD against the mean of MONAI's two directed
average surface distances (MONAI's ``symmetric=True`` pools both directions, a different mean).

Run ``python benchmarks/bench_metrics.py`` (``--quick`` for a smaller volume and no medpy), or
import and call :func:`main`.
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy import ndimage

from npcrepro import metrics

SPACING = (3.0, 0.98, 0.98)


def lesion_pair(
    shape: tuple[int, int, int] = (100, 512, 512),
    spacing: tuple[float, float, float] = SPACING,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and prediction masks of a lobulated ~30 cm3 lesion, shape ``shape`` (z, y, x).

    The reference is an ellipsoid (semi-axes 15, 20, 25 mm along z, y, x) whose radius is
    modulated by a smoothed random field; the prediction is another such lesion shifted by
    (1, 3, -2) voxels with its own perturbation and a small false-positive island.
    """
    rng = np.random.default_rng(seed)
    sp = np.asarray(spacing)
    semi = np.array([15.0, 20.0, 25.0])
    half = np.ceil(semi * 1.5 / sp).astype(int)
    centre = np.array(shape) // 2

    def one(offset: np.ndarray, sub_seed: int) -> np.ndarray:
        r = np.random.default_rng(sub_seed)
        box = tuple(slice(c + o - h, c + o + h) for c, o, h in zip(centre, offset, half))
        grid = np.meshgrid(*[(np.arange(2 * h) - h + 0.5) * s for h, s in zip(half, sp)], indexing="ij")
        rad = np.sqrt(sum((g / a) ** 2 for g, a in zip(grid, semi)))
        noise = ndimage.gaussian_filter(r.standard_normal(rad.shape), sigma=(1.5, 5, 5))
        noise /= noise.std()
        out = np.zeros(shape, dtype=bool)
        out[box] = rad < 1.0 + 0.12 * noise
        return out

    ref = one(np.zeros(3, dtype=int), int(rng.integers(1 << 30)))
    pred = one(np.array([1, 3, -2]), int(rng.integers(1 << 30)))
    z, y, x = centre
    pred[z - 2 : z + 1, y + 60 : y + 66, x - 80 : x - 74] = True  # false-positive island
    return pred, ref


def _best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(quick: bool = False) -> dict:
    """Run the benchmark, print a summary and return the numbers.

    Parameters
    ----------
    quick : bool, default False
        Use a 40 x 256 x 256 volume, fewer repeats and skip medpy.

    Returns
    -------
    dict
        Times in seconds (``ours_s``, ``ours_shared_s``, ``monai_s``, ``medpy_s`` or None),
        speed-ups (``speedup_monai``, ``speedup_medpy``), values (``hd95``, ``assd``,
        ``monai_hd95``, ``monai_assd``, ``medpy_hd95``) and ``agree_monai`` (relative
        difference <= 1e-5; MONAI computes in float32).
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    shape = (40, 256, 256) if quick else (100, 512, 512)
    repeat = 3 if quick else 5
    pred, ref = lesion_pair(shape)
    sp = SPACING
    res: dict = {
        "shape": shape,
        "spacing": sp,
        "volume_ref_cm3": metrics.volume(ref, sp),
        "volume_pred_cm3": metrics.volume(pred, sp),
    }

    def ours():
        return metrics.hausdorff(pred, ref, sp, 95), metrics.assd(pred, ref, sp)

    def ours_shared():
        d_pr, d_rp = metrics.surface_distances(pred, ref, sp)
        return (
            max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)),
            0.5 * (d_pr.mean() + d_rp.mean()),
        )

    tp = torch.from_numpy(pred)[None, None]
    tr = torch.from_numpy(ref)[None, None]

    def monai():
        h = compute_hausdorff_distance(tp, tr, include_background=True, percentile=95, spacing=list(sp))
        a = compute_average_surface_distance(tp, tr, include_background=True, symmetric=True, spacing=list(sp))
        return h.item(), a.item()

    warnings.filterwarnings("ignore", module="monai")
    res["hd95"], res["assd"] = ours()
    ours_shared()
    monai()
    res["ours_s"] = _best_of(ours, repeat)
    res["ours_shared_s"] = _best_of(ours_shared, repeat)
    res["monai_s"] = _best_of(monai, max(1, repeat - 2))
    res["monai_hd95"] = compute_hausdorff_distance(
        tp, tr, include_background=True, percentile=95, spacing=list(sp)
    ).item()
    res["monai_assd"] = 0.5 * (
        compute_average_surface_distance(tp, tr, include_background=True, spacing=list(sp)).item()
        + compute_average_surface_distance(tr, tp, include_background=True, spacing=list(sp)).item()
    )
    res["agree_monai"] = bool(
        abs(res["hd95"] - res["monai_hd95"]) <= 1e-5 * res["monai_hd95"]
        and abs(res["assd"] - res["monai_assd"]) <= 1e-5 * res["monai_assd"]
    )
    res["speedup_monai"] = res["monai_s"] / res["ours_s"]
    res["medpy_s"] = res["medpy_hd95"] = res["speedup_medpy"] = None
    if not quick:
        try:
            from medpy.metric import binary as mb
        except ImportError:  # pragma: no cover - optional reference library
            mb = None
        if mb is not None:
            t0 = time.perf_counter()
            res["medpy_hd95"] = float(mb.hd95(pred, ref, voxelspacing=sp))
            mb.assd(pred, ref, voxelspacing=sp)
            res["medpy_s"] = time.perf_counter() - t0
            res["speedup_medpy"] = res["medpy_s"] / res["ours_s"]

    print(f"volume {shape} (z, y, x) at {sp} mm; ref {res['volume_ref_cm3']:.1f} cm3, "
          f"pred {res['volume_pred_cm3']:.1f} cm3")
    print(f"ours   HD95 {res['hd95']:.6f} mm  ASSD {res['assd']:.6f} mm")
    print(f"MONAI  HD95 {res['monai_hd95']:.6f} mm  ASSD {res['monai_assd']:.6f} mm  "
          f"agree: {res['agree_monai']}")
    if res["medpy_hd95"] is not None:
        print(f"medpy  HD95 {res['medpy_hd95']:.6f} mm (pooled directions, a different HD95)")
    print(f"time ours (hausdorff + assd) {res['ours_s'] * 1e3:.1f} ms, "
          f"shared pass {res['ours_shared_s'] * 1e3:.1f} ms")
    print(f"time MONAI {res['monai_s'] * 1e3:.1f} ms  -> x{res['speedup_monai']:.1f}")
    if res["medpy_s"] is not None:
        print(f"time medpy {res['medpy_s'] * 1e3:.0f} ms  -> x{res['speedup_medpy']:.0f}")
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small volume, no medpy")
    main(quick=ap.parse_args().quick)
