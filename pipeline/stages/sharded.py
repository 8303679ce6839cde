"""The small runner the LLM stages share: stream input rows in fixed-size chunks, turn each
chunk into an output shard, skip shards an interrupted attempt already finished.

Chunk k always holds input rows [k*S, (k+1)*S) in input order, and the stage's identity
(input fingerprint, config, prompts) is checked before resuming, so a kept shard is exactly the
shard this attempt would write. Responses already paid for come back from the LLM cache.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa

from pipeline.errors import InfirError
from pipeline.progress import llm_info, progress_bar
from pipeline.store import StageOutput, iter_tables, shard_name


def iter_chunks(stage_dir: Path, size: int) -> Iterator[list[dict]]:
    buf: list[dict] = []
    for _, table in iter_tables(stage_dir):
        for row in table.to_pylist():
            buf.append(row)
            if len(buf) >= size:
                yield buf
                buf = []
    if buf:
        yield buf


def run_chunks(
    out: StageOutput,
    input_dir: Path,
    total_rows: int,
    shard_rows: int,
    schema: pa.Schema,
    process: Callable[[list[dict]], list[dict]],
    label: str,
    client=None,
    on_table: Callable[[pa.Table], None] | None = None,
) -> Counter:
    """Process every chunk (or adopt its finished shard); returns counts of kept/new shards."""
    counts: Counter = Counter()
    with progress_bar(label, total_rows) as (bar, task):
        for k, rows in enumerate(iter_chunks(input_dir, shard_rows)):
            name = shard_name(k)
            if out.has_shard(name):
                table = out.adopt_shard(name)
                counts["shards resumed"] += 1
            else:
                processed = process(rows)
                _stop_if_client_stopped(client, out)
                table = pa.Table.from_pylist(processed, schema=schema)
                out.write_shard(name, table)
                counts["shards written"] += 1
            if on_table is not None:
                on_table(table)
            bar.update(task, advance=len(rows), info=llm_info(client.totals) if client else "")
    return counts


def _stop_if_client_stopped(client, out: StageOutput) -> None:
    # A chunk cut short by the budget or a fatal API error is not written: its rows would be
    # recorded as failures, and the rerun that resumes from the cache must redo them.
    if client is None:
        return
    if client.budget_exhausted:
        raise InfirError(
            f"{out.dir}: stopped at the cost budget (llm.max_cost_usd, ${client.totals.cost_usd:.4f} spent); "
            "finished shards and every paid response are kept: raise the budget and rerun to resume"
        )
    if client.stop_reason:
        raise InfirError(f"{out.dir}: stopped: {client.stop_reason}; rerun to resume once it is fixed")
