"""The Trainer's checkpoints: what they hold, writing them, reading them safely
(``torch.load(weights_only=True)``, and one DataError for anything else), and the handler that
writes them and resumes from them on the Trainer's events (:class:`Checkpointer`)."""
from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from npcrepro.engine import distributed as D
from npcrepro.engine.device import rng_state, set_rng_state
from npcrepro.engine.runs import to_jsonable
from npcrepro.engine.stages import TrainState
from npcrepro.errors import DataError, ParameterError

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "checkpoint_of", "save_checkpoint",
           "restore_counters", "restore_stage", "Checkpointer"]

#: 2: RNG states as tensors and numbers (loads with ``weights_only=True``); 1: numpy arrays.
CHECKPOINT_FORMAT = 2


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint written by the Trainer, with ``torch.load(weights_only=True)``.

    A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads without running
    code. Anything else (a file from elsewhere whose pickle names Python callables, or a checkpoint
    of an older format) is refused with one DataError; there is no fallback to unsafe loading.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: checkpoint not found")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(_refusal(p, exc)) from None
    except Exception as exc:  # noqa: BLE001 - corrupt file of any kind
        raise DataError(f"{p}: cannot read checkpoint ({exc.__class__.__name__}: "
                        f"{_first_line(exc)})") from None
    found = ck.get("format") if isinstance(ck, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise DataError(f"{p}: not an npcrepro checkpoint of format {CHECKPOINT_FORMAT} (format "
                        f"{found if found is not None else '?'}); retrain, or resume it with the "
                        "npcrepro version that wrote it")
    return ck


def _refusal(p: Path, exc: BaseException) -> str:
    """Why ``p`` does not load with ``weights_only=True``: not a checkpoint at all, an old checkpoint
    (numpy RNG state), or a file whose pickle would call Python objects."""
    try:
        names = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(p)))
    except Exception:  # noqa: BLE001 - not a torch zip file
        names = None
    if not names:
        try:
            with open(p, "rb") as fh:
                zipped = fh.read(4) == b"PK\x03\x04"
        except OSError:
            zipped = True
        if not zipped:
            return (f"{p}: cannot read checkpoint: not a torch checkpoint (torch.save writes a zip archive; "
                    "this file is not one: a raw pickle or another format), so it is not loaded")
        return f"{p}: cannot read checkpoint (corrupt, or not a torch checkpoint: {_shortened(_first_line(exc))})"
    if names and all(n.startswith("numpy.") for n in names):
        return (f"{p}: checkpoint of an older npcrepro (format 1: numpy arrays in its RNG state) is "
                "not loaded, because loading it would need unsafe unpickling; retrain, or resume it "
                "with the npcrepro version that wrote it")
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return (f"{p}: refused: the checkpoint holds Python objects other than tensors, numbers, "
            f"strings, lists and dicts{f' ({shown})' if shown else ''}; loading it could run code, so "
            "npcrepro loads checkpoints only with torch.load(weights_only=True)")


def _shortened(text: str, limit: int = 120) -> str:
    """``text`` cut at a word boundary to at most about ``limit`` characters (marked with "...")."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return (cut if cut else text[:limit]) + " ..."


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _gathered_rng(trainer) -> list:
    st = rng_state()
    if not trainer.info.distributed:
        return [st]
    out: list = [None] * trainer.info.world_size
    torch.distributed.all_gather_object(out, st)
    return out


def checkpoint_of(trainer) -> dict:
    """Everything a resumed run needs: weights, optimiser, schedule, scaler, averaged weights, every
    rank's RNG states, counters and curve rows (a collective under DDP: every rank calls it)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "schedule": trainer.schedule.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "average": trainer.average.state_dict() if trainer.average is not None else None,
        "rng": _gathered_rng(trainer),
        "state": asdict(trainer.state),
        "history": to_jsonable(trainer.rows),  # plain types: the checkpoint loads weights_only
        "stages": to_jsonable([s.describe() for s in trainer.stages]),
        "seed": trainer.seed,
        "batch_size": trainer.batch_size,
        "iterations_per_epoch": trainer.iterations_per_epoch,
        "world_size": trainer.info.world_size,
    }


