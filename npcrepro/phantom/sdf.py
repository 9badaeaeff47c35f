"""Implicit shapes in millimetres: signed distance functions (negative inside) with bounding boxes.

A :class:`Shape` maps points ``p = (z, y, x)`` (three float32 arrays, broadcastable, in mm) to an
(approximate) signed distance in mm, negative inside. Every shape knows a conservative axis-aligned
bounding box ``lo, hi`` (z, y, x mm) of its inside, so a renderer only evaluates it where it can be,
and compositions skip children whose box cannot touch the query box. Distances are exact for
spheres, capsules, boxes and half-spaces; ellipsoids, smooth unions and noise-deformed shapes are
close to the surface and bounded away from it, which is all the partial-volume renderer and the
margin expansions (CTV = GTV + 5 mm) need.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

#: Distance reported where a shape was skipped because the query box cannot reach it (mm).
BIG = 1.0e4

Points = tuple[np.ndarray, np.ndarray, np.ndarray]
Box = tuple[np.ndarray, np.ndarray]


def _vec(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def boxes_touch(a_lo, a_hi, b_lo, b_hi) -> bool:
    return bool(np.all(a_lo <= b_hi) and np.all(b_lo <= a_hi))


def rotation(rz: float = 0.0, ry: float = 0.0, rx: float = 0.0) -> np.ndarray:
    """Rotation matrix (z, y, x order) for angles in degrees about the z, y and x axes.

    ``rx`` tilts the z-y (sagittal) plane (nodding), ``rz`` turns the y-x (axial) plane (head
    turned), ``ry`` tilts the z-x (coronal) plane (head tilted towards a shoulder).
    """
    a, b, c = np.deg2rad([rz, ry, rx])
    # Axes in array order (0=z, 1=y, 2=x); a rotation "about" an axis mixes the other two.
    Rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    Ry = np.array([[np.cos(b), 0, -np.sin(b)], [0, 1, 0], [np.sin(b), 0, np.cos(b)]])
    Rx = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


class Shape:
    """Base class: ``shape(p, box)`` -> signed distance (mm), ``lo``/``hi`` -> bounding box."""

    lo: np.ndarray
    hi: np.ndarray

    def __call__(self, p: Points, box: Box | None = None) -> np.ndarray:
        raise NotImplementedError

    def touches(self, box: Box | None) -> bool:
        return box is None or boxes_touch(self.lo, self.hi, box[0], box[1])

    # Operators keep composition code short: a | b union, a & b intersection, a - b subtraction.
    def __or__(self, other: "Shape") -> "Shape":
        return Union([self, other])

    def __and__(self, other: "Shape") -> "Shape":
        return Intersect([self, other])

    def __sub__(self, other: "Shape") -> "Shape":
        return Subtract(self, [other])


def _local(p: Points, center: np.ndarray, rot: np.ndarray | None) -> Points:
    q = (p[0] - np.float32(center[0]), p[1] - np.float32(center[1]), p[2] - np.float32(center[2]))
    if rot is None:
        return q
    r = rot.astype(np.float32)
    # q_local = R^T q
    # r[0, j] q0 + r[1, j] q1 + r[2, j] q2 for each j, summed in that order in place (q may broadcast)
    shape = np.broadcast_shapes(*(np.shape(c) for c in q))
    dtype = np.result_type(r, *q)
    term = np.empty(shape, dtype)
    out = []
    for j in range(3):
        o = np.multiply(r[0, j], q[0], out=np.empty(shape, dtype))
        for i in (1, 2):
            o += np.multiply(r[i, j], q[i], out=term)
        out.append(o)
    return tuple(out)


def _rotated_box(center, half, rot) -> tuple[np.ndarray, np.ndarray]:
    half = _vec(half)
    if rot is None:
        return _vec(center) - half, _vec(center) + half
    ext = np.abs(rot) @ half
    return _vec(center) - ext, _vec(center) + ext


class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``radii`` (z, y, x mm), optionally rotated by ``rot`` (3x3)."""

    def __init__(self, center, radii, rot: np.ndarray | None = None):
        self.center, self.radii = _vec(center), _vec(radii)
        self.rot = None if rot is None else np.asarray(rot, float)
        self.lo, self.hi = _rotated_box(self.center, self.radii, self.rot)

    def __call__(self, p, box=None):
        q = _local(p, self.center, self.rot)
        inv = (1.0 / self.radii).astype(np.float32)
        shape = np.broadcast_shapes(*(np.shape(c) for c in q))
        k0 = np.zeros(shape, np.float32)
        k1 = np.zeros(shape, np.float32)
        for i in range(3):
            u = q[i] * inv[i]
            u *= u
            k0 += u
            u *= inv[i] * inv[i]
            k1 += u
        np.sqrt(k0, out=k0)
        np.sqrt(k1, out=k1)
        # (k0 - 1) k0 / k1 is the usual first-order ellipsoid distance; k0 / k1 lies between the
        # smallest and largest semi-axis, and the epsilons make it the smallest one at the centre.
        eps = np.float32(1e-6)
        k1 += eps / np.float32(self.radii.min())
        d = k0 - np.float32(1.0)
        k0 += eps
        d *= k0
        d /= k1
        return d


