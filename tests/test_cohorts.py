"""The phantom's development and evaluation cohorts: recipes are chosen on one, the book reports on the
other, and the two share no patient."""
from __future__ import annotations

import pytest

from npcrepro import phantom, profiles
from npcrepro.errors import ParameterError


def test_the_book_reports_on_the_evaluation_cohort_at_every_profile():
    for chapter in profiles.papers():
        for profile in profiles.profiles(chapter):
            assert profiles.resolve(chapter, profile)["cohort"] == "evaluation", (chapter, profile)


def test_the_two_cohorts_share_no_patient():
    """Patient names and generator seeds differ for any cohort size up to the gap between them."""
    gap = profiles.COHORTS["evaluation"] - profiles.COHORTS["development"]
    dev = phantom.case_factories(gap, 0, profiles.COHORTS["development"])
    ev = phantom.case_factories(gap, 0, profiles.COHORTS["evaluation"])
    names = [{f.keywords["name"] for f in fs} for fs in (dev, ev)]
    seeds = [{f.args[0] for f in fs} for fs in (dev, ev)]
    assert not names[0] & names[1] and not seeds[0] & seeds[1]
    assert ev[0].keywords["name"] == "npc_1000" and dev[0].keywords["name"] == "npc_000"
    # patient i of a cohort is patient first + i of the one population: the same seed as before
    assert dev[5].args[0] == phantom.case_seed(0, 5) and ev[5].args[0] == phantom.case_seed(0, 1005)


def test_cohorts_have_their_own_cache_and_record(tmp_path):
    P = {"seed": 0, "out_dir": str(tmp_path)}
    dev = profiles.phantom_cache_dir({**P, "cohort": "development"}, "smoke", 3)
    ev = profiles.phantom_cache_dir({**P, "cohort": "evaluation"}, "smoke", 3)
    assert dev != ev and "-development-" in dev.name and "-evaluation-" in ev.name
    assert phantom.cohort_record(3, 0, "smoke", 1000)["first"] == 1000
    # the development record is what it was before cohorts existed (its caches stay valid)
    assert "first" not in phantom.cohort_record(3, 0, "smoke", 0)


def test_generated_evaluation_cohort_names_its_patients(tmp_path):
    ds = profiles.load_data(profiles.resolve("template", "smoke", out_dir=str(tmp_path)), n_cases=2)
    assert list(ds.cases) == ["npc_1000", "npc_1001"]
    assert "patients 1000-1001 of seed 0" in ds.meta["description"]


def test_a_cohort_that_does_not_exist_is_refused_in_one_line():
    with pytest.raises(ParameterError, match="'cohort' must be one of \\['development', 'evaluation'\\]"):
        profiles.resolve("template", "smoke", cohort="test")


def test_li2018_dce_cohorts_render_disjoint_phantom_seeds(monkeypatch, tmp_path):
    """li2018's DCE patients render phantom seeds seed + first + i (tried up to 3n + 10 times): the
    evaluation cohort's start 1000 seeds on."""
    from npcrepro.chapters.li2018 import prepare

    monkeypatch.setattr(prepare, "build_once", lambda folder, *a: folder)
    for cohort, seed in (("development", 0), ("evaluation", 1000)):
        P = profiles.resolve("li2018", "cpu", out_dir=str(tmp_path), cohort=cohort)
        assert prepare.phantom_dataset(P).name.startswith(f"li2018-dce-{cohort}-n{P['n_cases']}-s{seed}-")
    n = max(profiles.resolve("li2018", p)["n_cases"] for p in profiles.profiles("li2018"))
    assert 3 * n + 10 <= profiles.COHORTS["evaluation"], "the development seeds would reach the evaluation ones"
