"""Run folders: everything one training/evaluation run leaves behind.

::

    <root>/<profile>/<paper>/<YYYYmmdd-HHMMSS>-<name>/
        params.json          resolved parameters (what was asked for, after profile defaults)
        environment.json     versions, git revision, device, CPU/GPU, host
        curves.csv           iteration, epoch, stage, lr, train_loss, val_loss, throughput (samples/s)
        checkpoint_last.pt   model, optimiser, schedule, scaler, RNG states, counters, history
        checkpoint_best.pt   the same at the best validation loss
        metrics.csv          one row per (case, structure) [and fold]
        summary.json         pooled summary and run facts
        predictions/<case>/<structure>.nii.gz
        splits.json          cross-validation folds (when any)
        fold_<i>/            one sub-run per fold (same layout, no environment.json)
        RUNNING              while the run works: the process id and host
        DONE                 written when the run (or fold) finished
        FAILED               written when it failed: one line saying why

A new run never reuses a folder: a clash (same second, same name) gets ``-2``, ``-3`` ... Only rank 0
writes when training is distributed. A run that fails is marked FAILED: by the engine where the
exception passes through it (training, cross-validation), and otherwise when the process that
created the folder exits without marking it done. A process killed outright leaves RUNNING with a
process id that no longer runs, which :attr:`RunFolder.status` reads as failed.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import json
import math
import os
import platform
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from npcrepro.errors import DataError
from npcrepro.engine import distributed as D

__all__ = ["RunFolder", "environment", "cpu_model", "generator_version_at", "to_jsonable", "find_runs", "latest_run",
           "job_dir"]


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays, paths, tuples, dataclasses, non-finite floats."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return repr(obj)


#: Run folders this process created (or resumed) and has not yet marked done or failed.
_UNFINISHED: set[Path] = set()


@atexit.register
def _mark_unfinished_failed() -> None:
    for path in list(_UNFINISHED):
        RunFolder(path, writer=True).mark_failed("the process ended before the run was marked done")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def git_revision() -> dict:
    """``{"revision": HEAD's hash, "dirty": tracked files modified}`` of the checkout (None each where
    git cannot tell), as environment.json records it."""
    from npcrepro.paths import repo_root

    out: dict[str, Any] = {"revision": None, "dirty": None}
    try:
        root = repo_root()
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode == 0:
            out["revision"] = rev.stdout.strip()
            st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=5)
            out["dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def generator_version_at(revision: str) -> int | None:
    """The phantom's ``GENERATOR_VERSION`` in the source of git ``revision`` of this checkout (read, not
    run), or None where git cannot show it (no git, no such revision, a shallow clone)."""
    from npcrepro.paths import repo_root

    if not revision or not re.fullmatch(r"[0-9a-f]{7,40}", str(revision)):
        return None
    try:
        shown = subprocess.run(["git", "-C", str(repo_root()), "show", f"{revision}:npcrepro/phantom/make.py"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^GENERATOR_VERSION = (\d+)$", shown.stdout, re.M) if shown.returncode == 0 else None
    return int(found.group(1)) if found else None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | None = None) -> dict:
    """Facts that decide whether a number can be reproduced: versions, git revision, hardware."""
    import torch

    import npcrepro

    def version(mod: str) -> str | None:
        # the installed distribution's metadata: importing a package only to read its version took
        # seconds per run folder (monai)
        if mod in sys.modules:
            return getattr(sys.modules[mod], "__version__", None)
        try:
            from importlib.metadata import version as dist_version

            return dist_version(mod)
        except Exception:  # noqa: BLE001 - optional packages
            return None

    env = {
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "npcrepro": npcrepro.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": version("scipy"),
        "pandas": version("pandas"),
        "SimpleITK": version("SimpleITK"),
        "monai": version("monai"),
        "git": git_revision(),
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "world_size": D.world_size(),
    }
    return env


def job_dir(run: str | os.PathLike, method: str, fold: int, seed: int) -> Path:
    """One job's folder in a run folder: ``<run>/<method>/fold_<fold>/seed_<seed>``."""
    return Path(run) / method / f"fold_{fold}" / f"seed_{seed}"


