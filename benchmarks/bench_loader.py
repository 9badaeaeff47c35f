"""Loader benchmark: how training batches are made, and whether that keeps a GPU busy.

    npcrepro bench loader [--quick]     # gpu-lite template U-Net on 3 gpu-preset patients (--quick: 1)
    python benchmarks/bench_loader.py --cases 3 --iterations 60 [--device cuda] [--json f]

Generates a small phantom cohort at the gpu preset (96 x 512 x 512; ``--cases``) and builds the
template chapter's training slices (whole 512 x 512 slices; flips, rotations, intensity jitter).

1. **Batch production**, on one CPU thread: ms per batch of 16 made item by item (the item path:
   ``get(index, rng)`` and collation) and by :mod:`npcrepro.engine.batches` on the CPU (the same
   samples a whole batch at a time; on CUDA the same code runs on the GPU, which is what it is for),
   their ratio, and the largest difference between the two batches (float16 storage, interpolation).
2. **Training** the gpu-lite U-Net (widths 32-512, batches of 16, bf16 autocast on CUDA) for
   ``--iterations`` steps (default 60 on CUDA; 2 on a CPU, where a step takes tens of seconds and the
   benchmark only checks itself): batches made in the main process, by the Trainer's loader default
   (DataLoader processes on CUDA), and on CUDA by device batches; it/s of each and the final losses
   (equal for the first two: the batches do not depend on the workers). On CUDA it also times the GPU
   alone on one fixed batch and reports the peak GPU memory.

Measured on an H200 (16 cores), before device batches: 2.75 it/s in the main process, 16.1 with 8
loader processes, 25.4 for the GPU alone (book/using.md, "GPU loans").

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


def _batch_production(train, batch: int, repeats: int) -> dict:
    """ms per batch of ``batch`` training samples on one CPU thread: item by item (``get`` + collate)
    and by device batches on the CPU, from the same keys; their ratio and largest difference."""
    import numpy as np
    import torch

    from npcrepro.engine.data import epoch_plan
    from npcrepro.engine.loaders import KeyedItems

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        maker = train.device_batches("cpu", seed=0)
        store_s = time.perf_counter() - t
        keyed = KeyedItems(train, 0)
        plan = epoch_plan(len(train), batch, repeats, 0, 0, 0)
        times = {"item": [], "device": []}
        diff = 0.0
        for b in range(repeats):
            keys = [(0, 0, b, j, int(plan[b, j])) for j in range(batch)]
            t = time.perf_counter()
            items = torch.utils.data.default_collate([keyed[k] for k in keys])
            times["item"].append(time.perf_counter() - t)
            t = time.perf_counter()
            made = maker.train_batch(keys)
            times["device"].append(time.perf_counter() - t)
            diff = max(diff, float((items[0] - made[0]).abs().max()))
    finally:
        torch.set_num_threads(threads)
    item, dev = (1000 * float(np.median(times[k])) for k in ("item", "device"))
    return {"item_path_ms": round(item, 1), "device_batches_on_cpu_ms": round(dev, 1),
            "ratio_item_to_device": round(item / dev, 2), "max_image_difference": round(diff, 4),
            "store_s": round(store_s, 2), "slices": len(train), "threads": 1}


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
    res["batch_production"] = _batch_production(train, int(P["batch_size"]), repeats=2 if quick else 6)
    modes = [("workers=0", dict(num_workers=0, batches="loader")),
             ("workers=auto", dict(num_workers="auto", batches="loader"))]
    if cuda:
        modes.append(("batches=device", dict(batches="device")))
    for key, kw in modes:
        torch.manual_seed(0)
        model = build("unet2d", in_channels=1, n_classes=1, widths=list(P["widths"]))
        trainer = Trainer(model, dice_bce, train, batch_size=int(P["batch_size"]), iterations=iterations,
                          eval_every=iterations, lr=1e-3, device=P["device"], progress=False, seed=0, **kw)
        t = time.perf_counter()
        history = trainer.fit()
        if cuda:
            torch.cuda.synchronize()
        s = time.perf_counter() - t
        res[key] = {"processes": 0 if trainer.batch_maker is not None else trainer.num_workers,
                    "it_per_s": round(iterations / s, 2),
                    "final_loss": history.rows[-1]["train_loss"]}
    res["ratio"] = round(res["workers=auto"]["it_per_s"] / res["workers=0"]["it_per_s"], 2)
    if cuda:
        res["ratio_device_to_workers"] = round(res["batches=device"]["it_per_s"] / res["workers=auto"]["it_per_s"], 2)
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
