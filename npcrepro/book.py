"""Execute chapter notebooks with papermill and build the Jupyter Book (execution off, offline).

Source notebooks live in ``notebooks/`` without outputs. ``execute`` runs one into
``book/runs/<profile>/<name>.ipynb``; the book renders those executed copies. An executed copy records
a fingerprint of what produced it (the source notebook, the parameters, the npcrepro sources), so
running the book again re-executes only chapters whose inputs changed.

A run with parameters of its own (``npcrepro run chen2020 -p seed 3``) never replaces the book's
copy: it goes to ``runs/notebooks/<profile>/<name>-<key>.ipynb`` (or ``output``), and the book
refuses to render a chapter whose recorded parameters are not the book's (:data:`BOOK_PARAMETERS`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from npcrepro import pages as _pages
from npcrepro.chapterlog import chapter_log
from npcrepro.errors import DataError, NpcreproError, ParameterError, did_you_mean
from npcrepro.paths import repo_root

#: Chapters in book order (:mod:`npcrepro.pages`): notebook name -> title. Each is notebooks/<name>.ipynb.
CHAPTERS: dict[str, str] = {k: p.title for k, p in _pages.pages().items()}
#: Chapters that read other chapters' outputs: they re-run when any of those changed, and run after them.
#: ``"*"``: every other chapter.
DEPENDS: dict[str, tuple[str, ...] | str] = {k: p.depends for k, p in _pages.pages().items() if p.depends}
#: Chapters that train on a process pool of their own (the leaderboard's ``workers``, one torch
#: thread each): they run alone and first, so that the pool does not oversubscribe the cores shared
#: with another chapter and the recorded time is what the chapter costs.
WIDE: frozenset[str] = frozenset(k for k, p in _pages.pages().items() if p.wide)
PROFILES = ("smoke", "cpu", "gpu", "gpu-lite")
#: Profiles whose chapters train on a GPU: their executed notebooks are committed (``book/runs/<profile>/``)
#: and rendered as they are; a machine without a GPU executes only :data:`READERS` for them.
GPU_PROFILES = ("gpu", "gpu-lite")
#: Pages that only read other pages' outputs (seconds anywhere, whatever the profile).
READERS: frozenset[str] = frozenset(_pages.keys("reader"))
#: The profile whose committed run each chapter shows beside its own, and the introduction all of
#: (:func:`fingerprint` re-executes a page when what it shows changes).
BESIDE = "gpu-lite"
#: The parameters a chapter of the book may have been executed with: its profile, and where its run
#: folders went (which changes no number).
BOOK_PARAMETERS = frozenset({"profile", "out_dir"})
KERNEL = "python3"
#: The kernel's own log (not the notebook's output) at ERROR: ipykernel 7 otherwise warns on every
#: start that its local TCP sockets are unencrypted, one line per chapter in the book's progress.
_KERNEL_ARGS = ["--IPKernelApp.log_level=ERROR"]


class ChapterFailed(NpcreproError):
    """A chapter notebook raised while executing; the partial output notebook is kept."""


def runs_dir(profile: str, root: Path | None = None) -> Path:
    return (root or repo_root()) / "book" / "runs" / profile


def user_notebook(name: str, profile: str, params: dict, root: Path | None = None) -> Path:
    """Where a run of ``name`` with parameters of its own goes (never the book's copy):
    ``<root>/runs/notebooks/<profile>/<name>-<key>.ipynb``, ``key`` a hash of the parameters."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return (root or repo_root()) / "runs" / "notebooks" / profile / f"{name}-{key}.ipynb"


def _check(name: str, profile: str) -> None:
    if name not in CHAPTERS:
        raise ParameterError(f"unknown chapter {name!r} (valid: {', '.join(CHAPTERS)}, all)."
                             + did_you_mean(name, [*CHAPTERS, "all"]))
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r} (valid: {', '.join(PROFILES)})."
                             + did_you_mean(profile, PROFILES))


def declared_parameters(name: str, root: Path | None = None) -> dict:
    """The parameters declared in the notebook's ``parameters`` cell (name -> default text)."""
    import papermill as pm

    path = (root or repo_root()) / "notebooks" / f"{name}.ipynb"
    return {k: v.get("default") for k, v in pm.inspect_notebook(str(path)).items()}


