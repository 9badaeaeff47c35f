"""The metrics chapter's inter-rater table, on a tiny two-rater layout written here and on the real
masks when present."""
from __future__ import annotations

import numpy as np
import pytest

from npcrepro import io, metrics
from npcrepro.chapters.metrics import report as chapter


def _write_layout(root, spacing=(2.5, 1.0, 1.0)):
    rng = np.random.default_rng(0)
    for rater, shift in (("radiographer", 0), ("oncologist", 1)):
        for organ, (z, y, x, r) in {"Brainstem": (5, 10, 10, 4), "Lens-Lt": (5, 22, 22, 2)}.items():
            zz, yy, xx = np.mgrid[:10, :32, :32]
            m = ((zz - z) * spacing[0]) ** 2 + (yy - y - shift) ** 2 + (xx - x) ** 2 <= r * r * 1.0
            io.write(io.Volume(m.astype(np.uint8), spacing),
                     root / "validation" / rater / "scanA" / "segmentations" / f"{organ}.nrrd")
    # an organ only one rater drew is skipped, not scored as empty
    io.write(io.Volume(np.zeros((10, 32, 32), np.uint8), spacing),
             root / "validation" / "radiographer" / "scanA" / "segmentations" / "Lung-Lt.nrrd")
    return rng


def test_inter_rater_table_matches_direct_metrics(tmp_path):
    _write_layout(tmp_path)
    table = chapter.inter_rater_table(tmp_path, progress=False)
    assert sorted(table.organ) == ["Brainstem", "Lens-Lt"]
    row = table.set_index("organ").loc["Brainstem"]
    a = io.read(tmp_path / "validation/radiographer/scanA/segmentations/Brainstem.nrrd").array > 0
    b = io.read(tmp_path / "validation/oncologist/scanA/segmentations/Brainstem.nrrd").array > 0
    assert row.dice == pytest.approx(metrics.dice(a, b))
    assert row.hd95 == pytest.approx(metrics.hausdorff(a, b, (2.5, 1.0, 1.0), 95))
    summary = chapter.organ_summary(table)
    assert list(summary.index) == ["Lens-Lt", "Brainstem"]  # small organ, lower DSC, sorts first
    only = chapter.inter_rater_table(tmp_path, organs=["Lens-Lt"], progress=False)
    assert list(only.organ) == ["Lens-Lt"]


def test_real_two_raters_agree_but_not_perfectly(two_raters_dir):
    table = chapter.inter_rater_table(two_raters_dir, scans=["0522c0014"],
                                      organs=["Brainstem", "Mandible"], progress=False)
    t = table.set_index("organ")
    # In this scan the oncologist edited the brainstem but accepted the radiographer's mandible.
    assert 0.7 < t.loc["Brainstem", "dice"] < 0.95 and t.loc["Brainstem", "hd95"] > 1.0
    assert t.loc["Mandible", "dice"] == 1.0 and t.loc["Mandible", "hd"] == 0.0


@pytest.mark.slow
def test_metrics_notebook_runs(run_notebook):
    nb = run_notebook("metrics")
    assert any("profile=smoke" in "".join(o.get("text", "")) for c in nb.cells
               if c.cell_type == "code" for o in c.get("outputs", []))