class Sphere(Shape):
    def __init__(self, center, radius: float):
        self.center, self.radius = _vec(center), float(radius)
        self.lo, self.hi = self.center - self.radius, self.center + self.radius

    def __call__(self, p, box=None):
        q = _local(p, self.center, None)
        return np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) - np.float32(self.radius)


class Capsule(Shape):
    """Segment ``a``-``b`` swept by a sphere whose radius goes linearly from ``ra`` to ``rb``."""

    def __init__(self, a, b, ra: float, rb: float | None = None):
        self.a, self.b = _vec(a), _vec(b)
        self.ra = float(ra)
        self.rb = float(ra if rb is None else rb)
        r = max(self.ra, self.rb)
        self.lo = np.minimum(self.a, self.b) - r
        self.hi = np.maximum(self.a, self.b) + r

    def __call__(self, p, box=None):
        ba = (self.b - self.a).astype(np.float32)
        q = _local(p, self.a, None)
        denom = np.float32(max(float(ba @ ba), 1e-9))
        h = np.clip((q[0] * ba[0] + q[1] * ba[1] + q[2] * ba[2]) / denom, 0.0, 1.0)
        dz, dy, dx = q[0] - ba[0] * h, q[1] - ba[1] * h, q[2] - ba[2] * h
        r = np.float32(self.ra) + np.float32(self.rb - self.ra) * h
        return np.sqrt(dz * dz + dy * dy + dx * dx) - r


def tube(points: Sequence[Sequence[float]], radii: float | Sequence[float], k: float = 0.0) -> Shape:
    """A polyline swept by a sphere of (per-vertex) radius: union of :class:`Capsule` pieces."""
    pts = [_vec(p) for p in points]
    rr = [float(radii)] * len(pts) if np.isscalar(radii) else [float(r) for r in radii]
    return Union([Capsule(pts[i], pts[i + 1], rr[i], rr[i + 1]) for i in range(len(pts) - 1)], k=k)


class RoundBox(Shape):
    """Box of half-sizes ``half`` (z, y, x mm) with edges rounded by ``radius``, optionally rotated."""

    def __init__(self, center, half, radius: float = 0.0, rot: np.ndarray | None = None):
        self.center, self.half = _vec(center), _vec(half)
        self.radius = float(min(radius, self.half.min()))
        self.rot = None if rot is None else np.asarray(rot, float)
        self.lo, self.hi = _rotated_box(self.center, self.half, self.rot)

    def __call__(self, p, box=None):
        q = _local(p, self.center, self.rot)
        inner = (self.half - self.radius).astype(np.float32)
        d = [np.abs(q[i]) - inner[i] for i in range(3)]
        zero = np.float32(0.0)
        out = np.sqrt(np.maximum(d[0], zero) ** 2 + np.maximum(d[1], zero) ** 2
                      + np.maximum(d[2], zero) ** 2)
        return out + np.minimum(np.maximum(np.maximum(d[0], d[1]), d[2]), zero) - np.float32(self.radius)