def _check_dataset(name: str, P) -> None:
    """A training chapter's ``data`` folder that is not there, not a dataset, or holds fewer cases than
    ``n_cases`` asks for: the DataError the notebook would raise, before its kernel starts (the phantom
    and "auto" are made or chosen inside the notebook)."""
    from npcrepro import profiles
    from npcrepro.chapters import MODULES
    from npcrepro.datasets import open_dataset

    data = P.get("data")
    if name not in MODULES or data is None or str(data) in ("phantom", "auto"):
        return  # a reading page (realdata, metrics) says on the page what data it did not find
    profiles.enough_cases(open_dataset(data), {**dict(P), "paper": name})


def check_parameters(name: str, params: dict, root: Path | None = None) -> None:
    """Raise ParameterError for names the chapter does not declare (papermill would only warn), and
    for values the parameter registry refuses (types, choices, ranges), and a ``data`` folder that is
    missing, not a dataset or too small for ``n_cases``: before a kernel starts or a run folder exists.
    Chapters in the registry are checked against it alone, as the notebook
    itself checks them (its parameters cell is generated from the registry); other pages against
    their parameters cell."""
    from npcrepro import profiles

    if name in profiles.papers():
        P = profiles.resolve(name, **params)
        _check_dataset(name, P)
        return
    declared = declared_parameters(name, root)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ParameterError(f"chapter {name!r}: unknown parameter(s) {', '.join(unknown)} "
                             f"(valid: {', '.join(declared)})." + did_you_mean(unknown[0], declared))


def _package_digest(root: Path) -> str:
    """Hash of the package's code and its data files (the pages' ``page.toml`` and development records)."""
    h = hashlib.sha256()
    pkg = root / "npcrepro"
    for p in sorted([*pkg.rglob("*.py"), *pkg.rglob("*.json"), *pkg.rglob("*.toml")]):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def dependencies(name: str) -> list[str]:
    """The chapters whose executed outputs ``name`` reads (see :data:`DEPENDS`)."""
    dep = DEPENDS.get(name, ())
    if dep == "*":
        return [n for n in CHAPTERS if n != name and DEPENDS.get(n) != "*"]
    return list(dep)


def fingerprint(name: str, profile: str, params: dict, root: Path | None = None) -> str:
    """Hash of everything an executed chapter depends on (source notebook, parameters, library, and
    the recorded fingerprints of the chapters it reads)."""
    root = root or repo_root()
    h = hashlib.sha256()
    h.update((root / "notebooks" / f"{name}.ipynb").read_bytes())
    h.update(json.dumps({"profile": profile, **params}, sort_keys=True, default=str).encode())
    h.update(_package_digest(root).encode())
    for dep in dependencies(name):
        h.update(f"{dep}={_recorded_fingerprint(runs_dir(profile, root) / f'{dep}.ipynb')}".encode())
    if profile != BESIDE:  # the committed gpu-lite run it shows beside its own (the intro: all of them)
        for nb in sorted(runs_dir(BESIDE, root).glob("*.ipynb" if name == "intro" else f"{name}.ipynb")):
            h.update(f"{BESIDE}/{nb.stem}={_recorded_fingerprint(nb)}".encode())
    return h.hexdigest()[:16]


def _recorded_fingerprint(path: Path) -> str | None:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return nb.get("metadata", {}).get("npcrepro", {}).get("fingerprint")


@dataclass
class ChapterResult:
    name: str
    profile: str
    output: Path
    seconds: float
    skipped: bool