def save_checkpoint(trainer, which: str = "last") -> Path | None:
    """Write ``trainer``'s ``checkpoint_<which>.pt`` into its run folder (rank 0; every rank must call
    it, atomically: a temporary file renamed)."""
    d = trainer.checkpoint_dir
    if d is None:
        return None
    ck = checkpoint_of(trainer)  # collective under DDP (every rank gets here)
    if not trainer.is_main():
        return None
    p = d / f"checkpoint_{which}.pt"
    tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
    try:
        torch.save(ck, tmp)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill mid-write leaves no partial file behind
        raise
    return p


def restore_counters(trainer, ck: dict) -> None:
    """Resume, first step: ``trainer``'s weights, counters and curve rows from checkpoint ``ck`` (one
    written with the same seed and batch size, else a ParameterError)."""
    if ck.get("seed") != trainer.seed or ck.get("batch_size") != trainer.batch_size:
        raise ParameterError(f"checkpoint was written with seed={ck.get('seed')}, batch_size="
                             f"{ck.get('batch_size')}; this trainer has seed={trainer.seed}, "
                             f"batch_size={trainer.batch_size}")
    trainer.model.load_state_dict(ck["model"])
    trainer.state = TrainState(**ck["state"])
    trainer.rows = list(ck["history"])


def restore_stage(trainer, ck: dict) -> None:
    """Resume, second step, once the checkpoint's stage is set up again: its optimiser, schedule,
    scaler, averaged weights and this rank's RNG states."""
    trainer.optimizer.load_state_dict(ck["optimizer"])
    trainer.schedule.load_state_dict(ck["schedule"])
    trainer.scaler.load_state_dict(ck["scaler"])
    if trainer.average is not None and ck.get("average"):
        trainer.average.load_state_dict(ck["average"])
    rngs = ck["rng"]
    set_rng_state(rngs[trainer.info.rank] if trainer.info.rank < len(rngs) else rngs[0])


class Checkpointer:
    """The Trainer's checkpoint handler (one per Trainer, first among its handlers).

    Writes ``checkpoint_last.pt`` at every evaluation, every ``every`` iterations (None: only at
    evaluations), where a session stops before its budget ("pause") and at the end ("finish");
    ``checkpoint_best.pt`` whenever the validation loss improves ("improved"), and at the end where
    no validation chose one. :meth:`resume` restores a checkpoint's weights, counters and rows; the
    optimiser, schedule, scaler, averaged weights and RNG states follow at the "stage_start" of the
    checkpoint's stage, once that stage is set up again. Every rank calls it (the writes are
    collectives under DDP; rank 0 writes)."""

    def __init__(self, every: int | None = None):
        self.every = int(every) if every else None
        self.pending: dict | None = None

    def resume(self, trainer, path: str | os.PathLike) -> None:
        ck = load_checkpoint(path, map_location=trainer.device)
        restore_counters(trainer, ck)
        self.pending = ck

    def __call__(self, trainer, event: str, info: dict) -> None:
        if event == "stage_start":
            if self.pending is not None and self.pending["state"]["stage"] == info["stage"]:
                restore_stage(trainer, self.pending)
                self.pending = None
        elif event == "improved":
            trainer.save_checkpoint("best")
        elif event == "evaluation":
            trainer.save_checkpoint("last")
        elif event in ("iteration", "pause") and not info.get("evaluated"):
            if event == "pause" or (self.every and info["iteration"] % self.every == 0):
                trainer.flush_loss()
                trainer.save_checkpoint("last")
        elif event == "finish":
            trainer.save_checkpoint("last")
            d = trainer.checkpoint_dir
            if d is not None and D.broadcast_object(
                    trainer.is_main() and (trainer.val_data is None or not (d / "checkpoint_best.pt").exists())):
                trainer.save_checkpoint("best")
