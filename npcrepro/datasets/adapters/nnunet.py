"""An existing nnU-Net v2 raw dataset (``dataset.json`` + ``imagesTr``/``labelsTr`` [+ ``imagesTs``]).

The project's own format *is* the nnU-Net v2 raw layout, so such a dataset needs no conversion: it
is opened with :func:`npcrepro.datasets.open_dataset` (the one opener; this module adds none) and
every case is loaded once, which validates it (channel files present, geometry consistent, label
values declared, intensities finite).

* ``convert("nnunet", src, None)`` (or ``dst == src``): **validate in place**; the summary points at
  ``src``, which every chapter can use as it is.
* ``convert("nnunet", src, dst)``: validate and write the readable cases to ``dst`` in the project
  format (the labels become per-structure masks, ``imagesTs`` stays ``imagesTs``); cases that fail
  validation are skipped and listed, so ``dst`` is a clean copy.

Label values that nnU-Net declares as regions (lists of values) become one structure each.
"""
from __future__ import annotations

from pathlib import Path

from npcrepro.datasets.format import open_dataset

DESCRIPTION = "an nnU-Net v2 raw dataset, validated (and copied into the project format)"


def plan(src: Path):
    """Open ``src`` and list its cases for :func:`npcrepro.datasets.adapters.convert`."""
    from npcrepro.datasets.adapters.base import Plan, SourceCase

    ds = open_dataset(src)
    items = ([SourceCase(n, "Tr", ds.root / "imagesTr") for n in ds.cases]
             + [SourceCase(n, "Ts", ds.root / "imagesTs") for n in ds.test_cases])
    return Plan(
        source="nnunet", src=ds.root, items=items, read=lambda item: ds.load(item.name),
        channels=list(ds.channels), structures=list(ds.structures),
        spacing_known=ds.spacing_known,
        description=ds.meta.get("description", "") or DESCRIPTION,
        extra={"nnunet_name": ds.name, "nnunet_source": ds.source},
        notes=["opened with npcrepro.datasets.open_dataset ("
               + ("project format" if ds.has_structure_files else "plain nnU-Net raw") + ")"],
    )
