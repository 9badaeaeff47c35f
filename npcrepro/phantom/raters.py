"""A second observer's GTVp contour, for inter-observer rows (guo2021: two physicians, DSC 0.642).

The second rater sees the same tumour but draws its edge differently:

* a systematic habit: the whole contour drawn ``bias`` mm wider or tighter (normal, sd 0.4 x jitter);
* smooth boundary disagreement: the surface pushed in and out by a smooth noise field whose
  root-mean-square displacement is ``jitter_mm`` (wavelength ~15 mm);
* slice-by-slice drawing: each slice's contour grown or shrunk by its own small offset
  (sd 0.3 x jitter);
* end slices: with probability 0.4 each, the most superior slice is left out, and one more slice is
  added below the inferior end (the end slice's contour, shrunk).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from npcrepro.phantom import sdf
from npcrepro.phantom.render import Grid, Pose, on_grid
from npcrepro.phantom.sdf import Deform, Intersect, Noise, Offset


def second_rater(rng: np.random.Generator, gtvp: sdf.Shape, body: sdf.Shape, grid: Grid,
                 pose: Pose, jitter_mm: float = 3.0) -> tuple[np.ndarray, dict]:
    """Rasterise the second rater's GTVp on ``grid``: (bool mask (z, y, x), facts)."""
    bias = float(np.clip(rng.standard_normal(), -2.5, 2.5) * 0.4 * jitter_mm)
    noise = Noise(rng, 1.0, 15.0, 8)
    rms = float(np.sqrt(np.sum(noise.weights.astype(float) ** 2) / 2.0))
    noise.weights *= np.float32(jitter_mm / rms)  # jitter_mm is the rms displacement
    noise.amplitude = float(np.abs(noise.weights).sum())
    per_slice = np.clip(rng.standard_normal(grid.shape[0]), -2.5, 2.5) * 0.3 * jitter_mm
    drop_top = bool(rng.random() < 0.4)
    add_bottom = bool(rng.random() < 0.4)
    out = np.zeros(grid.shape, bool)
    if jitter_mm <= 0:
        shape = Intersect([gtvp, body])
        per_slice[:] = 0
    else:
        shape = Intersect([Deform(Offset(gtvp, bias), noise), body])
    res = on_grid(shape, grid, pose)
    if res is None:
        return out, {}
    view, d = res
    d = d - per_slice[view.start[0]:view.stop[0], None, None].astype(np.float32)
    out[view.slices] = d <= 0
    zs = np.flatnonzero(out.any(axis=(1, 2)))
    if zs.size and jitter_mm > 0:
        if drop_top and zs.size > 2:
            out[zs[-1]] = False
        if add_bottom and zs[0] > 0:
            out[zs[0] - 1] = ndimage.binary_erosion(out[zs[0]], iterations=1)
    facts = {"bias_mm": round(bias, 3), "jitter_mm": jitter_mm, "dropped_top_slice": drop_top,
             "added_bottom_slice": add_bottom}
    return out, facts
