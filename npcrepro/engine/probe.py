"""The plan probe: a Trainer handler that measures one training step of every stage (the dry run),
and times the stage's iterations where it runs enough of them (the timed dry run).

At the start of a stage that begins at its first iteration, :class:`PlanProbe` takes the stage's first
batch and measures, without computing it, one step's FLOPs (forward and backward,
``torch.utils.flop_counter``), the bytes of the tensors saved for backward, of parameters, gradients
and optimiser state, the batch shape and the stage's full budget; the row goes to ``plan.json`` in
the run folder (``npcrepro plan``). ``Trainer(probe=True)`` attaches it.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from npcrepro.engine.loaders import available_memory, float_tensors, split_batch, to_float
from npcrepro.engine.stages import Stage
from npcrepro.errors import ParameterError

__all__ = ["PlanProbe", "measure_step", "save_row", "WARMUP_ITERATIONS"]


#: Iterations of a stage a timed dry run does not count: the first ones pay for allocation, cuDNN's
#: algorithm search and the first batches' caches.
WARMUP_ITERATIONS = 3


class PlanProbe:
    """Trainer handler (``callbacks``): measure one step at the first batch of every stage that starts
    from its first iteration (:func:`measure_step`); the rows are kept in :attr:`rows`.

    It also times the stage's iterations (the wall time from one ``iteration`` event to the next:
    making the batch and the step, on CUDA up to a synchronisation), and where the stage ran more
    than :data:`WARMUP_ITERATIONS` of them (a timed dry run, ``dry_run="time"``) adds to its row
    ``ms_per_iteration`` (the median over the rest, without the iterations that also evaluated
    where at least :data:`WARMUP_ITERATIONS` others remain; a dry run with one training patient has
    one-iteration epochs and evaluates at each, then ``with_evaluation`` is true: a dry run evaluates
    on two items, so little is added) and ``timed_iterations``: what ``npcrepro bench gpu``
    calibrates the plan with."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self._times: list[tuple[float, bool]] = []

    def __call__(self, trainer, event: str, info: dict) -> None:
        if event == "stage_start" and trainer.state.stage_iteration == 0:
            self._finish_timing(trainer)
            si = info["stage"]
            self.rows.append(measure_step(trainer, trainer.first_batch(si), trainer.stages[si], si))
            if trainer.cuda:
                torch.cuda.synchronize()
            self._times = [(time.perf_counter(), False)]
        elif event == "iteration" and self._times:
            if trainer.cuda:
                torch.cuda.synchronize()
            self._times.append((time.perf_counter(), bool(info.get("evaluated"))))
        elif event == "end":
            self._finish_timing(trainer)

    def _finish_timing(self, trainer) -> None:
        times, self._times = self._times, []
        if not self.rows or len(times) < 2:
            return
        steps = [(b - a, evaluated) for (a, _), (b, evaluated) in zip(times, times[1:])][WARMUP_ITERATIONS:]
        plain = [d for d, evaluated in steps if not evaluated]
        chosen = plain if len(plain) >= WARMUP_ITERATIONS else [d for d, _ in steps]
        if chosen:
            row = self.rows[-1]
            row.update(ms_per_iteration=1000.0 * float(np.median(chosen)), timed_iterations=len(chosen),
                       with_evaluation=chosen is not plain)
            save_row(trainer, row)


