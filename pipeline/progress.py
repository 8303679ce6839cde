"""Progress display and stage summaries (rich), on stderr so stdout stays clean for data."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

console = Console(stderr=True, highlight=False)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


@contextmanager
def plain_lines(line: Callable[[], str], interval_s: float, quiet: bool = False) -> Iterator[None]:
    """When stderr is not a terminal (nohup, a cluster job's log): one `[progress] <line()>` every
    `interval_s` seconds and a last one at the end, so long work can be watched in a log. On a
    terminal the rich bar does that job, and this prints nothing."""
    if console.is_terminal or quiet:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            console.print(f"[progress] {line()}", markup=False, highlight=False, soft_wrap=True)

    th = threading.Thread(target=loop, name="progress-lines", daemon=True)
    th.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        th.join(timeout=5)
        if ok:
            console.print(f"[progress] {line()} (done)", markup=False, highlight=False, soft_wrap=True)


#: The one display that bars join while `shared_bars` is open (rich shows one live display at a time).
_SHARED: Progress | None = None


@contextmanager
def shared_bars() -> Iterator[None]:
    """One display for every bar opened meanwhile, from any thread: the stages of a streamed build
    run at once, one bar each."""
    global _SHARED
    progress = _row_bars()
    with progress:
        _SHARED = progress
        try:
            yield
        finally:
            _SHARED = None


def _row_bars() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[tuple[Progress, int]]:
    """A bar with rows done and a free-text field for calls, tokens and cost so far."""
    if _SHARED is not None:
        yield _SHARED, _SHARED.add_task(description, total=total, info="")
        return
    progress = _row_bars()
    with progress:
        task = progress.add_task(description, total=total, info="")
        yield progress, task


@contextmanager
def transfer_bar(description: str, total_bytes: int) -> Iterator[tuple[Progress, int]]:
    """A bar in bytes (done / total, speed, time left) with a free-text field (e.g. files done)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    with progress:
        task = progress.add_task(description, total=total_bytes, info="")
        yield progress, task


def print_summary(title: str, rows: list[tuple[str, object]]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("value", justify="right")
    for k, v in rows:
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
