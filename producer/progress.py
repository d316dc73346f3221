"""Progress on stderr: a live bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from producer.messages import say, stderr_usable
from producer.output import printable


def _rate(done: int, elapsed: float) -> str:
    per_s = done / max(elapsed, 1e-9)
    return f"{per_s:.1f}/s" if per_s < 10 else f"{per_s:.0f}/s"


class Progress:
    """`update(done, failed)` with both counted from the results written, so failed never passes done."""

    def __init__(self, total: int, label: str, interval: float = 2.0, enabled: bool = True) -> None:
        # The label holds a batch id: shown with its control characters escaped, never run.
        label = printable(label)
        self.total, self.label, self.interval = total, label, interval
        self.enabled = enabled and stderr_usable()
        self.done = 0
        self.failed = 0
        self._started = time.monotonic()
        self._last = 0.0
        self._printed: tuple[int, int] | None = None  # the state the last plain line showed
        self._closed = False
        self._bar: Any = None
        self._task: Any = None
        if self.enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[failed]} failed"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                transient=False,
                console=Console(stderr=True),
            )
            self._bar.start()
            from rich.markup import escape

            self._task = self._bar.add_task(escape(label), total=total, failed=0, rate="0/s")

    def update(self, done: int, failed: int | None = None) -> None:
        self.done = done
        if failed is not None:
            self.failed = min(failed, done)
        if not self.enabled:
            return
        if self._bar is not None:
            rate = _rate(done, time.monotonic() - self._started)
            self._bar.update(self._task, completed=done, failed=self.failed, rate=rate)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def tick(self) -> None:
        """Called on a timer: a plain line for results that arrived since the last one was printed, so
        the display never stays behind while a batch waits on its last slow URLs."""
        behind = self._printed != (self.done, self.failed)
        if self.enabled and self._bar is None and not self._closed and behind:
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._line()

    def _line(self) -> None:
        self._printed = (self.done, self.failed)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        say(
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) done, {self.failed} failed, "
            f"{_rate(self.done, time.monotonic() - self._started)}",
            prefix="",
        )

    def close(self) -> None:
        """The final state, shown once: not again if the last periodic line already showed it."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and self._printed != (self.done, self.failed):
            self._line()
