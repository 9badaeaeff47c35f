"""The chapter layer: one folder per book page, found by :mod:`npcrepro.pages` from its ``page.toml``
(title, place, kind, dependencies, expected minutes). A page that trains has three small parts more:

``npcrepro.chapters.<name>``
    ``prepare``  case -> model inputs and samplers;
    ``methods``  the chapter's :class:`~npcrepro.engine.experiment.Chapter` (``CHAPTER``): method
                 name -> network, loss, training stages, predict;
    ``report``   tables, figures and claims from :class:`~npcrepro.engine.results.Results`.

Parameters and recipe values are plain data in :mod:`npcrepro.recipes`; the experiment runner
(:func:`npcrepro.engine.experiment.run_experiment`) trains, predicts, scores and writes the run
folder for every chapter. :func:`run` is the one entry point the notebooks call.
"""
from __future__ import annotations

from typing import Any, Mapping

from npcrepro import pages

__all__ = ["MODULES", "module", "run", "run_track", "dry_run", "ct_inputs", "CT_CHANNELS"]

#: Chapters that train (their folder holds ``methods.py``; :mod:`npcrepro.pages`): name -> the module
#: holding ``CHAPTER``.
MODULES: dict[str, str] = {k: p.module for k, p in pages.pages().items() if p.trains}


#: The phantom's two CTs, in HU: non-contrast and contrast-enhanced (venous phase).
CT_CHANNELS = {"CT": "non-contrast CT", "CECT": "contrast-enhanced CT (CECT, venous phase)"}


def ct_inputs(profile: str = "cpu"):
    """Which CT each chapter trains on at ``profile``, read from the chapters and their recipes: one
    row per chapter whose input channels (:meth:`~npcrepro.engine.experiment.Chapter.channels_for` of
    the profile's resolved parameters) include one of :data:`CT_CHANNELS`, with the channel, the CT in
    words, the chapter's other input channels and why (the recipe's ``CHOICES["CT"]``).

    Returns
    -------
    DataFrame
        Columns ``chapter``, ``channel``, ``CT``, ``other inputs``, ``why``.
    """
    import importlib

    import pandas as pd

    from npcrepro import profiles, recipes

    rows = []
    for chapter in [c for c in recipes.CHAPTERS if c in MODULES]:
        if profile not in profiles.profiles(chapter):
            continue
        P = profiles.resolve(chapter, profile)
        channels = importlib.import_module(MODULES[chapter]).CHAPTER.channels_for(P)
        for ch in [c for c in channels if c in CT_CHANNELS]:
            rows.append({"chapter": chapter, "channel": ch, "CT": CT_CHANNELS[ch],
                         "other inputs": ", ".join(c for c in channels if c not in CT_CHANNELS) or "none",
                         "why": recipes.load(chapter).CHOICES.get("CT", "")})
    return pd.DataFrame(rows, columns=["chapter", "channel", "CT", "other inputs", "why"])


def module(name: str) -> str:
    from npcrepro.errors import ParameterError

    if name not in MODULES:
        raise ParameterError(f"unknown chapter {name!r} (valid: {', '.join(MODULES)})")
    return MODULES[name]


def run(P: Mapping[str, Any], *, name: str = "run", **kwargs):
    """Run chapter ``P.paper`` with resolved parameters ``P`` through the experiment runner;
    returns its :class:`~npcrepro.engine.results.Results`."""
    from npcrepro.engine.experiment import run_experiment

    return run_experiment(module(P["paper"]), P, name=name, **kwargs)


def run_track(P: Mapping[str, Any], track: str, **kwargs):
    """Run the track ``track`` that chapter ``P.paper`` declares (its data absent: skip it);
    returns (its :class:`~npcrepro.engine.results.Results` or None, the sentence its source gave).
    See :func:`npcrepro.engine.experiment.run_track`."""
    from npcrepro.engine.experiment import run_track as run_declared

    return run_declared(module(P["paper"]), P, track, **kwargs)


def dry_run(chapter: str, profile: str = "gpu", *, progress: bool = False, amp_dtype: str | None = None,
            mode: bool | str = True, score: bool = True, phantom_shape=None, **overrides):
    """A dry run of ``chapter`` at ``profile``: the profile's full sizes, three patients, every
    network trained for 2 iterations per stage and one full-size prediction per method, through the
    same runner and chapter code as a real run (see
    :func:`npcrepro.engine.experiment.run_experiment`). Returns its
    :class:`~npcrepro.engine.results.Results` (run folder under ``<out_dir>/dryrun/``).
    ``amp_dtype="bfloat16"`` trains under bf16 autocast, on the CPU too; ``mode="plan"`` only
    measures every network's step (:mod:`npcrepro.plan`), training and predicting nothing;
    ``score=False`` predicts and writes but does not score (the surface metrics of an untrained
    network's full-volume masks take about a minute per structure at paper size on one core);
    ``phantom_shape`` (z, y, x) replaces the phantom grid's shape (the test suite's dry run keeps
    the in-plane 512 x 512 and takes 32 slices instead of 96)."""
    from npcrepro.profiles import Params, resolve

    P = resolve(chapter, profile=profile, **overrides)
    if amp_dtype:
        P = Params({**P, "amp_dtype": amp_dtype})
    if not score:
        P = Params({**P, "dry_run_score": False})
    if phantom_shape:
        P = Params({**P, "phantom_shape": list(phantom_shape)})
    module(chapter)
    return run(P, dry_run=mode, progress=progress)