def measure_step(trainer, batch, stage: Stage, si: int) -> dict:
    """Measure one training step of ``stage`` at this batch (the Trainer's ``probe``) without computing
    it: a copy of the model and the batch on the ``meta`` device (shapes only) go through
    forward, loss and backward under :class:`~torch.utils.flop_counter.FlopCounterMode` and a
    saved-tensor hook. Falls back to the real step's accounting when an operation has no meta
    kernel. Appends one row to ``plan.json`` in the run folder and returns it."""
    from torch.utils.flop_counter import FlopCounterMode

    x, y = split_batch(batch)
    saved: dict[int, int] = {}

    def measure(model, xx, yy) -> int:
        params = {p.untyped_storage()._cdata for p in model.parameters()}
        trainable = [p for n, p in model.named_parameters()
                     if dict(trainer.model.named_parameters())[n].requires_grad]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)

        def pack(t):
            try:
                st = t.untyped_storage()
                if st._cdata not in params:
                    saved[st._cdata] = max(saved.get(st._cdata, 0), st.nbytes())
            except (RuntimeError, NotImplementedError, AttributeError):
                pass
            return t

        if stage.target_fn is not None:
            yy = stage.target_fn(yy)
        model.train()
        with FlopCounterMode(display=False) as counter:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                with trainer.autocast():
                    out = model(xx, **stage.forward_kwargs)
                try:
                    loss = trainer.loss_for(stage)(to_float(out), yy)
                except (RuntimeError, NotImplementedError):
                    if xx.device.type != "meta":
                        raise
                    # a loss that reads values (a target check): on meta, the outputs' mean
                    # stands in (the loss's own FLOPs and saved tensors are a small share)
                    loss = sum(o.float().mean() for o in float_tensors(out))
            loss.backward()
        return int(counter.get_total_flops())

    def to_meta(t):
        return t.to("meta") if torch.is_tensor(t) else t

    device = "meta"
    try:
        meta_model = copy.deepcopy(trainer.model).to("meta")
        flops = measure(meta_model, trainer.in_memory_format(to_meta(x)), to_meta(y))
    except Exception:  # noqa: BLE001 - an op without a meta kernel (or a loss reading values)
        saved.clear()
        device = str(trainer.device)
        trainer.optimizer.zero_grad(set_to_none=True)
        xx, yy = trainer.prepare(batch)
        flops = measure(trainer.model, xx, yy)
        trainer.optimizer.zero_grad(set_to_none=True)

    def nbytes(ts):
        return int(sum(t.numel() * t.element_size() for t in ts if torch.is_tensor(t)))

    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    per_param = {"adam": 2, "adamw": 2, "rmsprop": 1, "sgd": 1}.get(stage.optimizer, 2)
    row = {"network": trainer.desc, "stage": stage.name, "stage_index": si, "measured_on": device,
           "flops": flops, "batch": list(x.shape), "batch_size": trainer.batch_size,
           "input_bytes": nbytes([x]),
           "activation_bytes": int(sum(saved.values())),
           "parameter_bytes": nbytes(trainer.model.parameters()), "gradient_bytes": nbytes(trainable),
           "optimizer_bytes": nbytes(trainable) * per_param, "optimizer": stage.optimizer,
           "amp": str(trainer.mixed_dtype).removeprefix("torch.") if trainer.use_amp else None,
           "epochs": stage.epochs, "iterations": stage.iterations,
           "iterations_per_epoch": trainer.iterations_per_epoch,
           "iterations_per_epoch_given": trainer.iterations_per_epoch_given,
           "train_items": len(trainer.train_data), "early_stopping": stage.early_stopping}
    need = sum(row[k] for k in ("activation_bytes", "parameter_bytes", "gradient_bytes",
                                "optimizer_bytes", "input_bytes"))
    free = available_memory()
    if (trainer.device.type == "cpu" and free is not None and need > 0.8 * free
            and (trainer.stage_iteration_cap is None or trainer.stage_iteration_cap > 0)):
        raise ParameterError(f"{trainer.desc}: one training step at batch {list(x.shape)} needs about "
                             f"{need / 1e9:.1f} GB, and this machine has {free / 1e9:.1f} GB "
                             f"available: lower the batch size (e.g. -p batch_size 2) for a "
                             f"dry run on the CPU")
    save_row(trainer, row)
    return row


def save_row(trainer, row: dict) -> None:
    """Write ``row`` into ``plan.json`` of the trainer's run folder (replacing its stage's row)."""
    if trainer.run is not None and trainer.is_main():
        path = Path(trainer.run.path) / "plan.json"
        rows = json.loads(path.read_text(encoding="utf-8")) if path.exists() else []
        rows = [r for r in rows if r.get("stage_index") != row["stage_index"]] + [row]
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
