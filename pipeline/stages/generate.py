"""`infir generate`: an LLM writes the positive instruction I+ for every source row."""

from __future__ import annotations

import pyarrow as pa

from pipeline.generation.models import GeneratedInstruction
from pipeline.progress import print_summary
from pipeline.stages import llm_common as lc
from pipeline.stages.common import StageResult, run_dir, skipped
from pipeline.stages.neighbours import near_misses
from pipeline.stages.sharded import run_chunks
from pipeline.stages.source import ROW_SCHEMA as SOURCE_SCHEMA

SCHEMA = pa.schema(
    list(SOURCE_SCHEMA)
    + [
        pa.field("instruction_positive", pa.string()),
        pa.field("instruction_kind", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("generator_model", pa.string()),
        pa.field("prompt_generate", pa.string()),
        pa.field("generate_error", pa.string()),
        pa.field("usage_generate", lc.USAGE_TYPE),
    ]
)


def build_tasks(cfg, rows: list[dict], prompt, model: str, params: dict) -> list:
    """One request per row (the dry run prices exactly these)."""
    g = cfg.generate
    # The same near misses `mine` shows its prompt, so the instruction is aimed at the passages
    # its negatives will come from.
    misses = near_misses(cfg, rows, g.near_misses) if (g.use_near_misses and g.near_misses) else {}
    return [
        lc.task(
            r["id"],
            prompt,
            {
                "query": r["query_positive"],
                "passage": r["document_positive"],
                "near_misses": [n.text for n in misses.get(r["id"], [])],
            },
            GeneratedInstruction,
            model,
            params,
        )
        for r in rows
    ]


def run_generate(cfg, force: bool = False) -> StageResult:
    g = cfg.generate
    rd = run_dir(cfg)
    near = cfg.mine.retrieval if g.use_near_misses else None
    out, upstream, prompt, model = lc.open_stage(cfg, "generate", "source", g, force, near)
    with out:
        done = out.start()
        if done:
            return skipped("generate", done)
        client = lc.make_client(cfg)
        params = lc.stage_params(cfg, "generate", model)

        def prepare(rows: list[dict]) -> list:
            return build_tasks(cfg, rows, prompt, model, params)

        batch = lc.prefetch_batch(cfg, "generate", client, rd / "source", g.shard_rows, prepare)
        stats = {"ok": 0, "failed": 0}

        def process(rows: list[dict], tasks: list) -> list[dict]:
            results = client.run(tasks)
            out_rows = []
            for r, res in zip(rows, results):
                value = res.value if res.ok else None
                out_rows.append(
                    {
                        **r,
                        "instruction_positive": value.instruction if value else None,
                        "instruction_kind": value.kind if value else None,
                        "backend": cfg.llm.backend,
                        "generator_model": model,
                        "prompt_generate": prompt.sha,
                        "generate_error": None if res.ok else res.error,
                        "usage_generate": lc.usage_record(client, model, res),
                    }
                )
            return out_rows

        def count(table: pa.Table) -> None:
            ok = table.column("generate_error").null_count
            stats["ok"] += ok
            stats["failed"] += table.num_rows - ok

        shards = run_chunks(
            out, rd / "source", upstream["rows"], g.shard_rows, SCHEMA, process, "generate", client, count,
            error_column="generate_error", prepare=prepare,
        )
        summary = {"rows": stats["ok"] + stats["failed"], "instructions": stats["ok"], "failed": stats["failed"],
                   **shards, "llm": lc.llm_summary(client, batch)}
        success = out.finish(summary)
    print_summary("generate", [(k, v) for k, v in summary.items() if k != "llm"] + list(summary["llm"].items()))
    return StageResult("generate", False, success)
