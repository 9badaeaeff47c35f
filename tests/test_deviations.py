"""Issue 22's departures are named: each is a recipe parameter with the paper's value (PAPER), so the
contract's Deviations-completeness test fails when its reason is removed, and it shows in the chapter's
Deviations table at the profiles where it applies."""
from __future__ import annotations

import pytest

from npcrepro import papers, recipes


@pytest.mark.parametrize("chapter, param, paper_value, profiles", [
    ("chen2020", "amp", False, ["gpu"]),                          # mixed precision vs the paper's float32
    ("chen2020", "dice_form", "eq1", []),                         # Eq. 1 followed at every profile
    ("li2018", "min_lesion_mm", 10.0, []),                        # the 1 cm exclusion followed
    ("li2018", "faithful_init_std", 1.0, ["smoke", "cpu", "gpu"]),  # Caffe's small filler, the hypothesis
    ("guo2021", "view_fusion", "decoder", ["smoke", "cpu", "gpu"]),  # probabilities averaged, not decoder fusion
    ("luo2020", "dice_form", "eq1", []),                         # Eq. 1 as printed at every profile
    ("luo2020", "coord_channel", False, ["smoke", "cpu"]),       # the column as an input channel at cpu
    ("luo2020", "skip_structures", [], ["smoke", "cpu"]),         # optic nerves and chiasm gpu-only
])
def test_named_departures(chapter, param, paper_value, profiles):
    mod = recipes.load(chapter)
    item, value = mod.PAPER[param]
    assert value == paper_value and item in papers.info(chapter).recipe
    for profile in ("smoke", "cpu", "gpu"):
        rows = {d["parameter"]: d for d in recipes.deviations(chapter, profile)}
        if profile in profiles:
            assert rows[param]["why"], (chapter, param, profile)
        else:
            assert param not in rows, (chapter, param, profile)
