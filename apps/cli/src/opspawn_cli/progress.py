"""A progress bar on stderr for long operator commands (replay), with no dependency.

On a terminal it redraws one line; elsewhere (a log file, CI) it prints a line per tenth done, so
logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class ProgressBar:
    def __init__(self, total: int, *, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.label = label
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty()
        self._started = time.monotonic()
        self._last_tenth = -1
        self.done = 0

    def update(self, done: int) -> None:
        self.done = done
        fraction = 1.0 if self.total == 0 else min(done / self.total, 1.0)
        if self._interactive:
            self._stream.write("\r" + self._line(fraction))
            self._stream.flush()
            return
        tenth = int(fraction * 10)
        if tenth > self._last_tenth:
            self._last_tenth = tenth
            self._stream.write(self._line(fraction) + "\n")
            self._stream.flush()

    def finish(self) -> None:
        self.update(self.done)
        if self._interactive:
            self._stream.write("\n")
            self._stream.flush()

    def _line(self, fraction: float) -> str:
        filled = int(fraction * WIDTH)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self.done / elapsed
        return (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {fraction:4.0%} "
            f"{self.done:,}/{self.total:,} events, {rate:,.0f}/s"
        )
