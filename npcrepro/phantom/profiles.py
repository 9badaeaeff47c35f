"""Size presets and the phantom's parameters (names, defaults, validation)."""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from npcrepro.errors import ParameterError
from npcrepro.phantom.scanners import MODALITIES, STATIC, ScannerSettings


@dataclass(frozen=True)
class Preset:
    """A grid size and a suggested cohort size. ``center`` is the grid centre in scanner mm
    (z, y, x); the nasopharynx of an average patient sits at the origin. ``integer_images`` and
    ``table_noise``: the defaults of :func:`~npcrepro.phantom.make_case`'s parameters of those names."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    center: tuple[float, float, float]
    cases: int
    description: str
    integer_images: bool = False
    table_noise: bool = False


#: Named sizes. ``smoke``: seconds for the whole test suite; ``cpu``: the published book on two
#: CPU cores; ``gpu``: paper scale (xue2020/luo2020 planning CT: 512 x 512 at 0.98 mm, 3 mm slices),
#: its images whole numbers as scanners store them (``integer_images``): written as int16, a
#: case's five channels take a quarter of the disk and of the writing time of float32 ones, whose
#: noise no compressor shrinks. Its noise is drawn from a table (``table_noise``,
#: :data:`~npcrepro.phantom.scanners.NORMAL_TABLE`): a case's noise in a third of the time. The smoke and
#: cpu presets keep float32 and numpy's normal draws, so that the book's cohorts keep their bytes
#: (versions 2 and 4 moved the images, version 3 only the raters, version 5 only the gpu preset's noise,
#: version 6 only the DCE frames, by a few rounding steps).
PRESETS: dict[str, Preset] = {
    "smoke": Preset((32, 64, 64), (3.5, 4.0, 4.0), (0.0, 0.0, 0.0), 3,
                    "tiny: 32 x 64 x 64 at 3.5 x 4 x 4 mm (112 x 256 x 256 mm field of view)"),
    "cpu": Preset((32, 128, 128), (3.5, 2.0, 2.0), (0.0, 0.0, 0.0), 20,
                  "reduced: 32 x 128 x 128 at 3.5 x 2 x 2 mm (112 x 256 x 256 mm)"),
    "gpu": Preset((96, 512, 512), (3.0, 0.98, 0.98), (-10.0, 0.0, 0.0), 120,
                  "paper scale: 96 x 512 x 512 at 3 x 0.98 x 0.98 mm (288 x 502 x 502 mm)", True, True),
}

_SCANNER_DEFAULTS = ScannerSettings().to_dict()

#: Every parameter ``make_case`` / ``generate`` accept, with its default (None: from the preset,
#: or drawn at random for the stages).
DEFAULTS: dict[str, object] = {
    "preset": "cpu",
    "shape": None,
    "spacing": None,
    "center": None,
    "modalities": STATIC,
    "t_stage": None,
    "n_stage": None,
    "ctv_margin_mm": 5.0,
    "ctvnd_margin_mm": 5.0,
    "rater_jitter_mm": 4.0,
    "rater_shared_mm": 4.0,
    "infiltration_mm": 4.0,
    "integer_images": None,
    "table_noise": None,
    "name": None,
    **_SCANNER_DEFAULTS,
}


def _stage(value, prefix: str, valid: tuple[int, ...]):
    if value is None:
        return None
    text = str(value).upper().removeprefix(prefix)
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v not in valid:
        raise ParameterError(f"{prefix.lower()}_stage must be one of "
                             f"{', '.join(f'{prefix}{s}' for s in valid)} (or None for random), "
                             f"got {value!r}")
    return v


def _triple(name: str, value, kind) -> tuple:
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be three numbers (z, y, x), got {value!r}") from None
    if len(out) != 3:
        raise ParameterError(f"{name} must be three numbers (z, y, x), got {value!r}")
    return out


def resolve(params: dict) -> dict:
    """Check parameter names and values; fill defaults and the preset's sizes.

    Raises
    ------
    ParameterError
        An unknown parameter name, an unknown preset or modality, or a bad value.
    """
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ParameterError(f"unknown phantom parameter(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(DEFAULTS)})")
    p = {**DEFAULTS, **params}
    if p["preset"] not in PRESETS:
        raise ParameterError(f"unknown phantom preset {p['preset']!r} (valid: {', '.join(PRESETS)})")
    preset = PRESETS[p["preset"]]
    p["shape"] = _triple("shape", p["shape"] if p["shape"] is not None else preset.shape, int)
    p["spacing"] = _triple("spacing", p["spacing"] if p["spacing"] is not None else preset.spacing, float)
    p["center"] = _triple("center", p["center"] if p["center"] is not None else preset.center, float)
    if min(p["shape"]) < 1 or min(p["spacing"]) <= 0:
        raise ParameterError(f"shape and spacing must be positive, got {p['shape']}, {p['spacing']}")
    mods = p["modalities"]
    mods = (mods,) if isinstance(mods, str) else tuple(mods)
    bad = [m for m in mods if m not in MODALITIES]
    if bad or not mods:
        raise ParameterError(f"unknown modality {', '.join(map(repr, bad)) or '(none given)'} "
                             f"(valid: {', '.join(MODALITIES)})")
    p["modalities"] = tuple(m for m in MODALITIES if m in mods)
    for k in ("integer_images", "table_noise"):
        if p[k] is None:
            p[k] = getattr(preset, k)
        elif not isinstance(p[k], (bool, np.bool_)):
            raise ParameterError(f"{k} must be True, False or None (the preset's), got {p[k]!r}")
        p[k] = bool(p[k])
    p["t_stage"] = _stage(p["t_stage"], "T", (1, 2, 3, 4))
    p["n_stage"] = _stage(p["n_stage"], "N", (0, 1, 2, 3))
    for k in ("ctv_margin_mm", "ctvnd_margin_mm", "rater_jitter_mm", "rater_shared_mm", "infiltration_mm",
              "ct_noise_hu", "mri_noise", "bias_field", "dce_noise", "dce_interval_s"):
        try:
            p[k] = float(p[k])
        except (TypeError, ValueError):
            raise ParameterError(f"{k} must be a number, got {p[k]!r}") from None
        if p[k] < 0 or (k == "dce_interval_s" and p[k] == 0):
            raise ParameterError(f"{k} must be >= 0, got {p[k]}")
    for k in ("dce_frames", "dce_bolus_frame"):
        if isinstance(p[k], bool) or not isinstance(p[k], numbers.Integral) \
                or p[k] < (1 if k == "dce_frames" else 0):
            raise ParameterError(f"{k} must be a non-negative integer (frames >= 1), got {p[k]!r}")
        p[k] = int(p[k])
    return p
