"""Engine benchmark: training throughput and inference time of the template model, eager vs compiled.

    python benchmarks/bench_engine.py [--quick] [--no-compile] [--device cpu|cuda] [--json out.json]

Measures, for the template chapter's 2D U-Net on 128 x 128 slices (the phantom's cpu preset grid):

* training throughput (samples/s): a bare optimisation step, and the same step through
  :class:`npcrepro.engine.Trainer` (data pipeline, bookkeeping) - their ratio is the engine overhead;
* inference: ms per slice and s per 32-slice volume with :func:`npcrepro.engine.predict_slices`;
* the bare step and inference again in contiguous (NCHW) memory: the engine's default is
  channels-last on every device, and the ratio says what that buys here;
* all of the above with ``torch.compile`` where it works (on failure it says so and skips);
* every leaderboard network at the profile's sizes (cpu; smoke with ``--quick``) on ONE thread: ms per
  training iteration (forward, backward and Adam step, channels-last as the engine trains), GFLOP per
  iteration (torch's FLOP counter) and the ratio of its FLOP rate to a float32 matmul timed on the same
  core in the same run (1024 x 1024; 512 with ``--quick``) - the share of the core's dense rate the
  network's training reaches - and the share of the step's time spent in convolutions (the rest does
  almost no counted FLOPs and caps the ratio).

``main(quick=False) -> dict`` returns the numbers (and prints them with ratios).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from npcrepro.engine import Trainer, predict_slices, resolve_device, seed_everything
from npcrepro.models import build

WIDTHS = [16, 32, 64, 128]  # the template's cpu profile
SIZE = 128
DEPTH = 32


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _model(dev: torch.device) -> torch.nn.Module:
    seed_everything(0)
    return build("unet2d", in_channels=1, n_classes=1, widths=WIDTHS).to(dev)


def _bare_train(model, dev, batch, steps, warmup, channels_last: bool = True, size: int = SIZE,
                loss_fn=F.binary_cross_entropy_with_logits, amp_dtype: torch.dtype | None = None) -> float:
    """Samples/s of a plain optimisation loop on one fixed ``size`` x ``size`` batch (no data
    loading), in the engine's memory format (channels-last) unless ``channels_last=False``, under
    autocast in ``amp_dtype`` when given."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, size, size, generator=g).to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    y = (torch.rand(batch, 1, size, size, generator=g) > 0.9).float().to(dev)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(dev)
            t0 = time.perf_counter()
        with torch.autocast(dev.type, amp_dtype) if amp_dtype else contextlib.nullcontext():
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(dev)
    return batch * steps / (time.perf_counter() - t0)


def _engine_train(dev, batch, steps) -> float:
    """Samples/s through the Trainer (TensorDataset, seeded sampling, per-iteration bookkeeping)."""
    g = torch.Generator().manual_seed(0)
    n = batch * 4
    data = torch.utils.data.TensorDataset(torch.randn(n, 1, SIZE, SIZE, generator=g),
                                          (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.9).float())
    model = _model(dev)
    loss = lambda o, t: F.binary_cross_entropy_with_logits(o, t)  # noqa: E731
    Trainer(model, loss, data, batch_size=batch, iterations=2, progress=False, device=str(dev)).fit()
    h = Trainer(model, loss, data, batch_size=batch, iterations=steps, progress=False,
                device=str(dev)).fit()
    return float(np.nanmean([r["throughput"] for r in h.rows if r["throughput"]]))


def _infer(model, dev, batch, reps, channels_last: bool = True) -> tuple[float, float]:
    vol = np.random.default_rng(0).normal(size=(1, DEPTH, SIZE, SIZE)).astype(np.float32)
    kw = dict(batch_size=batch, device=dev, channels_last=channels_last)
    predict_slices(model, vol[:, :batch], **kw)  # warm-up
    times = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        predict_slices(model, vol, **kw)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    per_volume = float(np.median(times))
    return 1000 * per_volume / DEPTH, per_volume


