"""The leaderboard's two cohorts: the phantom (every method) and, when present, OpenKBP CT (the CT
methods, PTV70 standing in for the tumour). Each is one run of the experiment runner."""
from __future__ import annotations

from typing import Any, Mapping

from npcrepro.errors import DataError

MODULE = "npcrepro.chapters.leaderboard.methods"
REAL_STRUCTURE = "PTV70"


def phantom_run(P: Mapping[str, Any], **kwargs):
    """Every selected method on the phantom cohort (or on ``P.data``), plus a row per ``P.external``
    prediction folder (:mod:`.external`); returns Results."""
    from npcrepro.chapters.leaderboard.external import add_external
    from npcrepro.engine.experiment import run_experiment

    name = "phantom" if P["data"] == "phantom" else "data"
    return add_external(run_experiment(MODULE, P, name=name, **kwargs), P.get("external"))


class _Subset:
    """A dataset restricted to some case names (the same ``root``)."""

    def __init__(self, ds, names, test_names=()):
        self.root, self.cases, self.channels, self._ds = ds.root, list(names), ds.channels, ds
        self.test_cases, self.source = list(test_names), getattr(ds, "source", "unknown")
        self.structures = list(getattr(ds, "structures", ()))

    def load(self, name, **kw):
        return self._ds.load(name, **kw)


def openkbp_run(P: Mapping[str, Any], **kwargs):
    """The CT methods on OpenKBP (PTV70 as the stand-in target), when the shared data are present
    and ``P.real_cases > 0``. Returns (Results or None, one-line reason)."""
    from npcrepro.chapters.leaderboard.methods import select
    from npcrepro.engine.experiment import run_experiment

    n = int(P.get("real_cases") or 0)
    if n <= 0:
        return None, (f"off in the {P.get('profile')} profile (real_cases = 0; "
                      "`-p real_cases N` runs the CT methods on N OpenKBP patients)")
    try:
        from npcrepro.datasets.adapters.cached import cached_openkbp

        ds = cached_openkbp(P["out_dir"], n, progress=False, n_test=int(P.get("real_test") or 0))
    except DataError as exc:
        return None, f"OpenKBP not available: {exc}"
    if ds is None:
        return None, "OpenKBP extract not found (set $NPCREPRO_SHARED_DATA)"

    def carry(names):
        return [c for c in names if REAL_STRUCTURE in ds.load(c, channels=["CT"]).labels]

    names, test = carry(ds.cases), carry(ds.test_cases)
    if len(names) < 3:
        return None, f"only {len(names)} OpenKBP patients with {REAL_STRUCTURE}"
    ct = [m.key for m in select(P["methods"], ct_only=True)]
    if not ct:
        return None, "no CT method selected"
    Q = P.replace(methods=ct, structure=REAL_STRUCTURE, n_test=max(1, min(len(names) // 3, int(P["n_test"]))),
                  n_cases=None, ct_channel="CT")
    held = f", {len(test)} held-out" if test else ""
    res = run_experiment(MODULE, Q, name="openkbp", dataset=_Subset(ds, names, test),
                         data_label=f"OpenKBP CT ({len(names)} patients{held})", **kwargs)
    return res, f"{len(names)} OpenKBP training patients" + (f", {len(test)} held-out test patients" if test else "")
