"""Paper size without a GPU (issue 25): the dry run of every chapter at the gpu profile, the plan's
estimates, bf16 autocast on the CPU, and a chapter trained under DDP by two gloo processes."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npcrepro import chapters, plan, profiles
from npcrepro.datasets import Case
from npcrepro.engine import SliceDataset, Trainer
from npcrepro.models import build
from conftest import disc_cases, load_benchmark



# ----------------------------------------------------------------------------- the Trainer's pieces
def _cases(n=2) -> list[Case]:
    return disc_cases(n, (4, 32, 32), 40)


def _trainer(**kw) -> Trainer:
    torch.manual_seed(0)
    data = SliceDataset(_cases(), ["T1"], ["GTVp"], slices="all")
    model = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8))
    return Trainer(model, lambda o, t: F.binary_cross_entropy_with_logits(o, t), data, batch_size=4,
                   device="cpu", progress=False, seed=0, **kw)


@pytest.mark.usefixtures("one_torch_thread")
def test_bf16_autocast_runs_on_the_cpu():
    seen = []
    trainer = _trainer(iterations=3, amp_dtype="bfloat16")
    trainer.model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    history = trainer.fit()
    assert trainer.use_amp and trainer.mixed_dtype is torch.bfloat16
    assert seen and set(seen) == {torch.bfloat16}  # the forward ran under autocast
    assert history.iterations == 3 and np.isfinite(history.final_train_loss)
    plain = _trainer(iterations=3)
    plain.fit()
    assert not plain.use_amp  # the default on the CPU is unchanged: fp32


@pytest.mark.usefixtures("one_torch_thread")
def test_stage_cap_and_probe(tmp_path):
    from npcrepro.engine import RunFolder

    run = RunFolder.create(tmp_path, "smoke", "probe", "run")
    trainer = _trainer(iterations=50, stage_iteration_cap=2, probe=True, run=run)
    history = trainer.fit()
    assert history.iterations == 2 and history.completed
    row = json.loads((run.path / "plan.json").read_text())[0]
    assert row["measured_on"] == "meta" and row["iterations"] == 50 and row["batch"] == [4, 1, 32, 32]
    # the meta measurement is the real step's: FLOPs counted on a real forward/backward agree
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(4, 1, 32, 32)
    with FlopCounterMode(display=False) as counter:
        trainer.model(x).sum().backward()
    assert row["flops"] == pytest.approx(counter.get_total_flops(), rel=0.05)
    assert row["activation_bytes"] > row["input_bytes"] > 0
    assert row["optimizer_bytes"] == 2 * row["gradient_bytes"] == 2 * row["parameter_bytes"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_timed_stage_reports_its_ms_per_iteration_after_the_warm_up(tmp_path):
    from npcrepro.engine import RunFolder
    from npcrepro.engine.probe import WARMUP_ITERATIONS

    run = RunFolder.create(tmp_path, "smoke", "probe", "run")
    _trainer(iterations=50, stage_iteration_cap=10, probe=True, run=run).fit()
    row = json.loads((run.path / "plan.json").read_text())[0]
    # of 10 intervals, those after the warm-up that did not also evaluate (every second one here)
    assert WARMUP_ITERATIONS <= row["timed_iterations"] < 10 - WARMUP_ITERATIONS and not row["with_evaluation"]
    assert 0 < row["ms_per_iteration"] < 10_000
    short = RunFolder.create(tmp_path, "smoke", "probe", "short")
    _trainer(iterations=50, stage_iteration_cap=2, probe=True, run=short).fit()
    assert "ms_per_iteration" not in json.loads((short.path / "plan.json").read_text())[0]  # too few


# ----------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def plan_runs(tmp_path_factory):
    """Plan passes (measurement only) of the template at two profiles."""
    root = tmp_path_factory.mktemp("plan")
    with pytest.MonkeyPatch.context() as mp:  # restored after the module: other tests cache elsewhere
        mp.setenv("NPCREPRO_CACHE", os.environ.get("NPCREPRO_CACHE") or str(root / "_cache"))
        yield root


def test_plan_rows_are_positive_and_grow_with_the_sizes(plan_runs):
    small = plan.chapter_plan("template", "smoke", out_dir=plan_runs)
    big = plan.chapter_plan("template", "cpu", out_dir=plan_runs)
    for r in (small, big):
        assert r["pflop"] > 0 and r["peak_gib"] > 0 and r["iterations"] > 0
        assert all(h > 0 for h in r["hours"].values())
        assert r["hours"]["H100"] < r["hours"]["A100"] < r["hours"]["RTX 3090 (24 GB)"]
    assert big["pflop"] > small["pflop"] and big["peak_gib"] > small["peak_gib"]
    assert big["disk_gb"] > small["disk_gb"] > 0
    table = plan.markdown(plan.plan("smoke", ["template"], out_dir=plan_runs))
    assert "`template`" in table and "**total**" in table and "H100 (est., training)" in table


def test_plan_command(plan_runs, capsys):
    from npcrepro import cli

    assert cli.main(["plan", "template", "--profile", "smoke", "--runs", str(plan_runs)]) == 0
    assert cli.main(["plan", "template", "--profile", "smoke", "--runs", str(plan_runs), "--no-run"]) == 0
    out = capsys.readouterr().out
    assert "`template`" in out and "estimate" in out.lower()
    assert cli.main(["plan", "li2018", "--profile", "smoke", "--runs", str(plan_runs / "none"), "--no-run"]) == 2
    assert cli.main(["plan", "nope", "--profile", "smoke", "--runs", str(plan_runs)]) == 2


def test_the_plan_says_it_leaves_out_nnunets_rows():
    assert plan.nnunet_note("cpu") == "" and plan.nnunet_note("smoke") == ""
    assert plan.nnunet_note("gpu") == ("Not counted: the leaderboard's nnU-Net rows (3 input sets x 2 "
                                       "configuration(s), 1000 epochs x 250 iterations each, with nnU-Net's own "
                                       "preprocessing and validation).")
    assert "3 input sets x 1 configuration(s), 40 epochs x 100 iterations" in plan.nnunet_note("gpu-lite")


@pytest.mark.usefixtures("one_torch_thread")
def test_a_calibration_measures_the_plan(plan_runs, tmp_path, capsys):
    """`npcrepro bench gpu` (here on the CPU, at smoke) times a dry run and the phantom; the plan counts
    each stage's measured ms x its budget x its jobs, and the data and predictions of every case."""
    from npcrepro import calibration, cli
    from npcrepro.errors import DataError

    cal = load_benchmark("gpu").main(quick=True, out=str(tmp_path / "cal"), runs=str(plan_runs))
    name = cal["device"]["device"]
    path = tmp_path / "cal" / "smoke" / f"{calibration.slug(name)}.json"
    assert calibration.load(path) == json.loads(path.read_text()) and cal["device"]["kind"] == "cpu"
    assert cal["device"]["torch"] == torch.__version__.split("+")[0] and cal["phantom_s_per_case"] > 0
    rec = cal["chapters"]["template"]
    (row,) = rec["methods"]["unet2d"]
    assert row["ms_per_iteration"] > 0 and rec["prepare_s_per_case"] > 0 and rec["infer_s_per_case"] > 0

    P = profiles.resolve("template", "smoke")
    m = plan.measured("template", cal, P)
    n_test = sum(plan._jobs("template", P)[2].values())
    assert m["train"] == pytest.approx(row["ms_per_iteration"] / 1000 * P["iterations"] * 1)
    assert m["infer"] == pytest.approx(rec["infer_s_per_case"] * n_test * 2)   # the half-budget check
    assert m["prepare"] == pytest.approx(rec["prepare_s_per_case"] * P["n_cases"])
    assert m["generate"] == pytest.approx(cal["phantom_s_per_case"] * P["n_cases"])  # one process at smoke
    assert m["total"] == pytest.approx(m["generate"] + m["prepare"] + m["train"] + m["infer"])
    assert plan.measured("li2018", cal, profiles.resolve("li2018", "smoke")) is None  # not calibrated
    untimed = chapters.dry_run("template", "smoke", mode="plan", out_dir=str(plan_runs)).path
    with pytest.raises(DataError, match="not a timed dry run"):
        calibration.from_run(untimed)

    assert cli.main(["plan", "template", "--profile", "smoke", "--runs", str(plan_runs),
                     "--calibrations", str(tmp_path / "cal")]) == 0
    out = capsys.readouterr().out
    assert f"measured on {name} (all)" in out and "generate" in out and "not measured" not in out
    assert cli.main(["plan", "template", "li2018", "--profile", "smoke", "--runs", str(plan_runs),
                     "--calibrations", str(tmp_path / "cal")]) == 0
    assert "not measured" in capsys.readouterr().out   # li2018's row, and so the total