def _try_compile(model):
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled.eval()(torch.zeros(1, 1, SIZE, SIZE, device=next(model.parameters()).device))
        compiled.train()
        return compiled, None
    except Exception as exc:  # noqa: BLE001 - any backend failure means "not supported here"
        return None, f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _matmul_rate(n: int, reps: int) -> float:
    """FLOP/s of an n x n float32 matmul on the current threads (median of ``reps`` timings)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times))


#: Profiler names of the convolution kernels (forward and backward) on the CPU.
_CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::slow_conv3d_forward",
             "aten::_slow_conv2d_forward", "aten::slow_conv_dilated3d", "aten::slow_conv_transpose3d",
             "aten::slow_conv_transpose2d", "aten::_convolution_depthwise2d", "aten::mkldnn_convolution_backward")


def _conv_share(step) -> float:
    """Share of one training step's CPU time spent in convolution kernels (torch.profiler, self time):
    the rest (normalisation, activations, attention pooling, optimiser, copies) does few counted FLOPs,
    so it caps the ratio to matmul however fast the convolutions run."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if e.key in _CONV_OPS)
    return conv / total if total else float("nan")


def network_throughput(profile: str = "cpu", steps: int = 3, matmul_n: int = 1024) -> list[dict]:
    """Per leaderboard network (every entry, at ``profile``'s width, batch and crop/patch) on one CPU
    thread: ms per training iteration, GFLOP per iteration and the ratio to the matmul rate measured
    before and after the networks (their mean)."""
    from torch.utils.flop_counter import FlopCounterMode

    from npcrepro.chapters.leaderboard.methods import METHODS, network
    from npcrepro.engine.device import conv_memory_format
    from npcrepro.recipes import load

    P = load("leaderboard").PROFILES[profile]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rate0 = _matmul_rate(matmul_n, 7)
        rows = []
        for m in METHODS:
            seed_everything(0)
            net = network(m, float(P["width"]), profile).train()
            n_in = len(m.channels) + (1 if m.after else 0)
            size = P["crop_2d"] if m.dims == "2d" else P["patch_3d"]
            x = torch.randn(P["batch_2d"] if m.dims == "2d" else P["batch_3d"], n_in, *size)
            fmt = conv_memory_format(net)
            if fmt is not None:
                net, x = net.to(memory_format=fmt), x.contiguous(memory_format=fmt)
            opt = torch.optim.Adam(net.parameters(), 1e-3)

            def step():
                out = net(x)
                outs = out if isinstance(out, (list, tuple)) else [out]
                loss = sum(o.float().square().mean() for o in outs)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            with FlopCounterMode(display=False) as counter:
                step()  # also the warm-up
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sec = (time.perf_counter() - t0) / steps
            rows.append({"network": m.key, "ms_per_iteration": 1000 * sec,
                         "gflop_per_iteration": counter.get_total_flops() / 1e9,
                         "gflops": counter.get_total_flops() / sec / 1e9, "conv_share": _conv_share(step)})
        rate = (rate0 + _matmul_rate(matmul_n, 7)) / 2
    finally:
        torch.set_num_threads(threads)
    for r in rows:
        r["matmul_gflops"] = rate / 1e9
        r["ratio_to_matmul"] = r["gflops"] * 1e9 / rate
        r["conv_ratio"] = r["ratio_to_matmul"] / r["conv_share"] if r["conv_share"] > 0 else float("nan")
    return rows


