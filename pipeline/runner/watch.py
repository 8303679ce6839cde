"""Progress of a row stage, per row: a rich bar on a terminal, and one plain line every
`run.progress_interval_s` seconds (and at the end) when stderr is not a terminal (nohup, a cluster
job's log), so a long stage can be watched anywhere.

Each line has the rows done, LLM calls and cache hits, tokens (reasoning apart), what the stage
has spent, its projected total and ETA, the run's spend against its cap, and, while the client
waits for a rate limit longer than a second, what for ("waiting 6m0s for the gpt-4o-mini token
limit": a long wait is then not mistaken for a hang). The projection is
recalibrated from the stage's own answers: spent so far plus the rows left at this attempt's mean
cost per processed row (cache hits and resumed shards included as they come).
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

from pipeline.llm.ratelimit import describe_wait
from pipeline.llm.types import BUDGET_EXHAUSTED
from pipeline.progress import format_duration as _duration, plain_lines, progress_bar


#: `-q`: no periodic progress lines (set by the CLI).
QUIET = False


@dataclass
class ChunkProgress:
    """The answers one chunk in flight has had so far (a stage may have two chunks in flight)."""

    results: int = 0


class StageWatch:
    def __init__(self, name: str, total_rows: int, client=None, interval_s: float = 30.0, quiet: bool = False,
                 later_usd: float | None = None):
        self.name, self.total, self.client = name, max(int(total_rows or 0), 0), client
        self.interval_s, self.quiet = interval_s, quiet or QUIET
        self.done = 0  # rows finished (adopted or processed)
        self.processed = 0  # rows processed by this attempt (not adopted from an earlier one)
        self._count = threading.Lock()  # answers arrive on the client's loop, chunks end on others
        self._t0 = time.monotonic()
        ledger = getattr(client, "ledger", None)
        self._spent_before = ledger.spent(label=name) if ledger is not None else 0.0
        # The build's projection: what the run spent before this stage, this stage's projection,
        # and the estimate of the LLM stages after it (`estimate.quick_estimates`, when a build runs).
        self._run_before = ledger.spent() - self._spent_before if ledger is not None else 0.0
        self.later_usd = later_usd
        self.build = None  # a streamed build's projection (`stream.BuildProjection`), shared by its stages
        self._bar = None

    # -- events ------------------------------------------------------------------------------
    def adopted(self, rows: int) -> None:
        with self._count:
            self.done += rows
        self._refresh()

    def set_total(self, rows: int) -> None:
        """The rows this stage will see, once known (a streamed stage starts from an estimate)."""
        self.total = max(int(rows), 0)
        if self._bar is not None:
            self._bar.update(self._task, total=self.total)

    def chunk_started(self) -> ChunkProgress:
        return ChunkProgress()

    def chunk_callback(self, chunk: ChunkProgress):
        """The `on_result` of one chunk: counts its answers, then `on_result`."""

        def on_chunk_result(result) -> None:
            if _refused(result):
                return
            chunk.results += 1
            self.on_result(result)

        return on_chunk_result

    def on_result(self, result) -> None:
        """One LLM answer (or failure) of a chunk in flight: one more row done. A request the budget
        refused is not a row done: the stage stops, and its rows are left for the rerun (counting
        them would shrink the rows left, and the projection of what the rest costs, to nothing)."""
        if _refused(result):
            return
        with self._count:
            self.done += 1
            self.processed += 1
        self._refresh()

    def chunk_done(self, rows: int, chunk: ChunkProgress) -> None:
        """A chunk of `rows` rows is finished: its rows that had no answer counted (no request)."""
        with self._count:
            self.processed += rows - chunk.results
            self.done += rows - chunk.results
        self._refresh()

    # -- figures -----------------------------------------------------------------------------
    def figures(self, with_run: bool = True, with_build: bool = True) -> dict:
        t = self.client.totals if self.client is not None else None
        spent_now = t.cost_usd if t is not None else 0.0
        left = max(self.total - self.done, 0)
        per_row = spent_now / self.processed if self.processed else None
        elapsed = time.monotonic() - self._t0
        rate = self.processed / elapsed if self.processed and elapsed > 0 else None
        out = {
            "rows_done": self.done, "rows_total": self.total,
            "stage_spent_usd": self._spent_before + spent_now,
            "projected_stage_usd": (self._spent_before + spent_now + per_row * left) if per_row is not None else None,
            "eta_s": (left / rate) if rate else None,
        }
        if t is not None:
            out.update(calls=t.http_calls, cache_hits=t.cache_hits, prompt_tokens=t.prompt_tokens,
                       completion_tokens=t.completion_tokens, reasoning_tokens=t.reasoning_tokens)
        ledger = getattr(self.client, "ledger", None)
        if ledger is not None and with_run:  # a ledger query: only in the periodic lines
            out["run_spent_usd"] = ledger.spent()
            out["run_cap_usd"] = ledger.cap
        if self.build is not None:
            if with_build and with_run:  # the other stages' figures: only in the periodic lines
                out["projected_build_usd"] = self.build.projected()
        elif self.later_usd is not None and out["projected_stage_usd"] is not None:
            out["projected_build_usd"] = self._run_before + out["projected_stage_usd"] + self.later_usd
        waiting = getattr(getattr(self.client, "limiter", None), "waiting", None)
        wait = waiting() if waiting is not None else None
        if wait is not None and wait[0] >= 1.0:  # shorter waits are the normal pace, not news
            out["waiting"] = describe_wait(*wait)
        return out

    def line(self) -> str:
        f = self.figures()
        pct = f"{100 * f['rows_done'] / f['rows_total']:.1f}%" if f["rows_total"] else "-"
        parts = [f"{self.name}: {f['rows_done']:,}/{f['rows_total']:,} rows ({pct})"]
        if "calls" in f:
            parts.append(f"calls {f['calls']:,} (cache {f['cache_hits']:,})")
            parts.append(f"tokens {f['prompt_tokens'] + f['completion_tokens']:,} (reasoning {f['reasoning_tokens']:,})")
            parts.append(f"spent ${f['stage_spent_usd']:.4f}")
            if f["projected_stage_usd"] is not None:
                parts.append(f"projected ${f['projected_stage_usd']:.4f}")
        if f["eta_s"] is not None:
            parts.append(f"ETA {_duration(f['eta_s'])}")
        if "run_spent_usd" in f:
            cap = f" of ${f['run_cap_usd']:.2f} cap" if f["run_cap_usd"] is not None else ""
            parts.append(f"run ${f['run_spent_usd']:.4f}{cap}")
        if "projected_build_usd" in f:
            parts.append(f"build projected ${f['projected_build_usd']:.4f}")
        if "waiting" in f:
            parts.append(f["waiting"])
        parts.append(f"elapsed {time.monotonic() - self._t0:.1f}s")
        return " | ".join(parts)

    # -- output ------------------------------------------------------------------------------
    def __enter__(self) -> "StageWatch":
        self._stack = ExitStack()
        self._bar, self._task = self._stack.enter_context(progress_bar(self.name, self.total))
        self._stack.enter_context(plain_lines(self.line, self.interval_s, self.quiet))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    def _refresh(self) -> None:
        if self._bar is None:
            return
        f = self.figures(with_run=False)
        info = ""
        if "calls" in f:
            info = f"calls {f['calls']} (cache {f['cache_hits']}) | ${f['stage_spent_usd']:.4f}"
            if f["projected_stage_usd"] is not None:
                info += f" -> ${f['projected_stage_usd']:.4f}"
        if "waiting" in f:
            info += f" | {f['waiting']}"
        self._bar.update(self._task, completed=self.done, info=info)


def _refused(result) -> bool:
    """An LLM result the run's budget refused (never sent)."""
    return not getattr(result, "ok", True) and getattr(result, "error", None) == BUDGET_EXHAUSTED
