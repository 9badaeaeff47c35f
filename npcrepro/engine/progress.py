"""Training progress: plain log lines for runs nobody watches in a notebook (:class:`ProgressLog`),
and a tqdm bar for those somebody does (:class:`ProgressBar`, ``Trainer(progress=True)``).

Chapters train with ``progress=False`` (a tqdm bar would be a widget in the executed notebook). When
the environment variable :data:`ENV` holds a number of seconds (``npcrepro run`` / ``npcrepro book``
set it, see :mod:`npcrepro.chapterlog`), every :class:`~npcrepro.engine.loop.Trainer` adds a
:class:`ProgressLog` callback that writes one line to stderr at most that often, e.g.::

    [progress] li2018 working fold 0 | stage 2/3 stage2 | it 300/1000 (30%) | loss 0.4123 | lr 1.0e-03 | 0:12 elapsed, ~0:28 left

The kernel sends stderr to papermill, which logs it; the book's pages drop stderr outputs
(``nb_output_stderr: remove`` in _config.yml), so these lines never clutter a rendered page.
"""
from __future__ import annotations

import os
import sys
import time

#: Seconds between progress lines (unset, empty or 0: no lines).
ENV = "NPCREPRO_PROGRESS_SECONDS"
#: Every line starts with this, so that a log reader can tell them from other stderr output.
PREFIX = "[progress]"


def interval_from_env() -> float:
    """The interval that :data:`ENV` asks for, in seconds (0 when unset or not a positive number)."""
    try:
        value = float(os.environ.get(ENV, "") or 0)
    except ValueError:
        return 0.0
    return value if value > 0 else 0.0


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLog:
    """Trainer callback: a line at the first iteration, every ``every`` seconds, at each stage start
    and at the end. ``stream`` defaults to ``sys.stderr`` (looked up at write time, so a kernel's
    captured stderr is used)."""

    def __init__(self, every: float, stream=None):
        self.every = float(every)
        self.stream = stream
        self._t0 = self._last = None
        self._it0 = 0

    def _write(self, text: str) -> None:
        out = self.stream or sys.stderr
        out.write(f"{PREFIX} {text}\n")
        out.flush()

    def _line(self, trainer, loss=None, lr=None) -> str:
        st = trainer.state
        ipe = trainer.iterations_per_epoch
        total = sum(s.budget(ipe) for s in trainer.stages)
        done = min(st.iteration, total)
        si = min(st.stage, len(trainer.stages) - 1)
        parts = [trainer.desc or "training",
                 f"stage {si + 1}/{len(trainer.stages)} {trainer.stages[si].name}",
                 f"it {done}/{total} ({100 * done / max(total, 1):.0f}%)"]
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        if lr is not None:
            parts.append(f"lr {lr:.1e}")
        elapsed = time.perf_counter() - self._t0
        rate = (done - self._it0) / elapsed if elapsed > 0 else 0
        left = f", ~{_clock((total - done) / rate)} left" if rate > 0 and done < total else ""
        parts.append(f"{_clock(elapsed)} elapsed{left}")
        return " | ".join(parts)

    def __call__(self, trainer, event: str, info: dict) -> None:
        if not trainer.is_main():
            return
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._last, self._it0 = now, now, trainer.state.iteration
            self._write(self._line(trainer) + " | started")
        if event == "stage_start" and trainer.state.iteration > self._it0:
            self._write(self._line(trainer) + " | next stage")
        elif event == "iteration" and now - self._last >= self.every:
            self._last = now
            self._write(self._line(trainer, info.get("loss"), info.get("lr")))
        elif event == "end":
            how = "interrupted" if info.get("interrupted") else "done"
            self._write(self._line(trainer) + f" | {how}")


class ProgressBar:
    """Trainer handler for ``progress=True``: a tqdm bar over every stage's iterations with loss, lr and
    samples/s since the last curve row (rank 0 only; closed when ``fit`` returns or raises)."""

    def __init__(self) -> None:
        self.bar = None
        self._t_row = self._last_post = 0.0

    def __call__(self, trainer, event: str, info: dict) -> None:
        if not trainer.is_main():
            return
        now = time.perf_counter()
        if event == "stage_start" and self.bar is None:
            from npcrepro.paths import progress_bar as tqdm

            st = trainer.state
            total = sum(trainer.stage_budget(s) for s in trainer.stages)
            before = sum(trainer.stage_budget(s) for s in trainer.stages[:st.stage])
            self.bar = tqdm(total=total, initial=min(total, before + st.stage_iteration), desc=trainer.desc,
                            unit="it", mininterval=0.5, dynamic_ncols=True)
        if event in ("stage_start", "evaluation"):
            self._t_row = now
        elif event == "iteration" and self.bar is not None:
            self.bar.update(1)
            if now - self._last_post > 0.5:
                self._last_post = now
                el = now - self._t_row
                self.bar.set_postfix(loss=f"{float(info['loss']):.4f}", lr=f"{info['lr']:.2e}",
                                     sps=f"{trainer.state.acc_samples / el:.1f}" if el > 0 else "-",
                                     refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