def test_a_calibration_file_is_checked(tmp_path):
    from npcrepro import calibration
    from npcrepro.errors import DataError

    bad = tmp_path / "a.json"
    for text, match in (("{", "not a readable calibration"), ("[]", "missing an object"),
                        ('{"format": 1, "profile": "cpu"}', "missing device, chapters"),
                        ('{"format": 9, "profile": "cpu", "device": {}, "chapters": {}}', "format 9")):
        bad.write_text(text)
        with pytest.raises(DataError, match=match) as err:
            calibration.load(bad)
        assert "\n" not in str(err.value)
    assert calibration.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert calibration.load_all("cpu", tmp_path / "none") == []


def test_a_dry_run_measures_batch_norm_over_two_batches_where_the_profile_measures_any():
    from npcrepro.engine.experiment import dry_run_params

    gpu = profiles.resolve("leaderboard", "gpu")
    assert gpu["bn_batches"] > 2  # what a real run measures over
    dry = dry_run_params(gpu)
    assert dry["bn_batches"] == 2
    assert dry_run_params(dict(gpu, bn_batches=0))["bn_batches"] == 0  # off stays off
    assert "bn_batches" not in dry_run_params(profiles.resolve("li2018", "gpu"))  # no chapter gains it


def test_gpu_lite_is_a_profile_of_every_chapter():
    for chapter in profiles.papers():
        assert "gpu-lite" in profiles.profiles(chapter)
        profiles.resolve(chapter, "gpu-lite")


