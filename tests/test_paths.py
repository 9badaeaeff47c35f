"""Shared file helpers: a folder made once across processes, its lock, the count variables."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from npcrepro.datasets import open_cached, write_dataset
from npcrepro.errors import ParameterError
from npcrepro.paths import build_once, env_count, exclusive_lock


def _make_slowly(folder: Path) -> Path:
    """Writes ``folder`` the way the caches do (a temporary sibling renamed into place), slowly,
    and logs who made it."""
    with open(folder.parent / "made.log", "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    tmp.mkdir()
    (tmp / "payload").write_text("made", encoding="utf-8")
    time.sleep(0.5)
    os.rename(tmp, folder)
    return folder


def _load(folder: Path) -> Path | None:
    return folder if (folder / "payload").exists() else None


def _ask(folder: str, start: float) -> str:
    time.sleep(max(0.0, start - time.time()))  # every process asks at the same moment
    return str(build_once(Path(folder), _load, _make_slowly))


def test_build_once_makes_a_folder_once_when_processes_ask_together(tmp_path):
    folder = tmp_path / "cache" / "cohort"
    with mp.get_context("spawn").Pool(3) as pool:
        start = time.time() + 1.5
        got = pool.starmap(_ask, [(str(folder), start)] * 3)
    assert got == [str(folder)] * 3
    assert len((tmp_path / "cache" / "made.log").read_text().splitlines()) == 1
    assert (folder / "payload").read_text() == "made"
    leftovers = {p.name for p in folder.parent.iterdir()} - {"cohort", "made.log"}
    assert leftovers == {".cohort.lock"}  # the lock file stays; no temporary folder does


def test_build_once_reuses_and_remakes(tmp_path):
    folder = tmp_path / "cohort"
    made = []

    def make(f: Path) -> Path:
        made.append(f)
        return _make_slowly(f)

    assert build_once(folder, _load, make) == folder and len(made) == 1
    assert build_once(folder, _load, make) == folder and len(made) == 1
    (folder / "payload").unlink()  # stale: load says None, so it is made again
    os.rmdir(folder)
    build_once(folder, _load, make)
    assert len(made) == 2


def test_exclusive_lock_excludes_another_process(tmp_path):
    lock = tmp_path / ".x.lock"
    with exclusive_lock(lock):
        proc = mp.get_context("spawn").Process(target=_hold_and_mark, args=(str(lock), str(tmp_path / "mark")))
        proc.start()
        time.sleep(1.0)
        assert not (tmp_path / "mark").exists()  # waits for us
    proc.join(30)
    assert proc.exitcode == 0 and (tmp_path / "mark").exists()


def _hold_and_mark(lock: str, mark: str) -> None:
    with exclusive_lock(lock):
        Path(mark).write_text("in", encoding="utf-8")


def test_open_cached_needs_the_same_record(tmp_path):
    import numpy as np

    from npcrepro.datasets import Case

    img = np.zeros((2, 8, 8), np.float32)
    lab = np.zeros((2, 8, 8), bool)
    lab[1, 2:5, 2:5] = True
    case = Case("c0", {"T1": img}, {"GTVp": lab}, (1.0, 1.0, 1.0))
    assert open_cached(tmp_path / "none", {"a": 1}) is None
    write_dataset(tmp_path / "ds", [case], channels=["T1"], structures=["GTVp"], extra={"a": 1})
    assert len(open_cached(tmp_path / "ds", {"a": 1})) == 1
    assert open_cached(tmp_path / "ds", {"a": 2}) is None
    (tmp_path / "ds" / "dataset.json").write_text("{not json", encoding="utf-8")
    assert open_cached(tmp_path / "ds", {"a": 1}) is None  # unreadable: made again, not raised


def test_env_count(monkeypatch):
    monkeypatch.delenv("NPCREPRO_TEST_COUNT", raising=False)
    assert env_count("NPCREPRO_TEST_COUNT") is None
    monkeypatch.setenv("NPCREPRO_TEST_COUNT", "3")
    assert env_count("NPCREPRO_TEST_COUNT", 1) == 3
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("NPCREPRO_TEST_COUNT", bad)
        with pytest.raises(ParameterError, match="NPCREPRO_TEST_COUNT"):
            env_count("NPCREPRO_TEST_COUNT", 1)
