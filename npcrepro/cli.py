"""The npcrepro command: make data, run the chapters, score models and build the book.

Subcommands: phantom, convert, export, predict, splits, score, nnunet, run, plan, params, book, quality,
leftovers, bench.

Every subcommand reports an error on one line (``npcrepro <command>: error: ...``) and exits with
status 2 for bad input or parameters (a bad argument, path, dataset or parameter value, also when a
chapter refuses its input) and 1 for any other failure (an unwritable output, a failing chapter).
``NPCREPRO_DEBUG=1`` shows the traceback of an unexpected error instead. Paths given on the command
line, ``-p`` path parameters included, are taken relative to the directory the command runs in.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import sys
import time
from pathlib import Path

from npcrepro.errors import NpcreproError, ParameterError, did_you_mean


def _value(text: str):
    """Parse a ``-p NAME VALUE`` value: Python literals (3, 0.5, True, [1, 2]) or a plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _params(pairs) -> dict:
    """``-p`` pairs as parameters, path parameters made absolute against the working directory (a
    chapter's kernel runs in the repository root)."""
    from npcrepro.profiles import absolute_paths

    return absolute_paths({name: _value(value) for name, value in (pairs or [])})


def cmd_phantom(args) -> int:
    from npcrepro import phantom

    ds = phantom.generate(args.out, args.cases, args.seed, preset=args.preset,
                          overwrite=args.overwrite, progress=True)
    print(f"wrote {len(ds)} phantom cases to {ds.root} (channels {', '.join(ds.channels)}; "
          f"{len(ds.structures)} structures)")
    return 0


def cmd_convert(args) -> int:
    from npcrepro.datasets import adapters

    summary = adapters.convert(args.source, args.src, args.dst, overwrite=args.overwrite,
                               progress=True, limit=args.limit, **_params(args.option))
    print(summary)
    return 0


def cmd_export(args) -> int:
    from npcrepro.dicom.export import export

    print(export(args.masks, args.dicom, args.out, kind=args.format, series_uid=args.series,
                 overwrite=args.overwrite))
    return 0


def cmd_predict(args) -> int:
    from npcrepro.predict import predict

    fold = args.fold if args.fold == "ensemble" else _int(args.fold, "--fold")
    print(predict(args.run, args.input, args.out, method=args.method, fold=fold, seed=args.seed,
                  device=args.device, export=args.export, any_spacing=args.any_spacing,
                  overwrite=args.overwrite, progress=True))
    return 0


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ParameterError(f"{what} must be a number or 'ensemble', got {text!r}") from None


def cmd_splits(args) -> int:
    from npcrepro.datasets.nnunet_raw import write_splits_final
    from npcrepro.engine.folds import chapter_run, recorded_folds

    source = Path(args.source)
    if not source.exists() and args.source in _chapter_names():
        source = chapter_run(args.source, args.runs, args.profile, track=args.track)
    folds = recorded_folds(source)
    path = write_splits_final(folds, args.out, book_val=args.book_val, dataset=args.dataset,
                              overwrite=args.overwrite)
    print(f"wrote {path}: {len(folds)} fold(s) from {source}")
    for i, f in enumerate(folds):
        extra = f" (book validation: {len(f.val)}, {args.book_val})" if f.val else ""
        print(f"  fold {i}: train {len(f.train)}{extra}, val = the book's test {len(f.test)}")
    return 0


def _chapter_names() -> list[str]:
    from npcrepro.book import CHAPTERS

    return list(CHAPTERS)


def cmd_score(args) -> int:
    from npcrepro import scoring
    from npcrepro.chapters.leaderboard.methods import METHODS
    from npcrepro.chapters.leaderboard.report import METRICS

    ref = scoring.read_reference(args.run or scoring.find_reference(args.runs, args.profile))
    result = scoring.score(args.predictions, ref, None if args.dataset in ("phantom", "run") else args.dataset,
                           name=args.name, baselines=[m.key for m in METHODS if m.paper == "baseline"],
                           metrics=list(METRICS), label=args.label)
    print(result)
    if args.out:
        print(f"per-case table: {scoring.write_table(result.table, args.out, overwrite=args.overwrite)}")
    return 0


