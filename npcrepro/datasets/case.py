"""The in-memory case: every channel and every structure mask of one patient on one grid."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from npcrepro.errors import DataError
from npcrepro.io import Geometry, Volume


@dataclass(eq=False)
class Case:
    """One patient.

    Attributes
    ----------
    name : str
        Case identifier (file stem in the dataset).
    images : dict[str, np.ndarray]
        Channel name (e.g. ``"CT"``, ``"T1"``, ``"T2"``, ``"CET1"``, ``"DCE_035"``) -> float32 array
        (z, y, x).
    labels : dict[str, np.ndarray]
        Structure name (e.g. ``"GTVp"``, ``"Parotid_L"``) -> bool array (z, y, x). Structures a
        patient does not have are absent from the dict, never present as empty-by-accident masks.
    spacing : tuple of float
        Voxel size (z, y, x) in mm. ``meta["spacing_known"] is False`` marks pixel units.
    origin, direction
        Physical grid, array order (see :mod:`npcrepro.io`).
    meta : dict
        Free-form JSON-serialisable facts (source, T/N stage, second-rater masks' provenance ...).
    """

    name: str
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float)
        shapes = {k: v.shape for k, v in {**self.images, **self.labels}.items()}
        if len(set(shapes.values())) > 1:
            raise DataError(f"case {self.name}: channels and masks have different shapes {shapes}")

    @property
    def shape(self) -> tuple[int, ...]:
        for arr in (*self.images.values(), *self.labels.values()):
            return tuple(arr.shape)
        raise DataError(f"case {self.name}: no images and no labels")

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.shape, self.spacing, self.origin, self.direction)

    def volume(self, name: str) -> Volume:
        """A channel or a structure as a :class:`~npcrepro.io.Volume` on the case grid."""
        arr = self.images[name] if name in self.images else self.labels[name]
        return Volume.on_grid(arr, self.geometry)

    def label_map(self, order: Sequence[str] | None = None) -> np.ndarray:
        """A uint8 label map (z, y, x) painted in ``order`` (later structures win where they overlap);
        value ``i + 1`` for ``order[i]``. Structures missing from the case leave no trace."""
        order = list(order if order is not None else self.labels)
        if len(order) > 255:
            raise DataError(f"case {self.name}: at most 255 structures fit a uint8 label map")
        out = np.zeros(self.shape, np.uint8)
        for value, name in enumerate(order, start=1):
            if name in self.labels:
                np.copyto(out, np.uint8(value), where=np.asarray(self.labels[name], bool))
        return out
