"""`infir generate`: an LLM writes the positive instruction I+ for every upstream row."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from pipeline.generation.models import GeneratedInstruction
from pipeline.runner import llm
from pipeline.runner.shape import Context, LLMStage
from pipeline.generation.retrieval_glue import near_misses


class Generate(LLMStage):
    name = "generate"
    section = "generate"
    adds = ("instruction_positive", "instruction_kind", "backend", "generator_model", "prompt_generate",
            "generate_error", "usage_generate")
    make_help = "stage 2: positive instructions"
    doc = """Write the positive instruction I+ for every source row (prompt: prompts/generate_instruction.md).

    Input: the upstream stage's rows. Output: runs/<run>/generate/ with instruction_positive, the
    model, the prompt hash and, for a row whose call failed, generate_error. Every response is cached.
    """

    def tasks(self, ctx: Context, rows: list[dict]) -> tuple[list, None]:
        """One request per row (the dry run prices exactly these)."""
        g = ctx.settings
        # The same near misses `mine` shows its prompt, so the instruction is aimed at the passages
        # its negatives will come from.
        misses = near_misses(ctx, rows, g.near_misses) if (g.use_near_misses and g.near_misses) else {}
        return [
            llm.task(
                r["id"], ctx.prompt,
                {
                    "query": r["query_positive"],
                    "passage": r["document_positive"],
                    "near_misses": [n.text for n in misses.get(r["id"], [])],
                },
                GeneratedInstruction, ctx.model, ctx.params, ctx.cfg.llm.structured_output,
            )
            for r in rows
        ], None

    def to_row(self, ctx: Context, row: dict, res, extra) -> dict:
        value = res.value if res.ok else None
        return {
            "instruction_positive": value.instruction if value else None,
            "instruction_kind": value.kind if value else None,
            "backend": ctx.cfg.llm.backend,
            "generator_model": ctx.model,
            "prompt_generate": ctx.prompt.sha,
            "generate_error": None if res.ok else res.error,
            "usage_generate": llm.usage_record(ctx.client, ctx.model, res),
        }

    def tally(self, ctx: Context, counts: Counter, table: pa.Table) -> None:
        ok = table.column("generate_error").null_count
        counts["ok"] += ok
        counts["failed"] += table.num_rows - ok

    def summary(self, ctx: Context, counts: Counter, shards: Counter) -> dict:
        return {"rows": counts["ok"] + counts["failed"], "instructions": counts["ok"], "failed": counts["failed"], **shards}

    def stand_in(self, row: dict) -> dict:
        # About how many words of the passage stand in for an instruction not yet written (~90 tokens).
        return {**super().stand_in(row), "instruction_positive": " ".join((row["document_positive"] or "").split()[:50])}


STAGE = Generate()