def execute(name: str, profile: str = "cpu", params: dict | None = None, *, force: bool = False,
            output: Path | None = None, root: Path | None = None, log=print,
            prefix: str = "", log_output: bool = False) -> ChapterResult:
    """Execute ``notebooks/<name>.ipynb`` with papermill into ``book/runs/<profile>/<name>.ipynb``,
    or, when ``params`` holds anything, into :func:`user_notebook` (unless ``output`` is given).

    Skips the run when the existing output's fingerprint matches (unless ``force``). Parameters are
    checked first (:func:`check_parameters`: ParameterError). A failing chapter keeps its partial
    output and raises :class:`ChapterFailed`. ``log_output``: print the chapter's section, printed
    lines and training progress through ``log`` while it runs (:mod:`npcrepro.chapterlog`).
    """
    _check(name, profile)
    root = root or repo_root()
    params = dict(params or {})
    own = {k: v for k, v in params.items() if k != "profile"}
    params["profile"] = profile
    check_parameters(name, params, root)
    out = output or (user_notebook(name, profile, own, root) if own
                     else runs_dir(profile, root) / f"{name}.ipynb")
    fp = fingerprint(name, profile, params, root)
    if not force and out.exists() and _recorded_fingerprint(out) == fp:
        log(f"[book] {prefix}{name:<15} {profile:<5} up to date "
            f"({out.relative_to(root) if out.is_relative_to(root) else out})")
        return ChapterResult(name, profile, out, 0.0, True)
    import papermill as pm  # deferred: heavy import, only the book path needs it

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.running.ipynb")
    log(f"[book] {prefix}{name:<15} {profile:<5} executing ...")
    t0 = time.perf_counter()
    src = root / "notebooks" / f"{name}.ipynb"
    kernel_log = tmp.with_name(f"{tmp.stem}.kernel.log")
    failed = out.with_name(f"{out.stem}.failed.ipynb")
    try:
        with chapter_log(name, src, log) if log_output else contextlib.nullcontext((None, None)) as streams:
            pm.execute_notebook(str(src), str(tmp), parameters=params, kernel_name=KERNEL,
                                cwd=str(root), progress_bar=False, log_output=log_output,
                                stdout_file=streams[0], stderr_file=streams[1],
                                extra_arguments=_KERNEL_ARGS,
                                kernel_manager_class=kernel_manager_class(kernel_log))
    except pm.PapermillExecutionError as exc:
        if tmp.exists():
            os.replace(tmp, failed)
        err = ChapterFailed(f"chapter {name!r} ({profile}) failed in cell {exc.exec_count}: "
                            f"{exc.ename}: {exc.evalue.splitlines()[0] if exc.evalue else ''} "
                            f"(partial notebook: {failed}{_kept(kernel_log, failed)})")
        if exc.ename in ("ParameterError", "DataError"):
            err.exit_code = 2  # the chapter refused its input
        raise err from None
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            kernel_log.unlink(missing_ok=True)
        else:  # e.g. a dead kernel: keep its last words
            kept = _kept(kernel_log, failed)
            if kept:
                log(f"[book] {prefix}{name:<15} {profile:<5} failed{kept}")
        raise
    kernel_log.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    from npcrepro.engine.runs import environment

    nb = json.loads(tmp.read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):  # papermill's copy of the parameters: behind a toggle in the book
        tags = cell.get("metadata", {}).get("tags", [])
        if "injected-parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
    nb.setdefault("metadata", {})["npcrepro"] = {
        "fingerprint": fp, "profile": profile, "parameters": params,
        "seconds": round(seconds, 1), "executed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(_resolved_device(params.get("device", "auto"))),
    }
    tmp.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    log(f"[book] {prefix}{name:<15} {profile:<5} done in {_mmss(seconds)}")
    return ChapterResult(name, profile, out, seconds, False)


def kernel_manager_class(log_path: Path):
    """A Jupyter kernel manager class whose kernels write their own stdout and stderr to ``log_path``
    and draw no progress bars (``NPCREPRO_PROGRESS_BARS=0`` in their environment).

    ipykernel captures the cells' file descriptors 1 and 2 (the output of C code and of child
    processes, such as the leaderboard's training workers), sends it to the notebook, and also copies
    every byte to the kernel process's own stdout or stderr. On the terminal of ``npcrepro book`` that
    copy printed each worker's progress line a second time, without the chapter's name; in the file it
    is kept for a chapter that fails (:func:`execute` deletes it otherwise).
    """
    from jupyter_client import AsyncKernelManager

    class KernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            # no tqdm widget in an executed page, a dead control once the kernel is gone
            # (npcrepro.paths.progress_bar); set for this kernel only, not in this process's environment
            kw["env"] = {**(kw.get("env") or os.environ), "NPCREPRO_PROGRESS_BARS": "0"}
            with open(log_path, "ab") as f:  # the kernel holds its own descriptor of the file
                kw.setdefault("stdout", f)
                kw.setdefault("stderr", f)
                return await super()._async_launch_kernel(kernel_cmd, **kw)

    return KernelManager


