"""What a long run (a study, a bootstrap, a power curve) tells the person waiting for it,
on standard error.

- On a terminal: a tqdm bar of replicates done, named by the run's label (e.g.
  ``bias/main``), so that the blocks of a study are told apart.
- Anywhere else (a log file, a pipe, a batch job): a plain line every
  :data:`LINE_INTERVAL` seconds, ``label: k of n replicates (p%), t elapsed, about s
  left``, and one at the end (a run shorter than that prints nothing); a tqdm bar would
  print nothing there, or a wall of carriage returns.
- On resume: ``label: resuming: k of n replicates done`` before anything runs.
- Before the first fit on a fresh install: that numba is compiling the kernels, once
  (:func:`mlmsim.engine.compiled.kernels_cached`).

``progress=False`` silences all of it; ``True`` forces the bar; None (the default) picks
the bar or the lines by whether standard error is a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["LineProgress", "duration", "progress_reporter", "say"]

#: seconds between two progress lines when standard error is not a terminal
LINE_INTERVAL = 10.0


def duration(seconds: float) -> str:
    """A time span for people: ``0.43 s``, ``42 s``, ``3.5 min`` or ``2.1 h``."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class LineProgress:
    """Progress as plain lines, at most one per ``interval`` seconds
    (:data:`LINE_INTERVAL` by default), and one at the end unless the last line already
    said it; a run shorter than ``interval`` prints nothing. Same ``update`` /
    ``close`` as a tqdm bar."""

    def __init__(self, total: int, initial: int, label: str, *,
                 interval: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.label = int(total), int(initial), label
        self._start_done = self.done
        self._interval = LINE_INTERVAL if interval is None else float(interval)
        self._clock = clock
        self._stream = stream
        self._t0 = self._last = clock()
        self._shown = self.done           # replicates done at the last line printed

    def _line(self, now: float) -> str:
        elapsed = now - self._t0
        ran = self.done - self._start_done
        pct = 100.0 * self.done / self.total if self.total else 100.0
        text = (f"{self.label}: {self.done} of {self.total} replicates ({pct:.0f}%), "
                f"{duration(elapsed)} elapsed")
        left = self.total - self.done
        if 0 < left and ran > 0:
            text += f", about {duration(elapsed / ran * left)} left"
        return text

    def _print(self, text: str) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        print(text, file=stream, flush=True)

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        now = self._clock()
        if now - self._last >= self._interval:
            self._last, self._shown = now, self.done
            self._print(self._line(now))

    def close(self) -> None:
        now = self._clock()
        if self.done != self._shown and (self._shown != self._start_done
                                         or now - self._t0 >= self._interval):
            self._print(self._line(now))


class _Silent:
    """No progress at all (``progress=False``)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream
        return False


def progress_reporter(total: int, initial: int, progress: bool | None, label: str):
    """The reporter for a run of ``total`` replicates of which ``initial`` are done: a
    tqdm bar, :class:`LineProgress` or nothing (see the module docstring)."""
    if progress is False:
        return _Silent()
    if progress is None and not _is_terminal(sys.stderr):
        return LineProgress(total, initial, label)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="rep", desc=label, smoothing=0.1)


def say(text: str, progress: bool | None) -> None:
    """Print one line to standard error unless ``progress`` is False."""
    if progress is not False:
        print(text, file=sys.stderr, flush=True)