class EllipticPrism(Shape):
    """Elliptic cylinder along z: cross-section semi-axes ``radii_yx`` centred at ``center_yx``,
    from ``z0`` to ``z1`` (mm)."""

    def __init__(self, center_yx, radii_yx, z0: float, z1: float):
        self.cy, self.cx = (float(c) for c in center_yx)
        self.ry, self.rx = (float(r) for r in radii_yx)
        self.zc, self.hz = (z0 + z1) / 2.0, abs(z1 - z0) / 2.0
        self.lo = np.array([min(z0, z1), self.cy - self.ry, self.cx - self.rx])
        self.hi = np.array([max(z0, z1), self.cy + self.ry, self.cx + self.rx])

    def __call__(self, p, box=None):
        uy = (p[1] - np.float32(self.cy)) / np.float32(self.ry)
        ux = (p[2] - np.float32(self.cx)) / np.float32(self.rx)
        k0 = np.sqrt(uy * uy + ux * ux)
        vy, vx = uy / np.float32(self.ry), ux / np.float32(self.rx)
        k1 = np.sqrt(vy * vy + vx * vx)
        eps = np.float32(1e-6)
        d2 = (k0 - np.float32(1.0)) * (k0 + eps) / (k1 + eps / np.float32(min(self.ry, self.rx)))
        dz = np.abs(p[0] - np.float32(self.zc)) - np.float32(self.hz)
        return np.maximum(d2, dz)


class HalfSpace(Shape):
    """Points with ``normal . p <= offset`` (normal is normalised; distance is exact)."""

    def __init__(self, normal, offset: float, extent: float = 1e3):
        n = _vec(normal)
        self.normal = n / np.linalg.norm(n)
        self.offset = float(offset)
        self.lo, self.hi = np.full(3, -extent), np.full(3, extent)
        for i in range(3):  # axis-aligned half-spaces get a tight box on their axis
            if np.count_nonzero(self.normal) == 1 and self.normal[i] != 0:
                if self.normal[i] > 0:
                    self.hi[i] = self.offset / self.normal[i]
                else:
                    self.lo[i] = self.offset / self.normal[i]

    def __call__(self, p, box=None):
        n = self.normal.astype(np.float32)
        out = None
        for i in range(3):
            if n[i] != 0:
                term = n[i] * p[i]
                out = term if out is None else out + term
        return out - np.float32(self.offset)


class Function(Shape):
    """A shape given by a function ``fn(p) -> distance`` and an explicit bounding box."""

    def __init__(self, fn: Callable[[Points], np.ndarray], lo, hi):
        self.fn, self.lo, self.hi = fn, _vec(lo), _vec(hi)

    def __call__(self, p, box=None):
        return self.fn(p)


# ------------------------------------------------------------------------------ compositions
def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    if k <= 0:
        return np.minimum(a, b)
    kk = np.float32(k)
    # min(a, b) - h^2 k / 4 with h = max(k - |a - b|, 0) / k, in place (the same operations in order)
    h = np.subtract(a, b)
    np.abs(h, out=h)
    np.subtract(kk, h, out=h)
    np.maximum(h, np.float32(0.0), out=h)
    h /= kk
    np.multiply(h, h, out=h)
    h *= kk
    h *= np.float32(0.25)
    out = np.minimum(a, b)
    out -= h
    return out


def _big_like(p: Points) -> np.ndarray:
    shape = np.broadcast_shapes(*(np.shape(c) for c in p))
    return np.full(shape, BIG, np.float32)


class Union(Shape):
    """Union of children; ``k`` > 0 blends them smoothly over about ``k`` mm."""

    def __init__(self, children: Sequence[Shape], k: float = 0.0):
        self.children, self.k = list(children), float(k)
        grow = self.k / 4.0
        self.lo = np.min([c.lo for c in self.children], axis=0) - grow
        self.hi = np.max([c.hi for c in self.children], axis=0) + grow

    def __call__(self, p, box=None):
        if box is not None and self.k > 0:
            box = (box[0] - self.k, box[1] + self.k)
        out = None
        for c in self.children:
            if not c.touches(box):
                continue
            d = c(p, box)
            out = d if out is None else _smin(out, d, self.k)
        return _big_like(p) if out is None else out


