"""`infir mine`: retrieved passage negatives, then one LLM call per row that poisons the
instruction (I-, HN1) and the query (Q-, HN2)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipeline.generation.models import PoisonedPair
from pipeline.generation.retrieval_glue import mined_negatives, near_misses
from pipeline.runner import llm
from pipeline.runner.shape import Context, LLMStage


class Mine(LLMStage):
    name = "mine"
    section = "mine"
    adds = ("mined_negatives", "instruction_negative", "hard_negative_document_1", "hn1_passage_id",
            "query_negative", "hard_negative_document_2", "hn2_passage_id", "poison_model", "prompt_poison",
            "mine_error", "usage_mine")
    make_help = "stage 3: poisoned instructions/queries and hard negatives"
    doc = """Mine passage negatives (BM25/dense, mine.retrieval) and poison each row (prompts/poison.md).

    Input: the upstream stage's rows. Output: runs/<run>/mine/ with mined_negatives,
    instruction_negative, hard_negative_document_1, query_negative, hard_negative_document_2.
    One LLM call per row.
    """

    def tasks(self, ctx: Context, rows: list[dict]) -> tuple[list, dict]:
        """One poison request per row that has an instruction, and the near misses shown to it."""
        m = ctx.settings
        # Near misses, not margin-filtered negatives: HN1 must answer Q+, which is exactly what the
        # false-negative margin removes from passage negatives.
        close = near_misses(ctx, rows, m.candidates) if m.candidates else {}
        tasks = [
            llm.task(
                r["id"], ctx.prompt,
                {
                    "query": r["query_positive"],
                    "instruction": r["instruction_positive"],
                    "passage": r["document_positive"],
                    "candidates": [n.text for n in close.get(r["id"], [])],
                },
                PoisonedPair, ctx.model, ctx.params, ctx.cfg.llm.structured_output,
            )
            for r in rows
            if r["instruction_positive"]
        ]
        return tasks, close

    def prepare(self, ctx: Context, rows: list[dict]) -> tuple:
        negatives = mined_negatives(ctx, rows, ctx.settings.retrieval)
        tasks, close = self.tasks(ctx, rows)
        return tasks, (negatives, close)

    def to_row(self, ctx: Context, r: dict, res, extra) -> dict:
        negatives, close = extra
        v = res.value if res is not None and res.ok else None
        by_text = {n.text: n.passage_id for n in close.get(r["id"], [])}
        if res is None:
            error = f"no instruction: {r['generate_error']}"
        else:
            error = None if res.ok else res.error
        return {
            "mined_negatives": negatives[r["id"]],
            "instruction_negative": v.instruction_negative if v else None,
            "hard_negative_document_1": v.hard_negative_document_1 if v else None,
            # A negative written by the LLM has no id; one taken from the corpus keeps its own.
            "hn1_passage_id": by_text.get(v.hard_negative_document_1) if v else None,
            "query_negative": v.query_negative if v else None,
            "hard_negative_document_2": v.hard_negative_document_2 if v else None,
            "hn2_passage_id": by_text.get(v.hard_negative_document_2) if v else None,
            "poison_model": ctx.model,
            "prompt_poison": ctx.prompt.sha,
            "mine_error": error,
            "usage_mine": llm.usage_record(ctx.client, ctx.model, res),
        }

    def tally(self, ctx: Context, counts: Counter, table: pa.Table) -> None:
        counts["rows"] += table.num_rows
        ok = table.column("mine_error").null_count
        no_instr = table.column("instruction_positive").null_count
        counts["poisoned"] += ok
        counts["skipped (no instruction)"] += no_instr
        counts["failed"] += table.num_rows - ok - no_instr
        counts["mined negatives"] += sum(len(x) for x in table.column("mined_negatives").to_pylist())

    def summary(self, ctx: Context, counts: Counter, shards: Counter) -> dict:
        keys = ("rows", "poisoned", "failed", "skipped (no instruction)", "mined negatives")
        return {**{k: counts[k] for k in keys}, **shards}

    def stand_in(self, row: dict) -> dict:
        return {
            **super().stand_in(row),
            "instruction_negative": row["instruction_positive"],
            "query_negative": row["query_positive"],
            "hard_negative_document_1": row["document_positive"],
            "hard_negative_document_2": row["document_positive"],
        }


STAGE = Mine()
