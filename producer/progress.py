"""Progress on stderr: a live bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any

from producer.output import printable


class Progress:
    def __init__(self, total: int, label: str, interval: float = 2.0, enabled: bool = True) -> None:
        # The label holds a batch id: shown with its control characters escaped, never run.
        label = printable(label)
        self.total, self.label, self.interval, self.enabled = total, label, interval, enabled
        self.done = 0
        self.failed = 0
        self._started = time.monotonic()
        self._last = 0.0
        self._bar: Any = None
        self._task: Any = None
        if enabled and sys.stderr.isatty():
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
                TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            from rich.markup import escape

            self._task = self._bar.add_task(escape(label), total=total, failed=0)

    def update(self, done: int, failed: int | None = None) -> None:
        self.done = done
        if failed is not None:
            self.failed = failed
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=done, failed=self.failed)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line()

    def _line(self) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        print(
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%) done, {self.failed} failed, "
            f"{self.done / elapsed:.0f}/s",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled:
            self._line()