class Intersect(Shape):
    def __init__(self, children: Sequence[Shape]):
        self.children = list(children)
        self.lo = np.max([c.lo for c in self.children], axis=0)
        self.hi = np.min([c.hi for c in self.children], axis=0)
        self.hi = np.maximum(self.hi, self.lo)

    def __call__(self, p, box=None):
        if any(not c.touches(box) for c in self.children):
            return _big_like(p)
        out = None
        for c in self.children:
            d = c(p, box)
            out = d if out is None else np.maximum(out, d)
        return out


class Subtract(Shape):
    """``base`` minus every shape in ``holes``."""

    def __init__(self, base: Shape, holes: Sequence[Shape]):
        self.base, self.holes = base, list(holes)
        self.lo, self.hi = base.lo.copy(), base.hi.copy()

    def __call__(self, p, box=None):
        if not self.base.touches(box):
            return _big_like(p)
        out = self.base(p, box)
        for h in self.holes:
            if h.touches(box):
                out = np.maximum(out, -h(p, box))
        return out


class Offset(Shape):
    """Grow (``delta`` > 0) or shrink (< 0) a shape by ``delta`` mm."""

    def __init__(self, child: Shape, delta: float):
        self.child, self.delta = child, float(delta)
        g = max(self.delta, 0.0)
        self.lo, self.hi = child.lo - g, child.hi + g

    def __call__(self, p, box=None):
        if box is not None and self.delta > 0:
            box = (box[0] - self.delta, box[1] + self.delta)
        return self.child(p, box) - np.float32(self.delta)


class Noise:
    """A smooth random field: a sum of ``n`` plane waves of wavelength about ``wavelength`` mm,
    bounded by ``amplitude`` mm. Deterministic given the generator state it was drawn from."""

    def __init__(self, rng: np.random.Generator, amplitude: float, wavelength: float, n: int = 6):
        dirs = rng.standard_normal((n, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        freqs = 2 * np.pi / (wavelength * rng.uniform(0.7, 1.4, n))
        self.k = (dirs * freqs[:, None]).astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
        w = rng.uniform(0.5, 1.0, n)
        self.weights = (amplitude * w / w.sum()).astype(np.float32)
        self.amplitude = float(amplitude)

    def __call__(self, p: Points) -> np.ndarray:
        # sum over waves of w sin(p . k + phase), in place: the same operations in the same order
        # as the plain expression, without a new array for each
        shape = np.broadcast_shapes(*(np.shape(c) for c in p))
        dtype = np.result_type(*p, self.k)
        out, arg, term = (np.empty(shape, dtype) for _ in range(3))
        for i, (k, ph, w) in enumerate(zip(self.k, self.phase, self.weights)):
            np.multiply(p[0], k[0], out=arg)
            for j in (1, 2):
                np.multiply(p[j], k[j], out=term)
                arg += term
            arg += ph
            np.sin(arg, out=arg)
            np.multiply(w, arg, out=out if i == 0 else arg)
            if i:
                out += arg
        return out


class Deform(Shape):
    """A shape whose surface is pushed in and out by a :class:`Noise` field."""

    def __init__(self, child: Shape, noise: Noise):
        self.child, self.noise = child, noise
        self.lo, self.hi = child.lo - noise.amplitude, child.hi + noise.amplitude

    def __call__(self, p, box=None):
        if box is not None:
            box = (box[0] - self.noise.amplitude, box[1] + self.noise.amplitude)
        if not self.child.touches(box):
            return _big_like(p)
        return self.child(p, box) + self.noise(p)


class Tight(Shape):
    """Wrap a shape with a tighter, measured bounding box (the child is unchanged)."""

    def __init__(self, child: Shape, lo, hi):
        self.child = child
        self.lo, self.hi = np.maximum(child.lo, _vec(lo)), np.minimum(child.hi, _vec(hi))

    def __call__(self, p, box=None):
        return self.child(p, box)
