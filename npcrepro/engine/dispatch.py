"""Run independent notebook jobs (papermill) on a local process pool, a Dask cluster or SLURM.

>>> jobs = [Job("notebooks/li2018.ipynb", "book/runs/cpu/li2018.ipynb", {"profile": "cpu"}), ...]
>>> results = run_jobs(jobs)                                    # local processes
>>> results = run_jobs(jobs, backend="dask", address="tcp://scheduler:8786")
>>> results = run_jobs(jobs, backend="submitit", folder="slurm_logs",
...                    slurm={"partition": "gpu", "gpus_per_node": 1, "timeout_min": 240})

Dask (``dask.distributed``) and submitit are optional imports; asking for a backend that is not
installed raises :class:`~npcrepro.errors.ParameterError` saying what to install.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from npcrepro.errors import ParameterError

__all__ = ["Job", "JobResult", "run_jobs", "execute_job", "BACKENDS"]

BACKENDS = ("process", "serial", "dask", "submitit")


@dataclass
class Job:
    """One notebook execution: ``input`` notebook, ``output`` notebook, papermill ``parameters``."""

    input: str
    output: str
    parameters: dict = field(default_factory=dict)
    cwd: str | None = None
    kernel_name: str | None = None
    timeout: int | None = None      # per-cell execution timeout (s)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.output).stem


@dataclass
class JobResult:
    job: Job
    ok: bool
    seconds: float
    error: str | None = None        # one line
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.job.label}: {'ok' if self.ok else 'FAILED'} ({self.seconds:.1f} s)" + (
            f" - {self.error}" if self.error else "")


def execute_job(job: Job) -> JobResult:
    """Execute one job in this process (papermill); never raises, failures are in the result."""
    t0 = time.perf_counter()
    try:
        import papermill as pm

        Path(job.output).parent.mkdir(parents=True, exist_ok=True)
        kw = {}
        if job.kernel_name:
            kw["kernel_name"] = job.kernel_name
        if job.timeout:
            kw["execution_timeout"] = job.timeout
        pm.execute_notebook(job.input, job.output, parameters=dict(job.parameters),
                            cwd=job.cwd, progress_bar=False, **kw)
        return JobResult(job, True, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - report, do not crash the pool
        msg = _one_line(exc)
        return JobResult(job, False, time.perf_counter() - t0, msg, traceback.format_exc())


def _one_line(exc: BaseException) -> str:
    # papermill's PapermillExecutionError carries ename/evalue of the failing cell
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        return f"{ename}: {evalue}".splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


def run_jobs(jobs: Sequence[Job], backend: str = "process", *, max_workers: int | None = None,
             address: str | None = None, folder: str | os.PathLike = "submitit_logs",
             slurm: dict | None = None, progress: bool = True) -> list[JobResult]:
    """Execute ``jobs`` (independent) and return their results in input order.

    Parameters
    ----------
    backend : "process" | "serial" | "dask" | "submitit"
        "process": a local pool of ``max_workers`` spawned processes (default: cpu_count // 2, at least
        1); "serial": one after the other here; "dask": ``dask.distributed.Client(address)`` (a local
        cluster when ``address`` is None); "submitit": one SLURM job each (``slurm`` holds executor
        parameters such as partition, gpus_per_node, timeout_min; logs in ``folder``).
    """
    jobs = list(jobs)
    if backend not in BACKENDS:
        raise ParameterError(f"unknown backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if not jobs:
        return []
    if backend == "serial":
        return [_report(execute_job(j), progress) for j in jobs]
    if backend == "process":
        n = max_workers or max(1, (os.cpu_count() or 2) // 2)
        if n == 1 or len(jobs) == 1:
            return [_report(execute_job(j), progress) for j in jobs]
        out: dict[int, JobResult] = {}
        with cf.ProcessPoolExecutor(min(n, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(execute_job, j): i for i, j in enumerate(jobs)}
            for f in cf.as_completed(futs):
                out[futs[f]] = _report(f.result(), progress)
        return [out[i] for i in range(len(jobs))]
    if backend == "dask":
        try:
            from dask.distributed import Client
        except ImportError:
            raise ParameterError("backend 'dask' needs dask.distributed (pip install 'dask[distributed]')") from None
        client = Client(address) if address else Client(n_workers=max_workers or 1, threads_per_worker=1,
                                                          processes=True)
        try:
            futs = client.map(execute_job, jobs, pure=False)
            return [_report(r, progress) for r in client.gather(futs)]
        finally:
            client.close()
    # submitit
    try:
        import submitit
    except ImportError:
        raise ParameterError("backend 'submitit' needs submitit (pip install submitit)") from None
    executor = submitit.AutoExecutor(folder=str(folder))
    if slurm:
        executor.update_parameters(**slurm)
    with executor.batch():
        sub = [executor.submit(execute_job, j) for j in jobs]
    return [_report(s.result(), progress) for s in sub]


def _report(result: JobResult, progress: bool) -> JobResult:
    if progress:
        print(result, flush=True)
    return result
