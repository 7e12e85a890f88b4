"""A count with a rate and an ETA for long work outside Keras' own loops (no TensorFlow import).

On a terminal it redraws one line (``embedding gallery 3200/15913 (20%), 410/s, ETA 0:00:31``);
in a log file, CI or ``nohup`` it prints a plain line at every tenth of the work, so a log
has no carriage returns. Keras' ``fit``/``predict`` keep their own progress bars.
"""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """``update(n)`` after each chunk of ``total`` items; ``close()`` ends the line.

    ``stream``: where to write (default ``sys.stderr``, so piped stdout stays
    clean); ``terminal``: redraw in place (default: whether ``stream`` is a TTY).
    Work of fewer than ``min_total`` items prints nothing.
    """

    def __init__(self, label: str, total: int, stream=None, terminal: bool | None = None,
                 min_total: int = 2, clock=time.monotonic):
        self.label, self.total, self.done = label, int(total), 0
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.enabled = self.total >= min_total
        self.clock, self.started = clock, clock()
        self._next_tenth = 1

    def _line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        percent = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{self.label} {self.done}/{self.total} ({percent:.0f}%), {rate:.0f}/s, "
                f"ETA {_clock(eta)}")

    def update(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + int(count))
        if not self.enabled:
            return
        if self.terminal:
            self.stream.write("\r" + self._line() + "\x1b[K")
            self.stream.flush()
        elif self.done * 10 >= self._next_tenth * self.total:
            while self._next_tenth * self.total <= self.done * 10:
                self._next_tenth += 1
            self.stream.write(self._line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.terminal:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