# ----------------------------------------------------------------------------- dry runs
#: What the suite's dry run shrinks to fit 2 CPU cores, a few GB and a few minutes: channel widths,
#: batch sizes, and the phantom's slices (32 instead of 96, PHANTOM_SHAPE). Every in-plane size
#: (512 x 512 slices at 0.98 mm, crops, 3D patches and windows, resampling) is the gpu profile's;
#: `npcrepro run <chapter> --profile gpu --dry-run` runs the full widths, batches and volumes. The
#: 3D sliding windows keep their size but do not overlap (guo2021's 8 x 24 x 24 windows at half
#: overlap over a 1 mm volume are ~6000 windows per network). luo2020
#: and chen2020 train one method of each network family here (their ablations build the same
#: networks); `npcrepro plan` measures every method's network at full width and batch.
SHRINK = {
    "template": dict(widths=[4, 8, 16, 32, 64], batch_size=2),
    "li2018": dict(width=0.125, batch_size=2),
    "xue2020": dict(unet_widths=[4, 8, 16, 32, 64], deeplab_width=0.125, batch_size=2, infer_batch=8),
    "luo2020": dict(stage1_widths=[4, 8, 16, 32, 64], stage2_widths=[4, 8, 16], fcn_widths=[4, 8, 16, 32, 32],
                    fcn_channels=32, batch_size=2, infer_batch=8, methods=["unet", "fcn8", "ours"]),
    "guo2021": dict(width=0.125, batch_size=4, infer_batch=256, overlap=0.0),
    "chen2020": dict(width=0.125, batch_size=2, patch_batch_size=8,
                     methods="patch_cnn_t1,mm_patch_cnn,unet2d_t1,unet3d_t1,single_encoder_mm,"
                             "multi_encoder_mm,mmfnet_full"),
    "leaderboard": dict(width=0.125, batch_2d=2, batch_3d=2, overlap=0.0),
}


#: Chapters whose dry run also scores its predictions in the test (li2018: small slices).
SCORED = ("li2018",)


PHANTOM_SHAPE = (32, 512, 512)


@pytest.fixture(scope="module")
def dry_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NPCREPRO_CACHE", os.environ.get("NPCREPRO_CACHE") or str(root / "_cache"))
        yield root