def cmd_nnunet(args) -> int:
    from npcrepro import scoring
    from npcrepro.chapters.leaderboard import nnunet
    from npcrepro.chapters.leaderboard.methods import METHODS
    from npcrepro.chapters.leaderboard.report import METRICS
    from npcrepro.engine.results import Results

    run = args.run or scoring.find_reference(args.runs, args.profile)
    res = Results.open(run)
    if res.chapter != "leaderboard":
        raise ParameterError(f"{run}: a {res.chapter or 'unknown'} run; nnU-Net trains on a leaderboard run's split")
    folders = nnunet.train(res, args.inputs, configuration=args.configuration, epochs=args.epochs,
                           iterations=args.iterations, device=args.device, threads=args.threads)
    ref = scoring.read_reference(run)
    for folder in folders:
        print(scoring.score(folder, ref, None, name=folder.name,
                            baselines=[m.key for m in METHODS if m.paper == "baseline"], metrics=list(METRICS)))
    print("as leaderboard rows: npcrepro run leaderboard -p external '" + json.dumps([str(f) for f in folders]) + "'")
    return 0


def _chapters(name: str) -> list[str]:
    from npcrepro.book import CHAPTERS

    if name == "all":
        return list(CHAPTERS)
    if name not in CHAPTERS:
        raise ParameterError(f"unknown chapter {name!r} (valid: {', '.join(CHAPTERS)}, all)."
                             + did_you_mean(name, [*CHAPTERS, "all"]))
    return [name]


def cmd_run(args) -> int:
    from npcrepro import book

    names = _chapters(args.paper)
    params = _params(args.param)
    if args.dry_run:
        return _dry_run(names, args.profile, params, amp_dtype=args.amp_dtype)
    if args.amp_dtype:
        raise ParameterError("--amp-dtype goes with --dry-run")
    if args.output is not None and len(names) > 1:
        raise ParameterError("--output names one notebook: give one chapter, not 'all'")
    for name in names:
        res = book.execute(name, args.profile, params, force=args.force, log_output=args.log_output,
                           output=args.output.absolute() if args.output else None)
        print(f"{name}: {res.output}")
    return 0


def _dry_run(names: list[str], profile: str, params: dict, amp_dtype: str | None = None) -> int:
    """``npcrepro run ... --dry-run``: each training chapter's dry run (no notebook)."""
    from npcrepro import chapters
    from npcrepro.plan import TRAINING_CHAPTERS

    todo = [n for n in names if n in TRAINING_CHAPTERS]
    if not todo:
        raise ParameterError(f"{', '.join(names)} trains no network: a dry run is for "
                             f"{', '.join(TRAINING_CHAPTERS)}")
    for name in todo:
        t0 = time.perf_counter()
        res = chapters.dry_run(name, profile, progress=True, amp_dtype=amp_dtype, **params)
        print(f"{name}: dry run at {profile} passed in {time.perf_counter() - t0:.0f} s: {res.path}",
              flush=True)
    return 0


def cmd_plan(args) -> int:
    from npcrepro import plan

    print(plan.main(args.profile, args.chapters or None, out_dir=args.runs, run_missing=not args.no_run,
                    as_json=args.json, calibrations=args.calibrations))
    return 0


