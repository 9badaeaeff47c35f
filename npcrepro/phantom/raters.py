"""A second observer's GTVp contour, for inter-observer rows (guo2021: two physicians, DSC 0.642), and
several observers who disagree where the edge is faint (:func:`boundary_raters`, :func:`edge_clarity`).

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

from npcrepro.errors import DataError, ParameterError
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


# ----------------------------------------------------------------------------------- several raters
def edge_clarity(image: np.ndarray, mask: np.ndarray, spacing, *, window_mm: float = 3.0,
                 noise_sd: float | None = None) -> np.ndarray:
    """How clearly ``image`` shows the edge of ``mask`` around each voxel: the local contrast between
    the mask's inside and outside (Gaussian-weighted means over ``window_mm``, normalised
    convolution) over the image noise (``noise_sd``, default a robust estimate: 1.4826 x the median
    absolute deviation of the image minus its local mean inside the mask). A contrast-to-noise
    ratio, float32 of the image's shape; meaningful near the edge."""
    img = np.asarray(image, np.float32)
    m = np.asarray(mask, bool)
    if img.shape != m.shape:
        raise DataError(f"edge_clarity: image {img.shape} and mask {m.shape} differ in shape")
    if not m.any() or m.all():
        return np.zeros(img.shape, np.float32)
    sigma = [window_mm / float(s) for s in np.broadcast_to(np.asarray(spacing, float), (img.ndim,))]
    inside, outside = m.astype(np.float32), (~m).astype(np.float32)
    w_in, w_out = ndimage.gaussian_filter(inside, sigma), ndimage.gaussian_filter(outside, sigma)
    mean_in = ndimage.gaussian_filter(img * inside, sigma) / np.maximum(w_in, 1e-6)
    mean_out = ndimage.gaussian_filter(img * outside, sigma) / np.maximum(w_out, 1e-6)
    if noise_sd is None:
        resid = (img - mean_in)[m]
        noise_sd = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    return (np.abs(mean_in - mean_out) / max(float(noise_sd), 1e-6)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape, spacing, wavelength_mm: float) -> np.ndarray:
    """A smooth random field of unit root-mean-square (white noise low-passed at ``wavelength_mm``)."""
    sigma = [wavelength_mm / (2 * np.pi) / float(s) for s in spacing]
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return f / max(float(np.sqrt(np.mean(f.astype(np.float64) ** 2))), 1e-12)


def boundary_raters(rng: np.random.Generator, mask: np.ndarray, spacing, clarity: np.ndarray | None = None, *,
                    n_raters: int = 3, jitter_mm: float = 3.0, clear_cnr: float = 3.0,
                    wavelength_mm: float = 15.0) -> tuple[list[np.ndarray], dict]:
    """``n_raters`` observers' contours of ``mask`` who disagree most where its edge is faint.

    Each rater moves the edge along its normal by a habit of their own (``bias`` mm wider or
    tighter, normal with sd 0.4 x ``jitter_mm``) plus a smooth displacement (a random field of
    wavelength ``wavelength_mm`` and ``jitter_mm`` root mean square), both scaled by how faint the
    edge is there (:func:`edge_clarity`): ``1 / (1 + (clarity / clear_cnr)^2)``, 1 where the edge is
    invisible and one half at a contrast-to-noise of ``clear_cnr``. This is the
    boundary-dependent perturbation model of inter-observer variability: raters agree on edges
    they can see and spread where the tumour fades into muscle. ``clarity`` None: every edge
    equally faint. The signed distance of ``mask`` (mm, on its grid) is displaced and thresholded.

    Returns (the raters' bool masks, facts: each rater's bias in mm and the mean amplitude on the
    edge)."""
    m = np.asarray(mask, bool)
    sp = tuple(float(s) for s in np.broadcast_to(np.asarray(spacing, float), (m.ndim,)))
    if int(n_raters) < 1:
        raise ParameterError(f"boundary_raters: n_raters must be at least 1, got {n_raters}")
    if clarity is not None and np.shape(clarity) != m.shape:
        raise DataError(f"boundary_raters: clarity {np.shape(clarity)} and mask {m.shape} differ in shape")
    if not m.any() or jitter_mm <= 0:
        return [m.copy() for _ in range(int(n_raters))], {"bias_mm": [0.0] * int(n_raters),
                                                          "edge_amplitude_mm": 0.0}
    # the mask's neighbourhood, as far as any rater can reach
    reach = 4 * jitter_mm + 5
    zs = np.nonzero(m)
    box = tuple(slice(max(0, int(a.min() - reach / s) - 1), min(n, int(a.max() + reach / s) + 2))
                for a, s, n in zip(zs, sp, m.shape))
    sub = m[box]
    sdf = (ndimage.distance_transform_edt(~sub, sampling=sp) - ndimage.distance_transform_edt(sub, sampling=sp))
    faint = (np.ones(sub.shape, np.float32) if clarity is None
             else 1.0 / (1.0 + (np.asarray(clarity, np.float32)[box] / float(clear_cnr)) ** 2))
    amp = float(jitter_mm) * faint
    edge = np.abs(sdf) <= max(sp)
    out, biases = [], []
    for _ in range(int(n_raters)):
        bias = float(np.clip(rng.standard_normal(), -2.5, 2.5) * 0.4 * jitter_mm)
        field = _smooth_noise(rng, sub.shape, sp, wavelength_mm)
        full = np.zeros(m.shape, bool)
        full[box] = sdf - (bias * faint + amp * field) <= 0
        out.append(full)
        biases.append(round(bias, 3))
    return out, {"bias_mm": biases, "edge_amplitude_mm": round(float(amp[edge].mean()), 3)}
