"""Facts across chapters: headline numbers, run times and provenance of the executed notebooks.

A chapter states its headline number with :func:`record_headline`; the number travels inside the
executed notebook as an output of MIME type :data:`HEADLINE_MIME` (next to a readable line). The
introduction and the reproducibility appendix read the executed notebooks of one profile
(``book/runs/<profile>/``) with :func:`read_headlines` and :func:`chapter_facts`, so every number they
show was computed by the chapter run that the book renders.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from npcrepro import pages as _pages
from npcrepro.errors import DataError

HEADLINE_MIME = "application/vnd.npcrepro.headline+json"
PAPERS = _pages.papers()


def headline_of(table: pd.DataFrame, method: str, *, column: str = "method", metric: str = "dice",
                case_column: str = "case") -> dict:
    """Per-patient mean of ``metric`` for rows where ``column == method`` (rows of one patient, e.g.
    several structures or rounds, are averaged first), then mean, sd and n over patients."""
    if column not in table.columns or metric not in table.columns:
        raise DataError(f"headline: table has no {column!r} or {metric!r} column")
    rows = table[table[column] == method]
    if rows.empty:
        raise DataError(f"headline: no rows with {column} == {method!r} "
                        f"(have: {', '.join(map(str, table[column].unique()))})")
    values = pd.to_numeric(rows[metric], errors="coerce")
    per_patient = values.groupby(rows[case_column]).mean() if case_column in rows else values
    v = per_patient[np.isfinite(per_patient)]
    return {"mean": float(v.mean()) if len(v) else math.nan,
            "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan, "n": int(len(v))}


def record_headline(paper: str, method: str, table: pd.DataFrame, *, column: str = "method",
                    metric: str = "dice", source: str = "chapter", data: str = "", label: str | None = None,
                    scope: str = "", nnunet: str = ""):
    """Display (and return) the headline record of ``paper``'s ``method`` from a per-case table.

    ``source``: "chapter" (the paper's own recipe) or "leaderboard" (the common protocol); ``scope``
    what the number is over (e.g. "GTVp", "11 structures"), shown where the metric or scope differ
    from the paper's headline (:func:`intro_table`); ``nnunet``: the leaderboard's verdict against
    nnU-Net with its difference (:func:`npcrepro.chapters.leaderboard.report.beats_nnunet`)."""
    from IPython.display import display

    rec = {"paper": paper, "method": label or method, "metric": metric, "source": source, "data": data,
           "scope": scope, "nnunet": nnunet, **headline_of(table, method, column=column, metric=metric)}
    # NaN is not JSON (the notebook would store it as the string "nan"): None instead
    rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
    mean = "n/a" if rec["mean"] is None else f"{rec['mean']:.3f}"
    sd = "" if rec["sd"] is None else f" ± {rec['sd']:.3f}"
    text = f"headline ({source}): {paper} {rec['method']} {metric} {mean}{sd} over {rec['n']} patients"
    display({HEADLINE_MIME: rec, "text/plain": text}, raw=True)
    return rec


def _notebook(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read executed notebook ({exc})") from None


def read_headlines(runs: str | Path) -> pd.DataFrame:
    """Every headline record in the executed notebooks under ``runs`` (``book/runs/<profile>``), with
    the notebook it came from. Empty frame when there are none."""
    rows = []
    for path in sorted(Path(runs).glob("*.ipynb")):
        if path.name.startswith(".") or path.name.endswith(".failed.ipynb"):
            continue
        for cell in _notebook(path).get("cells", []):
            for out in cell.get("outputs", []):
                rec = out.get("data", {}).get(HEADLINE_MIME)
                if rec:
                    rows.append({**rec, "notebook": path.stem})
    df = pd.DataFrame(rows, columns=["paper", "method", "metric", "source", "data", "scope", "nnunet", "mean", "sd",
                                     "n", "notebook"] if not rows else None)
    for col in ("scope", "nnunet"):  # records written before these were recorded
        if col not in df:
            df[col] = ""
    df["nnunet"] = df["nnunet"].fillna("")
    for col in ("mean", "sd", "n"):
        df[col] = pd.to_numeric(df[col], errors="coerce")  # None / "nan" (older outputs) -> NaN
    return df


#: The columns of :func:`chapter_facts`.
FACT_COLUMNS = ["chapter", "title", "profile", "data", "parameters", "seconds", "executed_at", "git", "device",
                "cpu", "cpu_count", "gpu", "python", "torch", "numpy", "npcrepro"]


def chapter_facts(runs: str | Path, chapters: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per executed chapter under ``runs``: title, profile, data, parameters that differ from
    the chapter's defaults, seconds, when, git revision, device, versions (from the metadata that
    :func:`npcrepro.book.execute` writes)."""
    from npcrepro.book import CHAPTERS

    chapters = chapters or CHAPTERS
    rows = []  # none (no chapter executed under ``runs``): an empty frame that still has the columns
    for name, title in chapters.items():
        path = Path(runs) / f"{name}.ipynb"
        if not path.exists():
            continue
        meta = _notebook(path).get("metadata", {}).get("npcrepro", {})
        env = meta.get("environment", {}) or {}
        git = env.get("git") or {}
        params = meta.get("parameters", {}) or {}
        rows.append({
            "chapter": name, "title": title, "profile": meta.get("profile"),
            "data": params.get("data", "phantom"),
            "parameters": ", ".join(f"{k}={v}" for k, v in params.items() if k != "profile") or "defaults",
            "seconds": meta.get("seconds"), "executed_at": meta.get("executed_at"),
            "git": (git.get("revision") or "")[:10] + (" (modified)" if git.get("dirty") else ""),
            "device": env.get("device") or "auto",
            "cpu": env.get("cpu"), "cpu_count": env.get("cpu_count"), "gpu": ", ".join(env.get("gpu") or []),
            "python": env.get("python"), "torch": env.get("torch"), "numpy": env.get("numpy"),
            "npcrepro": env.get("npcrepro"),
        })
    return pd.DataFrame(rows, columns=FACT_COLUMNS)


#: Words for the metrics a headline may carry.
METRIC_WORDS = {"dice": "hard DSC", "soft_dice": "soft DSC (Eq. 4)"}


def metric_words(metric: str, scope: str = "") -> str:
    """``"soft DSC (Eq. 4), 14 structures"``: a headline's metric and scope in words."""
    words = METRIC_WORDS.get(str(metric), str(metric))
    return f"{words}, {scope}" if scope else words


def _unlike(rec: Mapping[str, Any], reported: tuple[str, str]) -> str:
    """The note a reproduced cell carries when its metric or scope is not the reported headline's:
    soft beside soft and hard beside hard, or the difference said in the cell."""
    metric = str(rec.get("metric") or "dice")
    scope = "" if pd.isna(rec.get("scope")) else str(rec.get("scope") or "")
    if metric == reported[0] and (not reported[1] or scope == reported[1]):
        return ""
    return f" [{metric_words(metric, scope)}; reported: {metric_words(*reported)}]"


def intro_table(runs: str | Path, beside: str | Path | None = None) -> pd.DataFrame:
    """The five papers: headline reported numbers (from :mod:`npcrepro.papers`) next to this book's
    reproduction with the paper's recipe (its chapter) and under the common protocol (leaderboard).
    A reproduced number whose metric or scope is not the reported one's (luo2020 reports a soft DSC
    over 14 structures) says so in its cell.
    ``beside``: the executed chapters of another profile (``book/runs/gpu-lite``): one more column,
    "<profile>: paper's recipe", from their headlines ("no run yet" where a chapter has none), marked
    where its run read another phantom version than this code's (:func:`committed_marks`).
    "beats nnU-Net? (common protocol)": the leaderboard's verdict against nnU-Net on the same
    patients, from this book's run or else the ``beside`` profile's (:func:`_versus_nnunet`)."""
    from npcrepro import papers

    h = read_headlines(runs)
    other = read_headlines(beside) if beside is not None and Path(beside).exists() else None
    # the run folders beside the executed chapters: book/runs/folders beside book/runs/<profile>
    marks = committed_marks(Path(beside).name, Path(beside).parent / COMMITTED_RUNS.name) if other is not None else {}
    rows = []
    for paper in PAPERS:
        info = papers.info(paper)
        rep = papers.headline(paper)
        dsc = next(((m, v) for (m, k), v in rep.items() if k == "dsc"), (None, math.nan))
        where = papers.get(paper).HEADLINE[0]
        n = (getattr(info, "dataset", None) or {}).get("n_patients")
        reported = papers.headline_metric(paper)
        row = {"paper": paper, "method (as the paper names it)": dsc[0],
               "reported DSC": (f"{dsc[1]:.3f}" + (f" ({metric_words(*reported)})" if reported[0] != "dice"
                                                  else "")) if dsc[0] else "—",
               "reported in": f"{where}, {n} patients" if n else where}
        for source, col in (("chapter", "this book: paper's recipe"), ("leaderboard", "this book: common protocol")):
            sel = h[(h["paper"] == paper) & (h["source"] == source)] if len(h) else h
            if len(sel) and pd.notna(sel.iloc[-1]["mean"]):
                r = sel.iloc[-1]
                sd = "" if pd.isna(r["sd"]) else f" ± {r['sd']:.3f}"
                row[col] = f"{r['mean']:.3f}{sd} (n={int(r['n'])})" + _unlike(r, reported)
            elif len(sel):
                row[col] = "no finite value"
            else:
                row[col] = "not run"
        if beside is not None:
            sel = other[(other["paper"] == paper) & (other["source"] == "chapter")] if other is not None and len(other) else []
            row[f"{Path(beside).name}: paper's recipe"] = (
                _cell(dict(sel.iloc[-1][["mean", "sd", "n"]])) + _unlike(sel.iloc[-1], reported)
                + (f" [{marks[paper]}]" if marks.get(paper) else "") if len(sel) else "no run yet")
        row["beats nnU-Net? (common protocol)"] = _versus_nnunet(h, other, paper, beside)
        rows.append(row)
    return pd.DataFrame(rows)


def _versus_nnunet(h: pd.DataFrame, other: pd.DataFrame | None, paper: str, beside) -> str:
    """The intro's nnU-Net cell of ``paper``: the leaderboard's verdict in this book's run, else in
    the ``beside`` profile's committed run (named so), else why there is none."""
    from npcrepro.chapters.leaderboard.report import NO_NNUNET_ROW

    for table, where in ((h, ""), (other, f"{Path(beside).name}: " if beside is not None else "")):
        if table is None or not len(table):
            continue
        sel = table[(table["paper"] == paper) & (table["source"] == "leaderboard")]
        cell = str(sel.iloc[-1]["nnunet"]) if len(sel) else ""
        if cell and cell != NO_NNUNET_ROW:
            return where + cell
    return "not run here (the leaderboard trains nnU-Net at gpu-lite and gpu)"


def committed_marks(profile: str = "gpu-lite", folders: str | Path | None = None) -> dict[str, str]:
    """chapter -> :func:`other_phantom`'s mark of its committed ``profile`` runs (under ``folders``,
    default :data:`COMMITTED_RUNS`) that read another phantom version than this code's; chapters whose
    runs read this one are left out."""
    marks: dict[str, str] = {}
    for (chapter, _), run in sorted(newest_results(folders or COMMITTED_RUNS, profile).items()):
        mark = other_phantom(run)
        if mark and chapter not in marks:
            marks[chapter] = mark
    return marks


def profile_note(profile: str = "gpu-lite") -> str:
    """One line on the committed executed chapters of ``profile`` (``book/runs/<profile>/``): which
    exist, on which GPU, in how many minutes and on which phantom where not this code's
    (:func:`committed_marks`), and which training chapters have none yet."""
    from npcrepro.book import CHAPTERS
    from npcrepro.chapters import MODULES
    from npcrepro.phantom import GENERATOR_VERSION

    have = profile_chapters(profile)
    facts = chapter_facts(Path("book", "runs", profile), {c: c for c in have}).set_index("chapter")
    marks = committed_marks(profile)
    done = [f"{c} ({facts.loc[c, 'gpu'] or facts.loc[c, 'device']}, {float(facts.loc[c, 'seconds']) / 60:.1f} min"
            + (f"; {marks[c]}" if marks.get(c) else "") + ")" for c in have]
    missing = [c for c in CHAPTERS if c in MODULES and c not in have]
    again = (f" Those made on another phantom than this code's (version {GENERATOR_VERSION}) show other "
             "patients' images and reference contours, and wait to be trained again." if marks else "")
    return (f"Chapters executed at the {profile} profile and committed: "
            + (", ".join(done) if done else "none yet") + "; "
            + (f"none yet for {', '.join(missing)}." if missing else "every chapter has one.") + again)


def timing_table(runs: str | Path) -> pd.DataFrame:
    """Seconds per executed chapter as recorded when each was executed, their sum, and the wall-clock
    span from the first start to the last end (less than the sum when chapters ran side by side;
    it spans earlier builds too when some chapters were up to date)."""
    f = chapter_facts(runs)
    if f.empty:
        return pd.DataFrame(columns=["chapter", "seconds", "executed_at", "minutes"])
    t = f[["chapter", "seconds", "executed_at"]].copy()
    t["seconds"] = t["seconds"].astype(float)
    end = pd.to_datetime(t["executed_at"], errors="coerce", utc=True)
    start = end - pd.to_timedelta(t["seconds"], unit="s")
    total = float(t["seconds"].sum())
    span = (end.max() - start.min()).total_seconds() if end.notna().all() else math.nan
    extra = pd.DataFrame([{"chapter": "sum", "seconds": total, "executed_at": ""},
                          {"chapter": "wall clock", "seconds": span, "executed_at": ""}])
    t = pd.concat([t, extra], ignore_index=True)
    t["minutes"] = (t["seconds"] / 60).round(2)
    t["seconds"] = t["seconds"].round(1)
    return t


def fig_timing(times: pd.DataFrame, profile: str):
    """Horizontal bars of minutes per chapter from :func:`timing_table`, titled with their sum and the
    wall-clock span. Returns the figure."""
    import matplotlib.pyplot as plt

    if times.empty:
        fig, ax = plt.subplots(figsize=(7, 1))
        ax.axis("off")
        ax.text(0, 0.5, f"no chapter executed at the {profile} profile yet (make book, or npcrepro run)",
                fontsize=10, va="center")
        return fig
    t = times[~times["chapter"].isin(["sum", "wall clock"])]
    m = times.set_index("chapter")["minutes"]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(t) + 1))
    ax.barh(t["chapter"], t["minutes"], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("minutes")
    ax.set_title(f"{profile} profile: {m['sum']:.1f} min of chapters, {m['wall clock']:.1f} min wall clock",
                 fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def run_folders(out_dir: str | Path, profile: str) -> pd.DataFrame:
    """The newest run folder of each chapter under ``<out_dir>/<profile>/`` (read through
    :class:`~npcrepro.engine.results.Results`): chapter, run, status, methods x folds x seeds, git
    revision (``*`` when the tree had uncommitted changes), device and torch version from its
    ``environment.json``. Empty frame when there are none."""
    from npcrepro.engine.results import find_results

    cols = ["chapter", "run", "status", "jobs", "git", "device", "torch"]
    rows = []
    for res in find_results(out_dir, profile, done=False):
        env = res.environment
        git = env.get("git") if isinstance(env.get("git"), dict) else {}
        rev = (git.get("revision") or "")[:10]
        rows.append({"chapter": res.chapter, "run": res.path.name, "status": res.status,
                     "jobs": f"{len(res.methods)} x {res.folds} x {len(res.seeds)}",
                     "git": rev + ("*" if rev and git.get("dirty") else ""),
                     "device": env.get("device"), "torch": env.get("torch")})
    df = pd.DataFrame(rows, columns=cols)
    return df.groupby("chapter", sort=False).tail(1).reset_index(drop=True)


#: The columns of :func:`convergence_table`.
CONVERGENCE_COLUMNS = ["chapter", "run", "method", "dice at half budget", "dice at full budget", "difference",
                       "converged", "difference low", "difference high", "reading", "collapsed seeds"]


def newest_results(out_dir: str | Path, profile: str) -> dict:
    """The newest finished run of each chapter and run name (``<stamp>-<name>``) under
    ``<out_dir>/<profile>/``: (chapter, name) -> :class:`~npcrepro.engine.results.Results`."""
    from npcrepro.engine.results import find_results

    return {(res.chapter, res.path.name.split("-", 2)[-1]): res for res in find_results(out_dir, profile)}


def other_phantom(run, version: int | None = None) -> str:
    """'' where ``run`` (:class:`~npcrepro.engine.results.Results`) read the phantom of ``version``
    (default this code's :data:`~npcrepro.phantom.GENERATOR_VERSION`) or real data; else a short mark
    saying which phantom it read: "phantom version 1" or "phantom version not recorded". Numbers of
    two versions are of other patients' images and reference contours."""
    from npcrepro.phantom import GENERATOR_VERSION

    if not run.on_phantom:
        return ""
    version = GENERATOR_VERSION if version is None else version
    had = run.phantom_version
    if had == version:
        return ""
    return f"phantom version {had}" if had is not None else "phantom version not recorded"


def convergence_table(out_dir: str | Path, profile: str, tolerance: float = 0.03) -> pd.DataFrame:
    """Every trained network of the newest run of each chapter and run name (``<stamp>-<name>``)
    under ``<out_dir>/<profile>/``: chapter, run name, method, mean DSC at half and at the full
    budget, their difference and the flag ``converged`` (|difference| <= ``tolerance``, None where
    no half-budget score exists), the difference's 95 % bootstrap interval and its ``reading``, from
    :meth:`Results.convergence`. Empty frame when there are none."""
    frames = []
    for (chapter, name), res in newest_results(out_dir, profile).items():
        c = res.convergence(tolerance=tolerance, labels=True)
        if len(c):
            c.insert(0, "run", name)
            c.insert(0, "chapter", chapter)
            frames.append(c[CONVERGENCE_COLUMNS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=CONVERGENCE_COLUMNS)


#: The columns of :func:`flags_table`.
FLAG_COLUMNS = ["chapter", "run", "method", "seed", "dice at half budget", "dice at full budget", "drop",
                "volume off", "cases", "flag"]


def flags_table(out_dir: str | Path, profile: str) -> pd.DataFrame:
    """Every trained network (method and seed) of the newest run of each chapter and run name under
    ``<out_dir>/<profile>/`` with its collapse flag (:meth:`Results.flags`); empty when there is none."""
    frames = []
    for (chapter, name), res in newest_results(out_dir, profile).items():
        f = res.flags(labels=True)
        if len(f):
            frames.append(f.assign(chapter=chapter, run=name)[FLAG_COLUMNS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FLAG_COLUMNS)


#: The columns of :func:`time_budget` (minutes summed over a run's jobs).
BUDGET_COLUMNS = ["chapter", "run", "device", "threads", "cores", "jobs", "preparing", "training", "predicting",
                  "rest", "all jobs", "training share"]


def time_budget(out_dir: str | Path, profile: str) -> pd.DataFrame:
    """Where the jobs' time went in the newest run of each chapter and run name under
    ``<out_dir>/<profile>/``, in minutes summed over the run's jobs (from each job's training record,
    :func:`npcrepro.engine.experiment.run_job`): ``preparing`` the cases, ``training`` (the optimiser's
    iterations, validation included), ``predicting`` the test cases at the full budget, and the ``rest``
    (the half-budget check's predictions, scoring both, writing masks); ``training share`` is training
    over ``all jobs``. Jobs that ran side by side overlap in wall-clock time, so a run's minutes here
    exceed its wall clock by about the jobs at once. ``device``, ``threads`` and ``cores`` are the device,
    torch threads and CPU cores of the run's environment record (the threads its jobs trained on when
    each ran on the process's threads). A last row ``all`` sums the runs; empty frame (with the columns)
    when no run recorded its jobs' seconds."""
    needed = ["train_seconds", "job_seconds", "prepare_seconds", "infer_seconds"]
    rows = []
    for (chapter, name), res in newest_results(out_dir, profile).items():
        t = res.training
        if t is None or not len(t) or any(c not in t for c in needed):
            continue
        s = {c: float(pd.to_numeric(t[c], errors="coerce").sum()) / 60 for c in needed}
        env = res.environment
        rows.append({"chapter": chapter, "run": name, "device": env.get("device"),
                     "threads": env.get("torch_threads"), "cores": env.get("cpu_count"), "jobs": len(t),
                     "preparing": s["prepare_seconds"],
                     "training": s["train_seconds"] - s["prepare_seconds"], "predicting": s["infer_seconds"],
                     "rest": s["job_seconds"] - s["train_seconds"] - s["infer_seconds"],
                     "all jobs": s["job_seconds"]})
    if not rows:
        return pd.DataFrame(columns=BUDGET_COLUMNS)
    df = pd.DataFrame(rows)
    labels = ["chapter", "run", "device", "threads", "cores"]  # not summed in the row "all"
    total = {**dict.fromkeys(labels, ""), "chapter": "all", **df.drop(columns=labels).sum().to_dict()}
    df = pd.concat([df, pd.DataFrame([total])], ignore_index=True)
    df["jobs"] = df["jobs"].astype(int)
    df["training share"] = df["training"] / df["all jobs"]
    return df[BUDGET_COLUMNS]


def time_floor(budget: pd.DataFrame, cores: int | None = None) -> str:
    """A sentence: the least wall-clock time in which a machine with ``cores`` CPU cores (default: the
    most the CPU runs recorded, the machine that trained them) could train
    the runs of ``budget`` (:func:`time_budget`), each job on the threads it had and every core busy
    from start to end: the training minutes times the threads, over the cores. What a build of these
    runs cannot go below on that machine without shorter or fewer trainings. Runs trained on another
    device than the CPU are left out (said in the sentence)."""
    runs = budget[budget["chapter"] != "all"]
    cpu = runs[runs["device"].astype(str).eq("cpu")]
    if cores is None and not cpu.empty:
        found = pd.to_numeric(cpu["cores"], errors="coerce").max()
        cores = None if pd.isna(found) else int(found)
    if cpu.empty or not cores:
        return "no run trained on the CPU recorded its jobs' training time"
    train = float(cpu["training"].sum())
    core_minutes = float((cpu["training"] * pd.to_numeric(cpu["threads"], errors="coerce").fillna(1)).sum())
    other = float(cpu["all jobs"].sum()) - train
    n = len(runs) - len(cpu)
    left = f" ({n} run{'s' if n > 1 else ''} on another device left out)" if n else ""
    def mins(x: float) -> str:
        return f"{x:.1f}" if x < 10 else f"{x:.0f}"

    return (f"the CPU runs' trainings sum to {mins(train)} min of job time ({mins(core_minutes)} core-minutes at "
            f"their threads per job); on {int(cores)} cores kept busy throughout they cannot take less than "
            f"{mins(core_minutes / int(cores))} min of wall clock, and preparing, predicting and scoring add "
            f"{mins(other)} min of job time{left}")


# ---------------------------------------------------------------------------------- committed runs
#: Run folders behind committed executed chapters (the gpu-lite chapters trained on a lent GPU), in the
#: layout of ``runs/`` (``<profile>/<chapter>/<stamp>-<name>/``) and relative to the book root (the
#: notebooks' working directory): their small files only (parameters, environment, splits, metrics,
#: curves, training records; no weights or predictions), so that a machine that did not train them can
#: read their numbers.
COMMITTED_RUNS = Path("book", "runs", "folders")


def run_root(out_dir: str | Path, profile: str) -> Path:
    """Where the pages of ``profile`` read its runs: ``out_dir`` when it holds run folders of that
    profile, else :data:`COMMITTED_RUNS` when it does (a gpu-lite book built on a machine that
    trained none of its chapters), else ``out_dir``."""
    for root in (Path(out_dir), COMMITTED_RUNS):
        if any((root / profile).glob("*/*/run.json")):
            return root
    return Path(out_dir)


def profile_chapters(profile: str, pages: str | Path | None = None) -> list[str]:
    """The training chapters (:data:`npcrepro.chapters.MODULES`, in book order) with an executed
    notebook of ``profile`` under ``pages`` (default ``book/runs/<profile>``)."""
    from npcrepro.book import CHAPTERS
    from npcrepro.chapters import MODULES

    pages = Path(pages) if pages is not None else Path("book", "runs", profile)
    return [c for c in CHAPTERS if c in MODULES and (pages / f"{c}.ipynb").exists()]


def _mean_dice(metrics: pd.DataFrame, method: str) -> dict:
    """Per-patient mean DSC of ``method`` over the structures its reference has (:func:`headline_of`)."""
    from npcrepro.evaluation import scored

    return headline_of(scored(metrics), method)


def _cell(h: dict) -> str:
    if not h["n"] or h["mean"] != h["mean"]:
        return "—"
    sd = "" if h["sd"] != h["sd"] else f" ± {h['sd']:.3f}"
    return f"{h['mean']:.3f}{sd} (n={h['n']})"


def beside(results, profile: str = "gpu-lite") -> pd.DataFrame:
    """This run's networks beside the committed run of ``profile`` of the same chapter and run name
    (:data:`COMMITTED_RUNS`; the executed chapter in ``book/runs/<profile>/`` names its GPU and wall
    time): per method, the mean DSC per patient (over the structures each patient has) ± sd over
    patients in each run, and the committed run's convergence reading. Where the committed run read
    another phantom version than this run (:func:`other_phantom`), its column header and the caption
    say so. Displays a one-line caption
    saying which GPU produced it and the table, or that no ``profile`` run of the chapter is committed
    yet; returns the table (empty when there is none, or when ``results`` is itself of ``profile``).
    A notebook ends the call with ``;`` (it displays what it has to say itself)."""
    from IPython.display import Markdown, display

    chapter, name = results.chapter, results.path.name.split("-", 2)[-1]
    cols = ["method", f"this run ({results.profile})", profile, f"{profile}: reading"]
    if results.profile == profile:
        return pd.DataFrame(columns=cols)
    other = newest_results(COMMITTED_RUNS, profile).get((chapter, name))
    if other is None:
        display(Markdown(f"No {profile} run of this chapter is committed yet (the introduction lists the "
                         f"chapters that have one)."))
        return pd.DataFrame(columns=cols)
    facts = chapter_facts(Path("book", "runs", profile), {chapter: chapter})
    gpu = facts["gpu"].iloc[0] if len(facts) and facts["gpu"].iloc[0] else "a GPU"
    minutes = f", the chapter in {float(facts['seconds'].iloc[0]) / 60:.1f} min" if len(facts) else ""
    reading = other.convergence(labels=False).set_index("method")["reading"] if len(other.metrics) else {}
    mine = results.phantom_version
    older = other_phantom(other, mine)
    if older:  # the header carries the mark too, wherever the table is read
        cols[2] = f"{profile} ({older})"
    rows = []
    for method in results.methods:
        if method not in set(results.metrics.get("method", [])):
            continue
        there = method in set(other.metrics.get("method", []))
        rows.append({"method": results.label(method),
                     cols[1]: _cell(_mean_dice(results.metrics, method)),
                     cols[2]: _cell(_mean_dice(other.metrics, method)) if there else "not trained",
                     cols[3]: (reading.get(method) or "—") if there else "—"})
    if older:
        older = (f" **Made on another phantom ({older}" + (f"; this run's: version {mine}" if mine else "")
                 + "):** its patients' images and reference contours are not this run's phantom's, so its "
                 "numbers are not this chapter's at another size; it waits to be trained again.")
    display(Markdown(f"**{profile}, {gpu}**: the same chapter at the papers' resolution on the "
                     f"{other.data_label} ({len(other.test_cases())} test patients{minutes}; run "
                     f"`{other.path.name}`). Mean DSC per patient ± sd; the two runs differ in patients, "
                     "image size and budget (see Deviations), so compare readings, not digits." + older))
    table = pd.DataFrame(rows, columns=cols)
    display(table)
    return table
