"""Converted subsets of the shared real data, made once and reused: the OpenKBP patients the luo2020 and
xue2020 chapters and the leaderboard train on, and the NPC T2 slices of li2018's real-data track and
the phantom page's comparison. Above the adapters (it calls :func:`convert`), so no adapter
imports back into the package that registers it."""
from __future__ import annotations

from pathlib import Path

from npcrepro.datasets import open_dataset
from npcrepro.datasets.adapters import convert
from npcrepro.paths import build_once, shared_data

__all__ = ["cached_openkbp", "cached_npc_t2"]


def cached_openkbp(out_dir: str | Path, n_cases: int, progress: bool = False, n_test: int = 0):
    """The first ``n_cases`` OpenKBP training patients (``train-pats``) of the shared real-data folder
    and, with ``n_test``, its first ``n_test`` held-out test patients (``test-pats``, the dataset's
    ``imagesTs``), converted once under ``<out_dir>/_cache/openkbp-n<n_cases>[-t<n_test>]`` and opened;
    None when the real data are not on this machine (or ``n_cases < 1``). Without ``n_test`` the first
    ``n_cases`` patients in source order (training patients first)."""
    src = shared_data("openkbp-subset")
    if src is None or n_cases < 1:
        return None
    n_test = int(n_test or 0)

    def make(folder: Path):
        convert("openkbp", src, folder, overwrite=True, progress=progress, limit=int(n_cases),
                test_limit=n_test or None)
        return open_dataset(folder)

    name = f"openkbp-n{int(n_cases)}" + (f"-t{n_test}" if n_test else "")
    return build_once(Path(out_dir) / "_cache" / name,
                      lambda folder: open_dataset(folder) if (folder / "dataset.json").exists() else None, make)


def cached_npc_t2(cache: str | Path, src: str | Path | None = None):
    """The 25 real NPC T2 slices (``npc-t2wi-slices``: ``src``, default the shared real-data folder's)
    converted once with the ``npc-t2-slices`` adapter into ``<cache>/npc-t2-slices`` and opened;
    None when they are not on this machine."""
    src = shared_data("npc-t2wi-slices") if src is None else Path(src)
    if src is None or not Path(src).exists():
        return None

    def make(folder: Path):
        convert("npc-t2-slices", src, folder, overwrite=True, progress=False)
        return open_dataset(folder)

    return build_once(Path(cache) / "npc-t2-slices",
                      lambda folder: open_dataset(folder) if (folder / "dataset.json").exists() else None, make)
