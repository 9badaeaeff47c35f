"""Polygons <-> masks on one slice, in pure numpy (no OpenCV, no scikit-image).

Coordinates are continuous array indices ``(row, column)`` = (y, x) of the slice: pixel (i, j) has
its centre at (i, j) and covers [i - 0.5, i + 0.5] x [j - 0.5, j + 0.5].

* :func:`fill_polygons` rasterises closed polygons with the **even-odd rule at pixel centres**: a
  pixel is inside when a ray from its centre crosses the polygons' edges an odd number of times. With
  several polygons on one slice this is their XOR, so a contour inside another contour is a hole
  (DICOM RTSTRUCT's usual convention, and the explicit meaning of ``CLOSEDPLANAR_XOR``). Rows use a
  half-open rule (an edge covers rows ``min(y) <= row < max(y)``), so shared vertices are counted
  once.
* Producers disagree on which pixels a contour covers: the pixels whose centre is inside (this
  module's default, ``rule="centre"``: Pinnacle-style and what :func:`mask_to_polygons` inverts), or
  also every pixel the outline passes through (``rule="touched"``, the convention of tools that draw
  the contour's line into the mask). They differ most on small and thin structures; pass the rule
  of the system that drew the contours.
* :func:`mask_to_polygons` is its inverse for masks: the closed loops along the pixel edges between
  inside and outside pixels (outer boundaries and hole boundaries alike). Filling them back with
  :func:`fill_polygons` gives the mask exactly, since no pixel centre lies on a pixel edge.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from npcrepro.errors import ParameterError

__all__ = ["fill_polygons", "mask_to_polygons", "outline_pixels", "RULES"]

#: Which pixels a closed contour covers: "centre" (centre inside) or "touched" (also every pixel the
#: outline passes through).
RULES = ("centre", "touched")


def fill_polygons(polygons: Sequence[np.ndarray], shape: tuple[int, int], rule: str = "centre") -> np.ndarray:
    """Even-odd fill of closed polygons sampled at pixel centres (``rule="centre"``), or that and
    every pixel their outlines pass through (``rule="touched"``, :func:`outline_pixels`).

    Parameters
    ----------
    polygons : sequence of (n, 2) arrays
        Vertices (row, column) in continuous index units; each polygon is closed implicitly (the
        last vertex joins the first). Polygons with fewer than 3 vertices are ignored.
    shape : (rows, columns)

    Returns
    -------
    np.ndarray
        bool (rows, columns).
    """
    if rule not in RULES:
        raise ParameterError(f"unknown rasterisation rule {rule!r} (valid: {', '.join(RULES)})")
    if rule == "touched":
        return fill_polygons(polygons, shape) | outline_pixels(polygons, shape)
    ny, nx = int(shape[0]), int(shape[1])
    starts, ends = [], []
    for poly in polygons:
        p = np.asarray(poly, dtype=float).reshape(-1, 2)
        if len(p) < 3:
            continue
        starts.append(p)
        ends.append(np.roll(p, -1, axis=0))
    mask = np.zeros((ny, nx), bool)
    if not starts:
        return mask
    a, b = np.concatenate(starts), np.concatenate(ends)
    y0, x0, y1, x1 = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    keep = y0 != y1  # horizontal edges cross no row
    y0, x0, y1, x1 = y0[keep], x0[keep], y1[keep], x1[keep]
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo), 0, ny).astype(np.int64)    # rows with lo <= row < hi
    last = np.clip(np.ceil(hi), 0, ny).astype(np.int64)     # exclusive
    counts = np.maximum(last - first, 0)
    if counts.sum() == 0:
        return mask
    edge = np.repeat(np.arange(len(y0)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    row = first[edge] + offsets
    x = x0[edge] + (row - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
    col = np.clip(np.floor(x).astype(np.int64) + 1, 0, nx)  # first pixel centre right of the crossing
    toggles = np.zeros((ny, nx + 1), np.int64)
    np.add.at(toggles, (row, col), 1)
    return (np.cumsum(toggles, axis=1)[:, :nx] % 2).astype(bool)


def outline_pixels(polygons: Sequence[np.ndarray], shape: tuple[int, int], step: float = 0.05) -> np.ndarray:
    """The pixels that the closed polygons' edges pass through: each edge sampled every ``step``
    pixels (vertices included), each sample in the pixel that covers it. bool (rows, columns)."""
    ny, nx = int(shape[0]), int(shape[1])
    mask = np.zeros((ny, nx), bool)
    for poly in polygons:
        p = np.asarray(poly, dtype=float).reshape(-1, 2)
        if len(p) < 2:
            continue
        a, b = p, np.roll(p, -1, axis=0)
        n = np.maximum(np.ceil(np.abs(b - a).max(axis=1) / step).astype(np.int64), 1)
        t = np.concatenate([np.arange(k + 1) / k for k in n])
        pts = np.repeat(a, n + 1, axis=0) + t[:, None] * np.repeat(b - a, n + 1, axis=0)
        rc = np.floor(pts + 0.5).astype(np.int64)
        ok = (rc[:, 0] >= 0) & (rc[:, 0] < ny) & (rc[:, 1] >= 0) & (rc[:, 1] < nx)
        mask[rc[ok, 0], rc[ok, 1]] = True
    return mask


# Directed unit steps between pixel corners: 0 = +column, 1 = +row, 2 = -column, 3 = -row.
_STEPS = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The closed loops along the pixel edges that separate ``mask`` from its background.

    Parameters
    ----------
    mask : (rows, columns) bool

    Returns
    -------
    list of (n, 2) float arrays
        Vertices (row, column) on pixel corners (half-integer coordinates), one array per loop,
        collinear vertices removed. Outer boundaries run counter-clockwise on screen (foreground on
        the left), hole boundaries clockwise; :func:`fill_polygons` of the list gives ``mask`` back.
    """
    m = np.pad(np.asarray(mask, bool), 1)
    # Corner (r, c) of the padded grid is the top-left corner of padded pixel (r, c).
    out: dict[tuple[int, int], list[int]] = {}
    edges = []
    # Foreground pixel with background above: edge along its top side, run towards -column, etc.,
    # so that the foreground is always on the left of the direction of travel (in (row, col) axes).
    inside = m[1:-1, 1:-1]
    for (dr, dc), (start_r, start_c), direction in (
            ((-1, 0), (0, 1), 2),   # top side: from top-right corner, towards -column
            ((1, 0), (1, 0), 0),    # bottom side: from bottom-left corner, towards +column
            ((0, -1), (0, 0), 1),   # left side: from top-left corner, towards +row
            ((0, 1), (1, 1), 3)):   # right side: from bottom-right corner, towards -row
        neighbour = m[1 + dr:m.shape[0] - 1 + dr, 1 + dc:m.shape[1] - 1 + dc]
        rr, cc = np.nonzero(inside & ~neighbour)
        for r, c in zip((rr + 1 + start_r).tolist(), (cc + 1 + start_c).tolist()):
            edges.append((r, c, direction))
    for k, (r, c, d) in enumerate(edges):
        out.setdefault((r, c), []).append(k)
    used = np.zeros(len(edges), bool)
    loops = []
    for k0 in range(len(edges)):
        if used[k0]:
            continue
        corners, k = [], k0
        while True:
            used[k] = True
            r, c, d = edges[k]
            corners.append((r, c, d))
            nr, nc = r + _STEPS[d][0], c + _STEPS[d][1]
            options = [j for j in out.get((nr, nc), []) if not used[j]]
            if not options:
                break
            # At a corner shared by two diagonal pixels, turn towards the foreground (left), which keeps
            # the two pixels in separate loops.
            options.sort(key=lambda j: ((edges[j][2] - d) % 4) != 3)
            k = options[0]
        loops.append(_simplify(corners))
    return loops


def _simplify(corners: list[tuple[int, int, int]]) -> np.ndarray:
    """Keep the corners where the direction changes; back to unpadded pixel-corner coordinates."""
    keep = [(r, c) for i, (r, c, d) in enumerate(corners) if d != corners[i - 1][2]]
    return np.asarray(keep, dtype=float) - 1.5