def _kept(kernel_log: Path, failed: Path) -> str:
    """Keep a failed chapter's kernel output (``kernel_log``) beside its partial notebook ``failed``:
    ``"; kernel output: <path>"``, or "" when the kernel wrote nothing."""
    if not kernel_log.exists():
        return ""
    if kernel_log.stat().st_size == 0:
        kernel_log.unlink()
        return ""
    dest = failed.with_name(f"{failed.stem}.kernel.log")
    os.replace(kernel_log, dest)
    return f"; kernel output: {dest}"


def _resolved_device(requested: str) -> str:
    """The device a chapter asked for as torch names it (``"auto"`` -> ``"cpu"`` or ``"cuda"``): the
    kernels run on this machine, in this environment, so they resolve it the same way."""
    from npcrepro.engine.device import resolve_device

    try:
        return str(resolve_device(requested))
    except NpcreproError:
        return str(requested)


def execute_all(profile: str = "cpu", names: Iterable[str] | None = None, params: dict | None = None,
                *, force: bool = False, root: Path | None = None, log=print,
                jobs: int = 1, log_output: bool = False) -> list[ChapterResult]:
    """Execute chapters (all by default), ``jobs`` at a time, and return their results in book order.

    Chapters that read others' outputs (:data:`DEPENDS`) wait for those; :data:`WIDE` chapters run
    alone. Independent chapters start longest first (by the run time recorded in their previous
    output), which keeps the last minutes from being one long chapter running alone. The first
    failure stops new starts; chapters already running finish, then it is raised.
    """
    import concurrent.futures as cf
    import threading

    root = root or repo_root()
    order = execution_order(names or CHAPTERS)
    n = len(order)
    number = {name: i for i, name in enumerate(order, 1)}
    expected = {name: _recorded_seconds(runs_dir(profile, root) / f"{name}.ipynb") for name in order}
    waiting = sorted(order, key=lambda nm: (nm in DEPENDS, nm not in WIDE, -expected[nm]))
    results: dict[str, ChapterResult] = {}
    running: dict = {}
    lock = threading.Lock()
    jobs = max(1, int(jobs))
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    if jobs > 1:  # kernels inherit the environment: cap each chapter's share of the cores
        os.environ.update({k: threads for k in _THREAD_VARS})
    t0 = time.perf_counter()
    failure: BaseException | None = None

    def ready(name: str) -> bool:
        return all(d in results for d in dependencies(name) if d in order)

    def say(msg: str) -> None:
        with lock:
            log(msg)

    try:
        with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
            while waiting or running:
                while failure is None and len(running) < jobs:
                    name = next_chapter(waiting, list(running.values()), ready)
                    if name is None:
                        break
                    waiting.remove(name)
                    running[pool.submit(execute, name, profile, params, force=force, root=root, log=say,
                                        prefix=f"{number[name]:>2}/{n} ", log_output=log_output)] = name
                if not running:
                    break
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    try:
                        results[name] = fut.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised after the others finish
                        failure = failure or exc
                        continue
                    if not results[name].skipped:
                        say(f"[book]       {len(results)}/{n} chapters ready, elapsed {_mmss(time.perf_counter() - t0)}")
                if failure is not None:
                    waiting.clear()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if failure is not None:
        raise failure
    return [results[nm] for nm in order]


def next_chapter(waiting: Sequence[str], running: Sequence[str], ready) -> str | None:
    """The first chapter of ``waiting`` (in priority order) that may start now, or None.

    ``ready(name)`` tells whether its inputs exist. A :data:`WIDE` chapter starts only on an idle
    machine and nothing starts beside it; while one is next in line and waits for the machine to
    empty, nothing else starts either, so it is not postponed indefinitely.
    """
    if any(nm in WIDE for nm in running):
        return None
    for name in waiting:
        if not ready(name):
            continue
        if name in WIDE:
            return None if running else name
        return name
    return None


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


#: Rough cpu-profile minutes per chapter on 2 cores (its ``page.toml``), to start the long ones first
#: when no earlier run recorded its time.
_EXPECTED_MINUTES = {k: p.minutes for k, p in _pages.pages().items()}


