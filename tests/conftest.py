"""Shared fixtures: real-data folders (skipped cleanly when absent) and a papermill runner."""
from __future__ import annotations

from pathlib import Path

import pytest

from npcrepro.paths import repo_root, shared_data

REPO = repo_root()


def _real(sub: str) -> Path:
    p = shared_data(sub)
    if p is None:
        pytest.skip(f"real data {sub!r} not found (set $NPCREPRO_SHARED_DATA or place ../shared/data)")
    return p


@pytest.fixture
def openkbp_dir() -> Path:
    return _real("openkbp-subset")


@pytest.fixture
def npc_t2_dir() -> Path:
    return _real("npc-t2wi-slices")


@pytest.fixture
def two_raters_dir() -> Path:
    return _real("tcia-hn-oar-two-raters")


@pytest.fixture
def run_notebook(tmp_path):
    """Execute ``notebooks/<name>.ipynb`` with papermill (smoke profile by default) into tmp_path.

    Returns the executed notebook (nbformat node). Fails the test with the notebook's traceback.
    """
    import nbformat
    import papermill as pm

    def run(name: str, **params) -> "nbformat.NotebookNode":
        params.setdefault("profile", "smoke")
        params.setdefault("out_dir", str(tmp_path / "runs"))
        out = tmp_path / f"{name}.ipynb"
        pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(out), parameters=params,
                            kernel_name="python3", cwd=str(REPO), progress_bar=False)
        return nbformat.read(str(out), as_version=4)

    return run
