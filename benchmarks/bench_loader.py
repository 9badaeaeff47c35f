"""Loader benchmark: does making training batches in worker processes keep a GPU busy?

    npcrepro bench loader [--quick]     # gpu-lite template U-Net on 3 gpu-preset patients (--quick: 1)
    python benchmarks/bench_loader.py --cases 3 --iterations 60 [--device cuda] [--json f]

Generates a small phantom cohort at the gpu preset (96 x 512 x 512; ``--cases``), builds the template
chapter's training slices and its gpu-lite U-Net (widths 32-512, batches of 16 whole slices), and
trains it for ``--iterations`` steps (default 60 on CUDA; 2 on a CPU, where a step takes tens of
seconds and the benchmark only checks itself) twice: with batches made in the main process
(``num_workers=0``) and with the Trainer's default (``"auto"``: DataLoader processes on CUDA). On
CUDA it also times the GPU alone on one fixed batch (forward, backward, Adam; bf16 autocast).
Prints it/s of each, their ratio, the final losses (equal: the batches do not depend on the
workers) and, on CUDA, the peak GPU memory. Measured on an H200 (16 cores): 2.75 it/s in the main
process, 16.1 with 8 workers, 25.4 for the GPU alone (README, "What a GPU showed").

``main(quick=False, cases=None, iterations=None, device="auto", json_path=None) -> dict`` returns the
numbers.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def _gpu_alone(P, steps: int = 20) -> float:
    """it/s of the template U-Net on one fixed random batch at the profile's size, on CUDA (bf16
    autocast): :func:`bench_engine._bare_train` with the template's loss."""
    import torch
    from bench_engine import _bare_train

    from npcrepro.chapters.template.methods import dice_bce
    from npcrepro.models import build

    model = build("unet2d", in_channels=1, n_classes=1, widths=list(P["widths"])).cuda()
    batch = int(P["batch_size"])
    return _bare_train(model, torch.device("cuda"), batch, steps, warmup=5, size=512, loss_fn=dice_bce,
                       amp_dtype=torch.bfloat16) / batch


def main(quick: bool = False, cases: int | None = None, iterations: int | None = None,
         device: str = "auto", json_path: str | None = None) -> dict:
    import torch

    from npcrepro import phantom, profiles
    from npcrepro.chapters.template.methods import dice_bce
    from npcrepro.chapters.template.prepare import training_slices
    from npcrepro.engine import Trainer
    from npcrepro.models import build

    P = profiles.resolve("template", "gpu-lite", device=device)
    cuda = P["device"].startswith("cuda")
    cases = cases or (1 if quick else 3)
    iterations = iterations or (60 if cuda and not quick else 2)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ds = phantom.generate(f"{tmp}/ph", cases, 0, preset="gpu", progress=False)
        res = {"device": P["device"], "generate_s": round(time.perf_counter() - t, 1)}
        data = [ds.load(n, channels=["T1"], structures=["GTVp"]) for n in ds.cases]
    train = training_slices(data, P)
    for workers in (0, "auto"):
        torch.manual_seed(0)
        model = build("unet2d", in_channels=1, n_classes=1, widths=list(P["widths"]))
        trainer = Trainer(model, dice_bce, train, batch_size=int(P["batch_size"]), iterations=iterations,
                          eval_every=iterations, lr=1e-3, device=P["device"], progress=False,
                          num_workers=workers, seed=0)
        t = time.perf_counter()
        history = trainer.fit()
        if cuda:
            torch.cuda.synchronize()
        s = time.perf_counter() - t
        res[f"workers={workers}"] = {"processes": trainer.num_workers, "it_per_s": round(iterations / s, 2),
                                     "final_loss": history.rows[-1]["train_loss"]}
    res["ratio"] = round(res["workers=auto"]["it_per_s"] / res["workers=0"]["it_per_s"], 2)
    if cuda:
        res["gpu_alone_it_per_s"] = round(_gpu_alone(P), 2)
        res["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(res, indent=1))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cases", type=int)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    a = ap.parse_args()
    main(a.quick, a.cases, a.iterations, a.device, a.json)