def _recorded_seconds(path: Path) -> float:
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        return float(nb["metadata"]["npcrepro"]["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return 60.0 * _EXPECTED_MINUTES.get(path.stem, 0.5)


def default_jobs() -> int:
    """Chapters to execute at once: one per CPU core, at most 4. Each then gets
    ``cpu_count // jobs`` threads (:func:`execute_all` sets ``OMP_NUM_THREADS`` for its kernels), so
    torch's OpenMP threads never outnumber the cores; on a loaded 2-core machine that
    oversubscription slows torch by 7-100x."""
    return max(1, min(4, (os.cpu_count() or 1)))


def execution_order(names: Iterable[str]) -> list[str]:
    """``names`` in book order, except that chapters reading others' outputs (:data:`DEPENDS`) come
    after everything they read."""
    names = list(names)
    for n in names:
        if n not in CHAPTERS:
            raise ParameterError(f"unknown chapter {n!r} (valid: {', '.join(CHAPTERS)}, all)."
                                 + did_you_mean(n, [*CHAPTERS, "all"]))
    plain = [n for n in CHAPTERS if n in names and n not in DEPENDS]
    readers = [n for n in CHAPTERS if n in names and n in DEPENDS]
    readers.sort(key=lambda n: DEPENDS[n] == "*")  # those reading everything go last
    return plain + readers


def _mmss(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d}"


#: Book pages that are not notebooks (``book/*.md``): part -> (before its notebooks, after them).
_STATIC_PAGES = {"Foundations": (("book/protocol", "book/metrics"), ()), "Appendix": ((), ("book/using",))}


def toc_text(profile: str = "cpu", keep=None) -> str:
    """The table of contents, generated from the pages (:mod:`npcrepro.pages`: each notebook in its
    ``part``, in book order; the ``root`` page first) and :data:`_STATIC_PAGES`, pointing at
    ``book/runs/<profile>/``. ``keep(key)``: whether a notebook page goes in (default: every one); a part
    left without pages is left out."""
    found = {k: p for k, p in _pages.pages().items() if keep is None or p.part == "root" or keep(k)}
    root_page = next(k for k, p in found.items() if p.part == "root")
    lines = ["# Table of contents, generated from npcrepro/chapters/*/page.toml by npcrepro.book.toc_text",
             "# (`make book` rewrites it when a page is added; a test keeps the committed copy in step).",
             "format: jb-book", f"root: book/runs/{profile}/{root_page}", "parts:"]
    for part in _pages.PARTS:
        before, after = _STATIC_PAGES.get(part, ((), ()))
        files = [*before, *(f"book/runs/{profile}/{k}" for k, p in found.items() if p.part == part), *after]
        if part != "root" and files:
            lines += [f"  - caption: {part}", "    chapters:", *(f"      - file: {f}" for f in files)]
    return "\n".join(lines) + "\n"


def toc_for(profile: str, root: Path | None = None) -> Path:
    """The table of contents for ``profile`` (:func:`toc_text`): ``_toc.yml`` for cpu (rewritten only
    when the pages changed), else ``_toc.<profile>.yml``; for a GPU profile only the chapters executed
    (on a GPU) and committed."""
    root = root or repo_root()
    executed = (lambda k: (runs_dir(profile, root) / f"{k}.ipynb").exists()) if profile in GPU_PROFILES else None
    text = toc_text(profile, keep=executed)
    out = root / ("_toc.yml" if profile == "cpu" else f"_toc.{profile}.yml")
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        out.write_text(text, encoding="utf-8")
    return out


def has_gpu() -> bool:
    """Whether this machine's torch sees a CUDA GPU (where a gpu profile's chapters can train)."""
    import torch

    return torch.cuda.is_available()


def check_book_notebook(path: Path, profile: str) -> None:
    """DataError unless the executed notebook at ``path`` was made for the book's ``profile`` with
    nothing but :data:`BOOK_PARAMETERS` (a run with parameters of its own is not a chapter)."""
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
        recorded = nb["metadata"]["npcrepro"]["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{path}: not an executed chapter (no recorded parameters); re-run it with "
                        f"`npcrepro run {path.stem} --profile {profile} --force`") from None
    foreign = {k: v for k, v in recorded.items() if k not in BOOK_PARAMETERS}
    if recorded.get("profile") != profile or foreign:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(foreign.items())) or \
            f"profile={recorded.get('profile')!r}"
        raise DataError(f"{path}: executed with {shown}, not the book's parameters; the book will not "
                        f"render it (re-run it with `npcrepro run {path.stem} --profile {profile} "
                        "--force`)")


def build_html(profile: str = "cpu", *, root: Path | None = None, quiet: bool = True,
               log=print) -> Path:
    """Run ``jupyter-book build`` (execution off) and return the path of ``index.html``."""
    root = root or repo_root()
    missing = [n for n in CHAPTERS if not (runs_dir(profile, root) / f"{n}.ipynb").exists()]
    needed = [n for n in missing if profile not in GPU_PROFILES or n == "intro"]
    if needed:
        raise DataError(f"no executed notebooks for {', '.join(needed)} in "
                        f"{runs_dir(profile, root)} (run `npcrepro run all --profile {profile}`)")
    if missing:
        log(f"[book] {profile}: no executed {', '.join(missing)} (left out of this book)")
    for name in CHAPTERS:
        if name not in missing:
            check_book_notebook(runs_dir(profile, root) / f"{name}.ipynb", profile)
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root),
           "--toc", str(toc_for(profile, root)), "--path-output", str(root)]
    if quiet:
        cmd.append("--quiet")
    from npcrepro.webassets import ensure_web_assets

    ensure_web_assets(root, log=log)  # widget manager, require.js and MathJax, vendored (no CDN)
    log(f"[book] building HTML ({profile}) ...")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        logfile = root / "_build" / "jupyter-book.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        logfile.write_text(proc.stdout + proc.stderr, encoding="utf-8")
        lines = (proc.stdout + proc.stderr).strip().splitlines() or [""]
        raise NpcreproError(f"jupyter-book build failed (exit {proc.returncode}): {lines[-1][:200]} "
                            f"(full output: {logfile})")
    index = root / "_build" / "html" / "index.html"
    from npcrepro.viz.static_viewer import EXPORT_DIR, publish

    _, missing = publish(runs_dir(profile, root), index.parent / "book" / "runs" / profile,
                         [root / "runs" / profile / EXPORT_DIR])  # the static viewer's NIfTI files
    for line in missing:
        log(f"[book] warning: {line}")
    log(f"[book] HTML built in {time.perf_counter() - t0:.0f} s")
    return index


