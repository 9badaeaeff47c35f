"""The same training loop under DistributedDataParallel: 2 CPU processes (gloo) vs one process.

Each rank takes half of every global batch; with a per-sample loss and no batch statistics (instance
norm) the distributed run follows the single-process run up to floating-point rounding.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from npcrepro.datasets import Case
from npcrepro.engine import RunFolder, SliceDataset, Trainer, seed_everything
from npcrepro.models import build
from npcrepro.transforms import Augment
from conftest import disc_cases


pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORLD = 2


def _cases() -> list[Case]:
    return disc_cases(3, (6, 24, 24), 30)


def _train(run_root: str) -> list[dict]:
    torch.set_num_threads(1)
    cases = _cases()
    train = SliceDataset(cases[:2], ["T1"], ["GTVp"], slices="all",
                         augment=Augment(flip_axes=(-1,), jitter=0.1))
    val = SliceDataset(cases[2:], ["T1"], ["GTVp"], slices="all")
    seed_everything(0)
    model = build("unet2d", in_channels=1, n_classes=1, widths=(4, 8), norm="instance")
    run = RunFolder.create(run_root, "smoke", "ddp", "run")
    trainer = Trainer(model, lambda o, t: F.binary_cross_entropy_with_logits(o, t), train, val_data=val,
                      batch_size=4, iterations=6, eval_every=3, lr=1e-2, optimizer="adam",
                      run=run, progress=False, seed=0, device="cpu")
    return trainer.fit().rows


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from npcrepro.engine import distributed

    try:
        rows = _train(root)
        if rank == 0:
            Path(root, "ddp_rows.json").write_text(json.dumps(rows), encoding="utf-8")
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_ddp_two_cpu_processes_match_single_process(tmp_path):
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert k not in os.environ
    single = _train(str(tmp_path / "single"))
    torch.multiprocessing.spawn(_worker, args=(_free_port(), str(tmp_path / "ddp")), nprocs=WORLD,
                                join=True)
    ddp = json.loads((tmp_path / "ddp" / "ddp_rows.json").read_text(encoding="utf-8"))
    assert [r["iteration"] for r in ddp] == [r["iteration"] for r in single] == [3, 6]
    for a, b in zip(single, ddp):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert single[-1]["train_loss"] < single[0]["train_loss"] * 1.5
    # only rank 0 wrote: one run folder with one set of files
    runs = list((tmp_path / "ddp" / "smoke" / "ddp").iterdir())
    assert len(runs) == 1
    assert {"checkpoint_last.pt", "curves.csv", "environment.json"} <= {p.name for p in runs[0].iterdir()}
    assert json.loads((runs[0] / "environment.json").read_text(encoding="utf-8"))["world_size"] == WORLD
