"""Shared fixtures: real-data folders (skipped cleanly when absent) and a papermill runner."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from npcrepro.paths import repo_root, shared_data

REPO = repo_root()


def _real(sub: str) -> Path:
    p = shared_data(sub)
    if p is None:
        pytest.skip(f"real data {sub!r} not found (set $NPCREPRO_SHARED_DATA or place ../shared/data)")
    return p


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module's small models on one torch thread (faster for tiny tensors, and stable on a
    busy machine where multi-threaded OpenMP steps spin); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cli():
    """``cli(*args, cwd=folder)``: run ``python -m npcrepro ARGS`` in ``folder`` as a user would (on
    this checkout's library) and return the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

    def run(*args, cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "npcrepro", *map(str, args)],
                              capture_output=True, text=True, encoding="utf-8", cwd=cwd, env=env)

    return run


@pytest.fixture
def openkbp_dir() -> Path:
    return _real("openkbp-subset")


@pytest.fixture
def npc_t2_dir() -> Path:
    return _real("npc-t2wi-slices")


@pytest.fixture
def two_raters_dir() -> Path:
    return _real("tcia-hn-oar-two-raters")


@pytest.fixture(scope="session")
def book_copy(tmp_path_factory) -> Path:
    """A throw-away copy of the book sources (notebooks, prose, config) for executing and building,
    so tests never write into the checkout. Executed smoke chapters go to <copy>/book/runs/smoke."""
    root = tmp_path_factory.mktemp("book")
    for name in ("notebooks", "book"):
        shutil.copytree(REPO / name, root / name,
                        ignore=shutil.ignore_patterns("runs", ".ipynb_checkpoints"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(REPO / name, root / name)
    (root / "npcrepro").symlink_to(REPO / "npcrepro")  # fingerprints hash the library sources
    return root


@pytest.fixture(scope="session")
def run_folder(book_copy):
    """The run folder a notebook printed ("run folder: runs/smoke/..."): pages show it relative to the
    book's root (:attr:`npcrepro.engine.results.Results.where`), which for these tests is the book copy."""
    from pathlib import Path

    def resolve(printed: str) -> Path:
        p = Path(printed)
        return p if p.is_absolute() else book_copy / p

    return resolve


@pytest.fixture(scope="session")
def run_notebook(book_copy):
    """Execute ``notebooks/<name>.ipynb`` with papermill and return the executed notebook.

    Defaults: profile "smoke" and an out_dir inside the session's book copy. Runs with default
    parameters are cached for the session and land in ``<book_copy>/book/runs/smoke/``, where the
    book-build test picks them up instead of executing every chapter a second time.
    """
    import nbformat

    from npcrepro import book

    cache: dict = {}

    def run(name: str, **params) -> "nbformat.NotebookNode":
        profile = params.pop("profile", "smoke")
        params.setdefault("out_dir", str(book_copy / "runs"))
        key = (name, profile, json.dumps(params, sort_keys=True, default=str))
        if key not in cache:
            default = set(params) == {"out_dir"}
            out = (book.runs_dir(profile, book_copy) / f"{name}.ipynb" if default
                   else book_copy / "custom" / f"{name}-{len(cache)}.ipynb")
            res = book.execute(name, profile, params, output=out, root=book_copy,
                               log=lambda *_: None)
            cache[key] = nbformat.read(res.output, as_version=4)
        return cache[key]

    return run


def disc_cases(n: int, shape: tuple[int, int, int], radius2: float) -> list:
    """``n`` small cases c0, c1 ...: a noisy T1 volume of ``shape`` with a bright disc (squared radius
    ``radius2`` voxels, centre moving with the case) as GTVp; spacing (3, 1, 1) mm."""
    import numpy as np

    from npcrepro.datasets import Case

    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        z, y, x = np.indices(shape)
        m = (y - shape[1] // 2 - seed) ** 2 + (x - shape[2] // 2 + 1) ** 2 < radius2
        out.append(Case(f"c{seed}", {"T1": rng.normal(size=m.shape).astype(np.float32) + 2 * m},
                        {"GTVp": m}, (3.0, 1.0, 1.0)))
    return out


def toy_ct_case(name: str, seed: int):
    """A 6 x 24 x 20 CT case (3 x 2 x 2 mm) with three boxes: CTVp (bright), GTVp inside it and
    Parotid_L (dark)."""
    import numpy as np

    from npcrepro.datasets import Case

    rng = np.random.default_rng(seed)
    z, y, x = 6, 24, 20
    ct = rng.normal(0, 20, (z, y, x)).astype(np.float32)
    a = np.zeros((z, y, x), bool)
    a[1:5, 6:12, 5:11] = True
    b = np.zeros((z, y, x), bool)
    b[2:4, 8:10, 7:9] = True          # inside a (overlapping targets)
    c = np.zeros((z, y, x), bool)
    c[1:3, 14:20, 14:19] = True
    ct[a] += 300
    ct[c] -= 300
    return Case(name, {"CT": ct}, {"CTVp": a, "GTVp": b, "Parotid_L": c}, (3.0, 2.0, 2.0))


def load_file(path, name: str | None = None):
    """The module in the file ``path`` (a benchmark or script, not a package module), imported anew."""
    import importlib.util

    path = Path(path)
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_benchmark(name: str):
    """``benchmarks/bench_<name>.py`` as a module, with ``benchmarks/`` on ``sys.path`` as ``npcrepro bench``
    puts it (benchmarks import their siblings)."""
    import sys

    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return load_file(folder / f"bench_{name}.py")