#: Chapters dry-run in every `make test`; the others take a minute or more each and run with
#: NPCREPRO_DRY_RUN=all (CI). Measured in one such run on 2 cores of an AMD EPYC, in this order:
#: li2018 9 s, xue2020 28 s, luo2020 26 s, guo2021 71 s, chen2020 69 s, leaderboard 269 s (most of it
#: inference over whole 512 x 512 volumes), template 6 s; 8.2 min in all.
QUICK = ("template", "li2018")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", list(plan.TRAINING_CHAPTERS))
def test_dry_run_at_the_gpu_profile(chapter, dry_root):
    import time

    if chapter not in QUICK and os.environ.get("NPCREPRO_DRY_RUN") != "all":
        pytest.skip(f"{chapter}: minutes on a CPU; run with NPCREPRO_DRY_RUN=all")

    t0 = time.perf_counter()
    # scored only where it is cheap: the surface metrics of an untrained network's full-volume
    # masks take ~1 min per structure at 96 x 512 x 512 on one core (luo2020 has 14 structures)
    res = chapters.dry_run(chapter, "gpu", out_dir=str(dry_root), score=chapter in SCORED,
                           phantom_shape=PHANTOM_SHAPE, **SHRINK[chapter])
    seconds = time.perf_counter() - t0
    run = Path(res.path)
    assert (run / "DONE").exists() and (run / "DRY_RUN").exists()
    assert run.parent.parent.parent.name == "dryrun"  # where no reader of the book's runs looks
    info = json.loads((run / "run.json").read_text())
    assert info["dry_run"] is True and info["status"] == "done"
    gpu = profiles.resolve(chapter, "gpu")
    for m in info["methods"]:
        jobs = list((run / m["name"]).glob("fold_0/seed_0"))
        assert jobs and (jobs[0] / "DONE").exists(), m["name"]
        rows = [r for f in jobs[0].rglob("plan.json") for r in json.loads(f.read_text())]
        assert rows, f"{m['name']} trained no network through the Trainer"
        assert all(r["iterations"] is None or r["iterations"] >= 2 for r in rows)
    if chapter in SCORED:
        assert len(res.metrics) > 0  # one full-size prediction per method, scored
    case = json.loads((run / "splits.json").read_text())[0]["test"][0]
    preds = list(run.glob(f"*/fold_0/seed_0/predictions/{case}/*.nii.gz"))
    assert preds, "no prediction written"
    print(f"[dry run] {chapter}: {seconds:.0f} s (gpu sizes; n_cases {gpu.n_cases} -> 3)")


# ----------------------------------------------------------------------------- a chapter under DDP
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chapter_worker(rank: int, port: int, root: str, cache: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), NPCREPRO_CACHE=cache)
    torch.set_num_threads(1)
    from npcrepro.engine import distributed

    try:
        P = profiles.resolve("template", "smoke", out_dir=root, device="cpu")
        res = chapters.run(P, progress=False)
        Path(root, f"rank{rank}.json").write_text(json.dumps({"path": str(res.path), "rows": len(res.metrics),
                                                              "world": distributed.world_size()}))
    finally:
        distributed.cleanup()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_a_chapter_trains_under_ddp_with_gloo(tmp_path):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert k not in os.environ
    cache = os.environ.get("NPCREPRO_CACHE") or str(tmp_path / "_cache")
    torch.multiprocessing.spawn(_chapter_worker, args=(_free_port(), str(tmp_path), cache), nprocs=WORLD,
                                join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert ranks[0]["path"] == ranks[1]["path"] and ranks[0]["world"] == WORLD
    assert ranks[0]["rows"] == ranks[1]["rows"] > 0
    runs = list((tmp_path / "smoke" / "template").iterdir())
    assert len(runs) == 1 and (runs[0] / "DONE").exists()
    job = runs[0] / "unet2d" / "fold_0" / "seed_0"
    assert {"model.pt", "curves.csv", "metrics.csv", "DONE"} <= {p.name for p in job.iterdir()}
    env = json.loads((job / "environment.json").read_text()) if (job / "environment.json").exists() else \
        json.loads((runs[0] / "environment.json").read_text())
    assert env["world_size"] == WORLD


# ----------------------------------------------------------------------------- the command
def test_dry_run_command(tmp_path, capsys, monkeypatch):
    from npcrepro import cli

    monkeypatch.setenv("NPCREPRO_CACHE", str(tmp_path / "_cache"))
    assert cli.main(["run", "template", "--profile", "smoke", "--dry-run", "--amp-dtype", "bfloat16",
                     "-p", "out_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "template: dry run at smoke passed" in out
    run = next((tmp_path / "dryrun" / "smoke" / "template").iterdir())
    rows = json.loads(next(run.rglob("plan.json")).read_text())
    assert rows[0]["amp"] == "bfloat16"  # the chapter's fit path trained under bf16 autocast
    assert json.loads((run / "run.json").read_text())["dry_run"] is True
    for args in (["run", "metrics", "--dry-run"], ["run", "template", "--amp-dtype", "bfloat16"],
                 ["run", "template", "--dry-run", "-p", "nosuch", "1"]):
        assert cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err