def main(quick: bool = False, compile: bool = True, device: str = "auto") -> dict:
    dev = resolve_device(device)
    batch = 8
    steps, warmup, reps = (4, 1, 2) if quick else (20, 3, 5)
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    out: dict = {"device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu": platform.processor() or platform.machine(),
                 "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
                 "model": f"unet2d widths={WIDTHS}", "input": f"{SIZE}x{SIZE}", "batch": batch,
                 "quick": quick}
    model = _model(dev)
    out["train_bare_eager_sps"] = _bare_train(model, dev, batch, steps, warmup)
    out["train_engine_eager_sps"] = _engine_train(dev, batch, steps)
    model = _model(dev)
    out["infer_eager_ms_per_slice"], out["infer_eager_s_per_volume"] = _infer(model, dev, 16, reps)
    out["train_bare_contiguous_sps"] = _bare_train(_model(dev), dev, batch, steps, warmup,
                                                   channels_last=False)
    out["infer_contiguous_ms_per_slice"], out["infer_contiguous_s_per_volume"] = _infer(
        _model(dev), dev, 16, reps, channels_last=False)
    out["compile"] = None
    if compile:
        compiled, why = _try_compile(_model(dev))
        if compiled is None:
            print(f"torch.compile is not usable here ({why}); skipping the compiled runs")
            out["compile"] = f"failed: {why}"
        else:
            out["compile"] = "ok"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["train_bare_compiled_sps"] = _bare_train(compiled, dev, batch, steps, warmup)
                out["infer_compiled_ms_per_slice"], out["infer_compiled_s_per_volume"] = _infer(
                    compiled, dev, 16, reps)
    # ratios
    r = {"engine_overhead (bare/engine)": out["train_bare_eager_sps"] / out["train_engine_eager_sps"],
         "train speed-up (channels-last/contiguous)": (out["train_bare_eager_sps"]
                                                       / out["train_bare_contiguous_sps"]),
         "inference speed-up (contiguous/channels-last time)": (out["infer_contiguous_s_per_volume"]
                                                                / out["infer_eager_s_per_volume"])}
    if out.get("train_bare_compiled_sps"):
        r["train speed-up (compiled/eager)"] = out["train_bare_compiled_sps"] / out["train_bare_eager_sps"]
        r["inference speed-up (eager/compiled time)"] = (out["infer_eager_s_per_volume"]
                                                         / out["infer_compiled_s_per_volume"])
    out["ratios"] = r
    _print(out)
    if dev.type == "cpu":
        out["networks"] = network_throughput("smoke" if quick else "cpu", steps=1 if quick else 3,
                                             matmul_n=512 if quick else 1024)
        _print_networks(out["networks"], "smoke" if quick else "cpu")
    return out


def _print_networks(rows: list[dict], profile: str) -> None:
    print(f"leaderboard networks, {profile} sizes, one thread; matmul {rows[0]['matmul_gflops']:.1f} GFLOP/s"
          if rows else "no networks")
    print(f"  {'network':<14}{'ms/it':>9}{'GFLOP/it':>10}{'GFLOP/s':>9}{'ratio to matmul':>17}"
          f"{'conv share of time':>20}{'conv ratio':>12}")
    for r in rows:
        print(f"  {r['network']:<14}{r['ms_per_iteration']:9.0f}{r['gflop_per_iteration']:10.2f}"
              f"{r['gflops']:9.1f}{r['ratio_to_matmul']:17.2f}{r['conv_share']:20.2f}{r['conv_ratio']:12.2f}")
    print("  conv ratio: the convolutions' own FLOP rate (all counted FLOPs over their share of the time) "
          "against the matmul")


def _print(out: dict) -> None:
    print(f"engine benchmark on {out['device']} ({out['threads']} threads), {out['model']}, "
          f"{out['input']} slices, batch {out['batch']}")
    for k in ("train_bare_eager_sps", "train_engine_eager_sps", "train_bare_contiguous_sps",
              "train_bare_compiled_sps"):
        if out.get(k) is not None:
            print(f"  {k:<32} {out[k]:10.1f} samples/s")
    for k in ("infer_eager", "infer_contiguous", "infer_compiled"):
        if out.get(f"{k}_ms_per_slice") is not None:
            print(f"  {k:<32} {out[f'{k}_ms_per_slice']:10.2f} ms/slice  "
                  f"{out[f'{k}_s_per_volume']:.3f} s/volume ({DEPTH} slices)")
    for k, v in out["ratios"].items():
        print(f"  ratio {k:<40} {v:6.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", help="write the numbers to this file")
    a = ap.parse_args()
    res = main(quick=a.quick, compile=not a.no_compile, device=a.device)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    sys.exit(0)