def cmd_params(args) -> int:
    """Print every parameter of a chapter: type, smoke/cpu/gpu values, allowed values and help."""
    import pandas as pd

    from npcrepro import profiles

    if args.chapter not in profiles.papers():
        raise ParameterError(f"unknown chapter {args.chapter!r} (valid: {', '.join(profiles.papers())})."
                             + did_you_mean(args.chapter, profiles.papers()))
    rows = profiles.describe(args.chapter)
    for r in rows:  # under each profile's column, `profile` is that profile (not the notebook's default)
        if r["parameter"] == "profile":
            r.update({k: k for k in r if k in profiles.PROFILES})
    if args.profile:
        if args.profile not in profiles.profiles(args.chapter):
            raise ParameterError(f"unknown profile {args.profile!r} for {args.chapter} "
                                 f"(valid: {', '.join(profiles.profiles(args.chapter))})."
                                 + did_you_mean(args.profile, profiles.profiles(args.chapter)))
        rows = [{k: v for k, v in r.items() if k not in profiles.PROFILES or k == args.profile} for r in rows]
    table = pd.DataFrame(rows).fillna("").astype(str)
    # the values in one table the terminal's width, then each parameter's allowed values and help as
    # wrapped lines (not 250-column rows)
    import shutil
    import textwrap

    width = max(80, shutil.get_terminal_size((120, 24)).columns)
    values = table.drop(columns=["allowed", "help"])
    with pd.option_context("display.max_colwidth", 40, "display.width", width, "display.max_rows", 500):
        print(values.to_string(index=False))
    print()
    for row in table.itertuples(index=False):
        text = row.help + (f" Allowed: {row.allowed}." if row.allowed else "")
        print(textwrap.fill(f"{row.parameter}: {text}", width=width, subsequent_indent="    "))
    return 0


def cmd_book(args) -> int:
    from npcrepro import book

    index = book.book(args.profile, force=args.force, run_missing=not args.no_run, jobs=args.jobs,
                      log_output=args.log_output)
    print(f"The book is at {index}")
    return 0


def cmd_leftovers(args) -> int:
    """List what killed processes left under the run and book folders (:mod:`npcrepro.leftovers`), or
    remove it with ``--remove``."""
    from npcrepro import leftovers

    found = leftovers.find([args.runs, args.book])
    if not found:
        print(f"no leftovers under {args.runs} or {args.book}")
        return 0
    for item in found:
        print(f"{item.path}  ({item.kind}, {item.size / 1e6:.1f} MB)")
    if args.remove:
        print(f"removed {leftovers.remove(found)} leftover(s)")
    else:
        print(f"{len(found)} leftover(s), {sum(i.size for i in found) / 1e6:.1f} MB: remove them with "
              f"`npcrepro leftovers --runs {args.runs} --book {args.book} --remove`")
    return 0


def cmd_quality(args) -> int:
    """Print the quality bars of the newest runs (:mod:`npcrepro.quality`); 1 when a network that is not
    a named exception misses its bar or one of its seeds collapses."""
    import pandas as pd

    from npcrepro import quality, summary

    if not args.runs.is_dir():
        raise ParameterError(f"no run folder {args.runs}")
    table = quality.quality_table(args.runs, args.profile)
    if table.empty:
        raise ParameterError(f"no finished run under {args.runs / args.profile}")
    s = quality.quality_summary(table, summary.convergence_table(args.runs, args.profile),
                                summary.flags_table(args.runs, args.profile))
    with pd.option_context("display.max_colwidth", 60, "display.width", 250, "display.max_rows", 500):
        print(table.drop(columns="exception").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\n".join(quality.summary_lines(s)))
    return 0 if s["passed"] else 1


def _benchmarks() -> list[str]:
    """The benchmark names (``benchmarks/bench_<name>.py``; none outside a checkout)."""
    from npcrepro.paths import repo_root

    return sorted(p.stem.removeprefix("bench_") for p in (repo_root() / "benchmarks").glob("bench_*.py"))


def cmd_bench(args) -> int:
    from npcrepro.paths import repo_root

    folder = repo_root() / "benchmarks"
    valid = _benchmarks()
    names = args.names or valid
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ParameterError(f"unknown benchmark {unknown[0]!r} (valid: {', '.join(valid)})."
                             + did_you_mean(unknown[0], valid))
    sys.path.insert(0, str(folder))
    for name in names:
        mod = importlib.import_module(f"bench_{name}")
        print(f"== benchmark {name} ==", flush=True)
        t0 = time.perf_counter()
        mod.main(quick=args.quick)
        print(f"== {name}: {time.perf_counter() - t0:.1f} s ==\n", flush=True)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (usage is one ``--help`` away)."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _log_output_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--log-output", action=argparse.BooleanOptionalAction, default=True,
                   help="print each chapter's section, printed lines and a training progress line "
                        "every $NPCREPRO_PROGRESS_SECONDS (default 30) while it runs (default: on); "
                        "the rendered pages are unchanged")


