"""One progress display for every long loop: a rich bar on a terminal, plain periodic lines in a log.

A rich bar drawn to a pipe shows nothing until the end (a 2-minute eval printed nothing in a CI log),
so when the console is not a terminal :class:`PlainProgress` prints ``description: done/total (pct,
elapsed, ETA)`` at most every ``RSVISION_PROGRESS_SECONDS`` (default 10) and once at completion.
Both have the subset of ``rich.progress.Progress`` rsvision uses: ``add_task``, ``update``,
``advance``, ``start`` / ``stop`` and the context manager.
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterable, Iterator

__all__ = ["progress", "track", "PlainProgress"]


class PlainProgress:
    """Plain-line stand-in for ``rich.progress.Progress`` (see the module docstring)."""

    def __init__(self, console: Any = None, interval: float | None = None):
        self.console = console
        self.interval = float(os.environ.get("RSVISION_PROGRESS_SECONDS", 10) if interval is None else interval)
        self.tasks: dict[int, dict[str, Any]] = {}

    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        tid = len(self.tasks)
        now = time.monotonic()
        self.tasks[tid] = {"description": description, "total": total, "completed": 0, "t0": now, "last": now,
                           "finished": False}
        return tid

    def update(self, task_id: int, completed: float | None = None, total: float | None = None,
               advance: float | None = None, description: str | None = None, **_: Any) -> None:
        t = self.tasks[task_id]
        if total is not None:
            t["total"] = total
        if description is not None:
            t["description"] = description
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        now = time.monotonic()
        done = t["total"] is not None and t["completed"] >= t["total"]
        if (done and not t["finished"]) or now - t["last"] >= self.interval:
            t["last"], t["finished"] = now, done
            self._print(self._line(t, now))

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    @staticmethod
    def _line(t: dict[str, Any], now: float) -> str:
        el = now - t["t0"]
        n, total = t["completed"], t["total"]
        if not total:
            return f"{t['description']}: {n:g} done, {el:.0f} s"
        eta = el / n * (total - n) if n else float("nan")
        return f"{t['description']}: {n:g}/{total:g} ({100 * n / total:.0f}%, {el:.0f} s elapsed, ETA {eta:.0f} s)"

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def progress(console: Any = None, transient: bool = True):
    """A rich ``Progress`` (bar, count, elapsed) on a terminal, else a :class:`PlainProgress`."""
    from rich.console import Console

    console = console or Console()
    if not console.is_terminal:
        return PlainProgress(console)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=transient)


def track(items: Iterable[Any], description: str = "working", total: int | None = None,
          console: Any = None) -> Iterator[Any]:
    """``for x in track(loader, "evaluating")``: the display of :func:`progress` over an iterable."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(console) as bar:
        job = bar.add_task(description, total=total)
        for x in items:
            yield x
            bar.update(job, advance=1)