class RunFolder:
    """A run folder (see module docstring). Make one with :meth:`create`, reopen with :meth:`open`."""

    def __init__(self, path: str | os.PathLike, *, writer: bool | None = None):
        self.path = Path(path)
        self.writer = D.is_main() if writer is None else writer

    # ---------------------------------------------------------------------- creation
    @classmethod
    def create(cls, root: str | os.PathLike = "runs", profile: str = "cpu", paper: str = "misc",
               name: str = "run", *, params: Mapping | None = None, device: str | None = None,
               stamp: str | None = None) -> "RunFolder":
        """Make ``<root>/<profile>/<paper>/<stamp>-<name>[-k]/`` and write params/environment.

        Under torchrun, rank 0 creates the folder and every rank gets its path.
        """
        if D.env_info().distributed and not D.is_distributed():
            D.setup()  # under torchrun: join the group so that rank 0 can hand out the path
        path = None
        if D.is_main():
            base = Path(root) / profile / paper
            base.mkdir(parents=True, exist_ok=True)
            stamp = stamp or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "run"
            k = 1
            while True:
                candidate = base / (f"{stamp}-{safe}" + (f"-{k}" if k > 1 else ""))
                try:
                    candidate.mkdir()
                    break
                except FileExistsError:
                    k += 1
            path = str(candidate)
        path = D.broadcast_object(path)
        run = cls(path)
        if params is not None:
            run.write_params(params)
        run.write_environment(device)
        run.mark_running()
        return run

    @classmethod
    def from_params(cls, P: Mapping, name: str = "run", *, paper: str | None = None) -> "RunFolder":
        """The run folder for resolved notebook parameters ``P``: a new one under
        ``P.out_dir/P.profile/<paper>/``, or, when ``P.resume`` names a run folder, that folder after
        checking it was made with the same parameters (``resume``, ``out_dir`` and ``device`` may
        differ). Raises ParameterError when they do not match, DataError when the folder is missing."""
        from npcrepro.errors import ParameterError

        paper = paper or P.get("paper") or "misc"
        resume = P.get("resume") or ""
        if not resume:
            return cls.create(P["out_dir"], P["profile"], paper, name, params=P, device=P.get("device"))
        run = cls.open(resume)
        try:
            old = run.read_params()
        except DataError:
            raise DataError(f"{run.path}: not a run folder (no params.json)") from None
        free = {"resume", "out_dir", "device"}
        new = to_jsonable(dict(P))
        if old.get("paper") and new.get("paper") and old["paper"] != new["paper"]:
            raise ParameterError(f"cannot resume {run.path}: it is a run of {old['paper']}, not of {new['paper']}")
        diff = sorted(k for k in set(old) | set(new) if k not in free and old.get(k) != new.get(k))
        if diff:
            k = diff[0]
            raise ParameterError(f"cannot resume {run.path}: parameter {k!r} was {old.get(k)!r}, now "
                                 f"{new.get(k)!r} ({len(diff)} difference(s): {', '.join(diff)})")
        if not run.done:
            run.mark_running()
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunFolder":
        """An existing run folder (DataError when missing)."""
        p = Path(path)
        if not p.is_dir():
            raise DataError(f"{p}: run folder not found")
        return cls(p)

    def sub(self, name: str) -> "RunFolder":
        """A sub-run (e.g. ``fold_0``), created if needed."""
        p = self.path / name
        if self.writer:
            p.mkdir(parents=True, exist_ok=True)
        return RunFolder(p, writer=self.writer)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------------- files
    @property
    def checkpoint_last(self) -> Path:
        return self.path / "checkpoint_last.pt"

    @property
    def checkpoint_best(self) -> Path:
        return self.path / "checkpoint_best.pt"

    def _json(self, name: str, data: Any) -> Path | None:
        if not self.writer:
            return None
        p = self.path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(p, json.dumps(to_jsonable(data), indent=2))
        return p

    def _read_json(self, name: str) -> Any:
        p = self.path / name
        if not p.exists():
            raise DataError(f"{p}: not found")
        return json.loads(p.read_text(encoding="utf-8"))

    def write_params(self, params: Mapping) -> Path | None:
        return self._json("params.json", dict(params))

    def read_params(self) -> dict:
        return self._read_json("params.json")

    def write_environment(self, device: str | None = None) -> Path | None:
        return self._json("environment.json", environment(device)) if self.writer else None

    def write_summary(self, summary: Mapping) -> Path | None:
        return self._json("summary.json", dict(summary))

    def read_summary(self) -> dict:
        return self._read_json("summary.json")

    def write_curves(self, rows: list[Mapping]) -> Path | None:
        """Rewrite curves.csv from the full history (small; keeps resume consistent)."""
        if not self.writer:
            return None
        import pandas as pd

        cols = ["iteration", "epoch", "stage", "lr", "train_loss", "val_loss", "throughput"]
        df = pd.DataFrame(list(rows))
        for c in cols:
            if c not in df:
                df[c] = np.nan
        df = df[cols + [c for c in df.columns if c not in cols]]
        p = self.path / "curves.csv"
        tmp = p.with_name(f".curves.csv.tmp{os.getpid()}")
        df.to_csv(tmp, index=False)
        os.replace(tmp, p)
        return p

    def read_curves(self):
        import pandas as pd

        return pd.read_csv(self.path / "curves.csv")

    def write_metrics(self, table) -> Path | None:
        """The per-case table (pandas DataFrame) as metrics.csv."""
        if not self.writer:
            return None
        p = self.path / "metrics.csv"
        tmp = p.with_name(f".metrics.csv.tmp{os.getpid()}")
        table.to_csv(tmp, index=False)
        os.replace(tmp, p)
        return p

    def read_metrics(self):
        import pandas as pd

        p = self.path / "metrics.csv"
        if not p.exists():
            raise DataError(f"{p}: not found")
        return pd.read_csv(p)

    def write_prediction(self, case: str, structure: str, array: np.ndarray, geometry, *,
                         suffix: str = ".nii.gz") -> Path | None:
        """``predictions/<case>/<structure>.nii.gz`` on the case's grid (bool -> uint8 mask)."""
        if not self.writer:
            return None
        from npcrepro import io

        arr = np.asarray(array)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        elif arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        return io.write(io.Volume.on_grid(arr, geometry),
                        self.path / "predictions" / case / f"{structure}{suffix}")

    def read_prediction(self, case: str, structure: str, suffix: str = ".nii.gz") -> np.ndarray:
        from npcrepro import io

        return io.read(self.path / "predictions" / case / f"{structure}{suffix}").array

    def mark_running(self) -> None:
        """Write ``RUNNING`` (this process and host) and forget an earlier failure: the run is
        (again) under way. Until it is marked done or failed, this process marks it failed when it
        exits."""
        if not self.writer:
            return
        _atomic_write_text(self.path / "RUNNING", json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(),
             "started": _dt.datetime.now().isoformat(timespec="seconds")}))
        self.forget_failure()
        _UNFINISHED.add(self.path)

    def forget_failure(self) -> None:
        """Remove ``FAILED``: a new attempt (a resume) is starting."""
        if self.writer:
            (self.path / "FAILED").unlink(missing_ok=True)

    def mark_done(self) -> None:
        if self.writer:
            _atomic_write_text(self.path / "DONE", _dt.datetime.now().isoformat(timespec="seconds"))
            for marker in ("RUNNING", "FAILED"):
                (self.path / marker).unlink(missing_ok=True)
            _UNFINISHED.discard(self.path)

    def mark_failed(self, reason: str) -> None:
        """Write ``FAILED`` with ``reason`` (first line kept) unless the run is already done. Best
        effort: called while an error propagates, it never raises one of its own (a full disk)."""
        _UNFINISHED.discard(self.path)
        if not self.writer or self.done:
            return
        lines = str(reason).strip().splitlines()
        try:
            _atomic_write_text(self.path / "FAILED", (lines[0] if lines else "failed") + "\n")
            (self.path / "RUNNING").unlink(missing_ok=True)
        except OSError:
            pass

    @property
    def done(self) -> bool:
        return (self.path / "DONE").exists()

    @property
    def status(self) -> str:
        """``"done"``, ``"failed"``, ``"running"``, or ``""`` (no marker: a sub-run not yet
        finished, or a folder older than these markers). A RUNNING marker whose process is gone
        (same host) reads as failed: the process was killed."""
        if self.done:
            return "done"
        if (self.path / "FAILED").exists():
            return "failed"
        try:
            info = json.loads((self.path / "RUNNING").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return ""
        same_host = info.get("host") == socket.gethostname()
        return "failed" if same_host and not _pid_alive(int(info.get("pid", -1))) else "running"


def find_runs(root: str | os.PathLike = "runs", profile: str | None = None,
              paper: str | None = None) -> list[Path]:
    """Run folders under ``root`` (optionally one profile/paper), oldest first."""
    base = Path(root)
    pattern = f"{profile or '*'}/{paper or '*'}/*"
    return sorted((p for p in base.glob(pattern) if p.is_dir() and (p / "params.json").exists()),
                  key=lambda p: p.name)


def latest_run(root: str | os.PathLike = "runs", profile: str | None = None,
               paper: str | None = None) -> Path | None:
    runs = find_runs(root, profile, paper)
    return runs[-1] if runs else None
