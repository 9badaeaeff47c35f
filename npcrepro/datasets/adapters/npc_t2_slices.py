"""25 axial T2-weighted NPC slices with tumour masks, exported as 8-bit JPEG.

From Li et al. 2024 (Zenodo 10900202, CC BY 4.0), exported to 512 x 512 JPEG by a third party
(github.com/sarah-antillia). Source layout::

    <src>/images/NNNNN.jpg     grey (or colour, averaged) 8-bit slice
    <src>/masks/NNNNN.jpg      the tumour mask, same name; lossy JPEG, so thresholded at > 127

PNG, BMP and TIFF files are accepted too. Each slice becomes one case of shape (1, 512, 512) with
channel ``T2`` (the JPEG grey levels 0-255, not MRI signal) and structure ``GTVp``.

The pixel size is **unknown**: spacing is set to (1, 1, 1) and the dataset is written with
``spacing_known=False``, so every distance measured on it (HD95, ASSD) is in **pixels**, and volumes
in pixels. A mask that is empty after thresholding leaves ``GTVp`` absent (noted in the case meta);
an image without a mask raises :class:`~npcrepro.DataError` (``convert`` reports it as skipped).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from npcrepro import io
from npcrepro.datasets.case import Case
from npcrepro.errors import DataError

DESCRIPTION = "25 NPC T2WI slices (JPEG export of Li et al. 2024), pixel units"
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
#: Mask grey level above which a pixel is tumour (JPEG compression blurs 0/255 edges).
MASK_THRESHOLD = 127


def _pictures(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in SUFFIXES and not p.name.startswith(".")}


def find_root(src: str | Path) -> Path:
    """The folder holding ``images/`` and ``masks/``."""
    src = Path(src)
    for cand in (src, src / "npc-t2wi-slices"):
        if (cand / "images").is_dir() and (cand / "masks").is_dir():
            return cand
    raise DataError(f"{src}: expected images/ and masks/ folders of .jpg slices")


def read_slice(image_path: str | Path, mask_path: str | Path | None) -> Case:
    """Read one slice and its mask as a (1, H, W) :class:`Case` (spacing unknown: pixels).

    Raises
    ------
    DataError
        Missing or unreadable file, a mask whose size differs from the image's, a 3D picture.
    """
    image_path = Path(image_path)
    if mask_path is None:
        raise DataError(f"{image_path}: no mask of the same name in masks/")
    mask_path = Path(mask_path)
    img = io.read(image_path)
    if img.ndim != 2:
        raise DataError(f"{image_path}: expected a 2D picture, got shape {img.shape}")
    msk = io.read(mask_path)
    if msk.shape != img.shape:
        raise DataError(f"{mask_path}: mask size {msk.shape} differs from image {image_path.name} "
                        f"{img.shape}")
    mask = np.asarray(msk.array) > MASK_THRESHOLD
    labels = {"GTVp": mask[None]} if mask.any() else {}
    meta = {"source": "npc-t2-slices", "image": image_path.name, "spacing_known": False,
            "units": "pixels (no spacing in the JPEG export)",
            "intensity": "8-bit JPEG grey levels, not MRI signal",
            "mask_threshold": MASK_THRESHOLD, "empty_mask": not mask.any()}
    return Case(image_path.stem, {"T2": np.asarray(img.array, dtype=np.float32)[None]}, labels,
                (1.0, 1.0, 1.0), meta=meta)


def plan(src: Path):
    """List the slices under ``src`` for :func:`npcrepro.datasets.adapters.convert`."""
    from npcrepro.datasets.adapters.base import Plan, SourceCase

    root = find_root(src)
    images = _pictures(root / "images")
    masks = _pictures(root / "masks")
    if not images:
        raise DataError(f"{root / 'images'}: no pictures ({', '.join(SUFFIXES)})")
    items = [SourceCase(stem, "Tr", path) for stem, path in images.items()]
    orphans = sorted(set(masks) - set(images))
    notes = ["spacing unknown: the dataset is in pixel units (distances in pixels, not mm)"]
    if orphans:
        notes.append(f"{len(orphans)} mask(s) without an image ignored: {', '.join(orphans[:5])}")
    return Plan(
        source="npc-t2-slices", src=root, items=items,
        read=lambda item: read_slice(item.path, masks.get(item.name)),
        channels=["T2"], structures=["GTVp"], spacing_known=False,
        description=DESCRIPTION + " (Li Y. et al. 2024, CC BY 4.0)",
        extra={"units": "pixels", "mask_threshold": MASK_THRESHOLD}, notes=notes,
    )