def book(profile: str = "cpu", *, force: bool = False, run_missing: bool = True,
         names: Sequence[str] | None = None, root: Path | None = None, log=print,
         jobs: int | None = None, log_output: bool = False) -> Path:
    """Execute what is missing or stale for ``profile`` and build the HTML. Returns index.html.

    For ``gpu`` and ``gpu-lite`` (:data:`GPU_PROFILES`), committed executed notebooks are rendered as
    they are; missing chapters are executed only where there is a GPU (:func:`has_gpu`), else left out
    of the book (its table of contents lists what exists), and the pages that read the others
    (:data:`READERS`) are executed again to follow what is committed. ``jobs``: chapters executed at once
    (default :func:`default_jobs`); ``log_output``: see :func:`execute`.
    """
    root = root or repo_root()
    if profile not in PROFILES:
        raise ParameterError(f"unknown profile {profile!r} (valid: {', '.join(PROFILES)})."
                             + did_you_mean(profile, PROFILES))
    if jobs is not None and jobs < 1:
        raise ParameterError(f"jobs must be at least 1, got {jobs}")
    t0 = time.perf_counter()
    if run_missing:
        todo = list(names or CHAPTERS)
        if profile in GPU_PROFILES:
            todo = [n for n in todo if not (runs_dir(profile, root) / f"{n}.ipynb").exists()
                    or (n in READERS and not names)]  # the readers follow what is committed
            if not has_gpu():
                left = [n for n in todo if n not in READERS]
                if left:
                    log(f"[book] {profile}: no GPU here, so {', '.join(left)} {'is' if len(left) == 1 else 'are'} "
                        f"not executed (run them on a GPU: `npcrepro run <chapter> --profile {profile}`)")
                todo = [n for n in todo if n in READERS]
        execute_all(profile, todo, force=force, root=root, log=log,
                    jobs=default_jobs() if jobs is None else jobs, log_output=log_output)
    index = build_html(profile, root=root, log=log)
    log(f"[book] total {time.perf_counter() - t0:.0f} s")
    return index