def build_parser() -> argparse.ArgumentParser:
    from npcrepro.profiles import PROFILES

    p = _Parser(prog="npcrepro", description=__doc__.splitlines()[0],
                epilog="`npcrepro <command> --help` describes a command and its choices.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("phantom", help="generate a phantom dataset")
    s.add_argument("--out", required=True, type=Path, help="output dataset folder")
    s.add_argument("--cases", type=int, default=10, help="number of virtual patients")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"], help="size preset")
    s.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("convert", help="convert a real data source into the dataset format")
    s.add_argument("source", help="openkbp, li2024, npc-t2-slices, nifti-folder, nnunet or rtstruct")
    s.add_argument("src", type=Path)
    s.add_argument("dst", type=Path)
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--limit", type=int, default=None, help="convert at most this many cases")
    s.add_argument("-o", "--option", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="adapter option (repeatable), e.g. -o names table.json for rtstruct")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("export", help="write masks as DICOM-SEG or RTSTRUCT referencing their series")
    s.add_argument("format", choices=["dicomseg", "rtstruct"])
    s.add_argument("masks", type=Path, help="a mask file (.nii.gz ...) or a folder of them, one per structure")
    s.add_argument("dicom", type=Path, help="folder holding the source image series")
    s.add_argument("out", type=Path, help="the DICOM file to write")
    s.add_argument("--series", default=None, help="SeriesInstanceUID to reference (default: the one "
                   "series with the masks' grid)")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="apply a finished run's network to new patients",
                       description="Apply a finished run's network (one method; every fold and seed averaged, or "
                                   "one) to a dataset folder, an image file or a DICOM series folder: 0/1 masks "
                                   "OUT/<case>/<structure>.nii.gz on each case's own grid, and with --export an "
                                   "RTSTRUCT or DICOM-SEG referencing the DICOM series. The input must have the "
                                   "channels the network reads and (unless --any-spacing) the training voxel size.")
    s.add_argument("run", type=Path, help="a finished run folder (runs/<profile>/<chapter>/<stamp>-<name>)")
    s.add_argument("input", type=Path, help="dataset folder, image file (.nii.gz, .nrrd, .mha) or DICOM folder")
    s.add_argument("out", type=Path, help="folder for the masks")
    s.add_argument("--method", default=None, help="the run's method (default: its only one)")
    s.add_argument("--fold", default="ensemble", help="a fold number, or 'ensemble' (default: all folds averaged)")
    s.add_argument("--seed", type=int, default=None, help="one seed (default: every seed, averaged)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    s.add_argument("--export", default=None, choices=["rtstruct", "dicomseg"],
                   help="also write this DICOM object (DICOM series input)")
    s.add_argument("--any-spacing", action="store_true", help="predict on voxels of another size")
    s.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("splits", help="export a chapter's folds for other tools")
    s.add_argument("action", choices=["export"])
    s.add_argument("source", help="a chapter name (its newest finished run), a run folder or a splits.json")
    s.add_argument("out", type=Path, help="splits_final.json, or the folder to hold it")
    s.add_argument("--profile", default="cpu", help="profile of the chapter's runs")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders")
    s.add_argument("--track", default=None, help="only runs named ...-TRACK (e.g. phantom)")
    s.add_argument("--dataset", type=Path, default=None, help="check every case is in this dataset")
    s.add_argument("--book-val", default="drop", choices=["drop", "train"],
                   help="the book's validation cases: left out (default) or added to nnU-Net's training")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_splits)

    s = sub.add_parser("score", help="score a model's NIfTI predictions under the leaderboard's protocol")
    s.add_argument("dataset", help="the dataset folder, or 'phantom' (or 'run'): the dataset the "
                   "leaderboard run used")
    s.add_argument("predictions", type=Path, help="folder of <case>.nii.gz or <case>/<structure>.nii.gz")
    s.add_argument("--name", required=True, help="the row's name")
    s.add_argument("--run", type=Path, default=None, help="leaderboard run folder (default: the newest)")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders")
    s.add_argument("--profile", default="cpu")
    s.add_argument("--label", type=int, default=None, help="score voxels equal to this label value")
    s.add_argument("--out", type=Path, default=None, help="write the per-case table (CSV) here")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("nnunet", help="train nnU-Net v2 (its own pipeline) on a leaderboard run's split and "
                                      "score it", description="Train nnU-Net v2 with its own planning, "
                       "preprocessing, trainer and validation on a finished leaderboard run's fold-0 training "
                       "patients, predict its test patients and score them under the leaderboard's protocol "
                       "(paired against the U-Net baselines). Needs the nnU-Net environment "
                       "(bash scripts/setup_nnunet_env.sh). Input sets: cet1, mri (T1+T2+CET1), ct (the run's "
                       "CT channel).")
    s.add_argument("run", type=Path, nargs="?", default=None, help="leaderboard run folder (default: the newest)")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders")
    s.add_argument("--profile", default="cpu", choices=PROFILES, help="smoke, cpu, gpu or gpu-lite")
    s.add_argument("--inputs", nargs="+", default=["cet1"], choices=["cet1", "mri", "ct"],
                   help="one nnU-Net model per input set (default: cet1)")
    s.add_argument("--configuration", default="2d", choices=["2d", "3d_fullres"], help="nnU-Net configuration")
    s.add_argument("--epochs", type=int, default=1000, help="epochs (nnU-Net's default 1000)")
    s.add_argument("--iterations", type=int, default=250, help="iterations per epoch (nnU-Net's default 250)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: every core)")
    s.set_defaults(func=cmd_nnunet)

    from npcrepro.book import CHAPTERS

    s = sub.add_parser("run", help="execute a chapter notebook (or all) with papermill",
                       description="Execute a chapter notebook with papermill. Chapters: "
                                   f"{', '.join(CHAPTERS)} (or all). Profiles: smoke (seconds, for "
                                   "tests), cpu (the book, minutes on 2 cores), gpu (paper scale), gpu-lite "
                                   "(paper resolution, fewer patients and iterations). "
                                   "`npcrepro params <chapter>` lists a chapter's parameters.")
    s.add_argument("paper", help=f"chapter name or 'all' ({', '.join(CHAPTERS)})")
    s.add_argument("--profile", default="cpu", choices=PROFILES, help="smoke, cpu, gpu or gpu-lite")
    s.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="notebook parameter (repeatable), e.g. -p data /path/to/dataset")
    s.add_argument("--force", action="store_true", help="re-run even if up to date")
    s.add_argument("--output", type=Path, default=None,
                   help="executed notebook path (default: the book's copy without -p, else "
                        "runs/notebooks/<profile>/<chapter>-<key>.ipynb)")
    s.add_argument("--dry-run", action="store_true",
                   help="check the profile at its full sizes in minutes, without the notebook: 3 "
                        "patients, 2 training iterations per stage of every network, one full-size "
                        "prediction per method; run folder under <out_dir>/dryrun/ (-p sizes apply, "
                        "e.g. -p batch_size 2 on a CPU with little memory)")
    s.add_argument("--amp-dtype", default=None, choices=["bfloat16", "float16"],
                   help="with --dry-run: train under autocast in this type (bfloat16 works on the CPU)")
    _log_output_flag(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("plan", help="estimate GPU hours, GPU memory and disk of a profile",
                       description="Estimate what a profile costs on a GPU: per chapter and for the "
                                   "book, training FLOPs x iterations as hours on named GPUs, peak GPU "
                                   "memory and the phantom's disk, measured on the CPU by each "
                                   "chapter's dry run (made first when missing; shapes only, seconds): "
                                   "estimates. Where a calibration of the profile exists (`npcrepro "
                                   "bench gpu` on a device; committed ones in npcrepro/calibrations), a "
                                   "column per device with the time measured there, data and "
                                   "inference included.")
    s.add_argument("chapters", nargs="*", help="training chapters (default: all)")
    s.add_argument("--profile", default="gpu", choices=PROFILES, help="smoke, cpu, gpu or gpu-lite")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders")
    s.add_argument("--no-run", action="store_true", help="only read existing dry runs")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.add_argument("--calibrations", type=Path, default=None,
                   help="a folder of calibrations (<profile>/<device>.json, from benchmarks/bench_gpu.py "
                        "--out) read beside the committed ones")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("params", help="list a chapter's parameters with their profile values and help")
    s.add_argument("chapter", help="chapter name")
    s.add_argument("--profile", default=None, help="show one profile's values only")
    s.set_defaults(func=cmd_params)

    s = sub.add_parser("book", help="run what is missing and build the HTML book")
    s.add_argument("--profile", default="cpu", choices=PROFILES)
    s.add_argument("--force", action="store_true", help="re-run every chapter")
    s.add_argument("--no-run", action="store_true", help="only build from existing runs")
    s.add_argument("--jobs", type=int, default=None,
                   help="chapters executed at once (default: one per CPU core, at most 4)")
    _log_output_flag(s)
    s.set_defaults(func=cmd_book)

    s = sub.add_parser("quality", help="check the newest runs against the book's bars (DSC, empty "
                       "predictions, converged share); exit 1 when a network misses its bar",
                       description="Check the newest run of every chapter under RUNS/PROFILE against the "
                                   "book's bars: every network predicts tumour, reaches its DSC bar (a share "
                                   "of the inter-rater ceiling where the data has raters, else a fixed bar "
                                   "by input, MRI or CT), no seed collapses, and the share of converged "
                                   "networks. Prints the table and a summary; exits 1 when a network that "
                                   "is not a chapter's named exception misses its bar or collapses.")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders")
    s.add_argument("--profile", default="cpu", choices=PROFILES)
    s.set_defaults(func=cmd_quality)

    s = sub.add_parser("leftovers", help="list (or --remove) what killed processes left behind: partial "
                       "checkpoints, notebooks being executed, datasets being written")
    s.add_argument("--runs", type=Path, default=Path("runs"), help="root of the run folders")
    s.add_argument("--book", type=Path, default=Path("book"), help="the book's folder (executed pages)")
    s.add_argument("--remove", action="store_true", help="delete them")
    s.set_defaults(func=cmd_leftovers)

    benches = _benchmarks()
    s = sub.add_parser("bench", help="run the benchmarks and print ratios",
                       description="Run benchmarks/bench_<name>.py and print what each measures as ratios "
                                   "(speed and memory targets live here, not in the tests). Benchmarks: "
                                   f"{', '.join(benches)}.")
    s.add_argument("names", nargs="*", help=f"benchmarks to run (default: all; {', '.join(benches)})")
    s.add_argument("--quick", action="store_true", help="smaller sizes")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"npcrepro {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one-line contract covers every failure
        if os.environ.get("NPCREPRO_DEBUG") and not isinstance(exc, NpcreproError):
            raise
        print(f"npcrepro {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return getattr(exc, "exit_code", 1) if isinstance(exc, NpcreproError) else 1


def _one_line(exc: BaseException) -> str:
    """The error as one line: npcrepro's own message, an OSError's reason and file, or the
    exception's type and first line (``NPCREPRO_DEBUG=1`` for the traceback)."""
    if isinstance(exc, NpcreproError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}" + (f" (-> {exc.filename2})" if exc.filename2 else "")
    else:
        text = f"{exc.__class__.__name__}: {exc} (NPCREPRO_DEBUG=1 shows the traceback)"
    line = " ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or exc.__class__.__name__
    return line if len(line) <= 500 else line[:497] + "..."


if __name__ == "__main__":
    sys.exit(main())
