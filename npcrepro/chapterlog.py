"""What a chapter is doing while papermill executes it: its stage, its printed lines, training progress.

Papermill with ``log_output=True`` logs to the ``papermill`` logger: ``Executing Cell N---`` when a
cell starts, ``Ending Cell N---`` when it ends, every stdout and stderr chunk, and the plain-text form
of every displayed object. :class:`ChapterLog` turns that into short lines for the terminal::

    [li2018] cell 14/41 | Training
    [li2018] leave-one-patient-out (4 folds); stage budgets [10, 10, 10] iterations of batch 4
    [li2018] [progress] working fold 0 seed 0 | stage 1/3 stage1 | it 10/30 (33%) | 0:04 elapsed, ~0:08 left

* the stage is the section heading (the last markdown heading above the cell) of the chapter
  (:class:`ChapterLog`, from papermill's ``Executing Cell`` records; everything else papermill logs,
  such as the text form of every table, is dropped);
* stdout lines (what the chapter prints) pass; of stderr only the trainers' progress lines
  (:mod:`npcrepro.engine.progress`, on when :data:`~npcrepro.engine.progress.ENV` is set), so
  library warnings do not flood the terminal. Both come from papermill's ``stdout_file`` and
  ``stderr_file``, which receive the cells' streams only (:class:`StreamLines`).

Records are told apart by the thread that executes the chapter (``npcrepro book`` runs chapters in
threads, each with its own papermill client in that thread), so two chapters running at once print
under their own names. Nothing here changes the executed notebook: the progress lines are stderr,
which the rendered pages drop (``nb_output_stderr: remove``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from pathlib import Path

from npcrepro.engine.progress import ENV, PREFIX

#: Seconds between training progress lines when the CLI logs a chapter's output.
DEFAULT_INTERVAL = 30
_CELL = re.compile(r"^Executing Cell (\d+)-*$")
_HEADING = re.compile(r"^(#{1,3})\s+(.+?)\s*#*\s*$", re.M)


def stages(notebook: str | os.PathLike) -> tuple[list[str], list[bool]]:
    """For each cell of ``notebook`` *as papermill executes it* (an injected-parameters cell after the
    ``parameters`` cell): the section heading it sits under ("" before the first) and whether it is
    a code cell."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    heads, code, current = [], [], ""
    for cell in nb.get("cells", []):
        text = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            found = _HEADING.findall(text)
            if found:
                current = found[-1][1]
        heads.append(current)
        code.append(cell.get("cell_type") == "code")
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            heads.append(current)  # papermill's injected parameters
            code.append(True)
    return heads, code


class ChapterLog(logging.Handler):
    """A handler for the ``papermill`` logger that prints, through ``log``, the stage of each watched
    chapter when a cell starts (``[name] cell k/n | section``); every other record is dropped (the
    chapter's printed lines come through :class:`StreamLines` instead)."""

    def __init__(self, log=print):
        super().__init__(logging.INFO)
        self.log = log
        self._chapters: dict[int, tuple[str, list[str], list[bool]]] = {}
        self._lock = threading.Lock()

    def watch(self, name: str, notebook: str | os.PathLike) -> None:
        """Attribute the records of the calling thread to chapter ``name`` (source ``notebook``)."""
        heads, code = stages(notebook)
        with self._lock:
            self._chapters[threading.get_ident()] = (name, heads, code)

    def forget(self) -> None:
        with self._lock:
            self._chapters.pop(threading.get_ident(), None)

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            chapter = self._chapters.get(record.thread)
        if chapter is None:
            return
        name, heads, code = chapter
        try:
            m = _CELL.match(record.getMessage().strip())
        except Exception:  # noqa: BLE001 - a malformed record must not stop the chapter
            return
        if m:
            i = int(m.group(1)) - 1
            if i < len(code) and not code[i]:
                return  # papermill announces markdown cells too
            k = sum(code[: i + 1]) if i < len(code) else i + 1
            stage = heads[i] if 0 <= i < len(heads) else ""
            self.log(f"[{name}] cell {k}/{sum(code)}" + (f" | {stage}" if stage else ""))


class StreamLines:
    """A file-like sink for papermill's ``stdout_file``/``stderr_file``: complete lines go to ``log``
    prefixed with ``[name]``; with ``progress_only``, only the trainers' progress lines."""

    def __init__(self, name: str, log, *, progress_only: bool = False):
        self.name, self.log, self.progress_only = name, log, progress_only
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += str(text)
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        line = line.rstrip("\r ")
        if line.strip() and (not self.progress_only or line.lstrip().startswith(PREFIX)):
            tag = f"[{self.name}] "
            self.log(line if line.startswith(tag) else tag + line)  # a chapter may name itself

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._buf:
            self._line(self._buf)
            self._buf = ""


_HANDLER: ChapterLog | None = None
_HANDLER_LOCK = threading.Lock()


@contextlib.contextmanager
def chapter_log(name: str, notebook: str | os.PathLike, log=print):
    """While the block runs (papermill executing ``notebook`` in this thread with ``log_output=True``),
    print the chapter's stage through ``log``. Yields ``(stdout, stderr)``: :class:`StreamLines` to
    pass to papermill as ``stdout_file`` and ``stderr_file`` (printed lines; progress lines).
    Sets :data:`~npcrepro.engine.progress.ENV` to :data:`DEFAULT_INTERVAL` unless it is set, so the
    kernel (started inside the block) writes training progress lines."""
    global _HANDLER
    logger = logging.getLogger("papermill")
    with _HANDLER_LOCK:
        if _HANDLER is None:
            _HANDLER = ChapterLog(log)
            logger.addHandler(_HANDLER)
            logger.setLevel(logging.INFO)
            logger.propagate = False  # papermill's own root-logger output would repeat every line
        handler = _HANDLER
        handler.log = log
        os.environ.setdefault(ENV, str(DEFAULT_INTERVAL))
    handler.watch(name, notebook)
    out, err = StreamLines(name, log), StreamLines(name, log, progress_only=True)
    try:
        yield out, err
    finally:
        out.close()
        err.close()
        handler.forget()
