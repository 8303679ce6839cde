"""`infir mine`: retrieved passage negatives, then one LLM call per row that poisons the
instruction (I-, HN1) and the query (Q-, HN2)."""

from __future__ import annotations

import pyarrow as pa

from pipeline.generation.models import PoisonedPair
from pipeline.progress import print_summary
from pipeline.stages import llm_common as lc
from pipeline.stages.common import StageResult, run_dir, skipped
from pipeline.stages.generate import SCHEMA as GENERATE_SCHEMA
from pipeline.stages.neighbours import NEGATIVE_TYPE, mined_negatives, near_misses
from pipeline.stages.sharded import run_chunks

SCHEMA = pa.schema(
    list(GENERATE_SCHEMA)
    + [
        pa.field("mined_negatives", pa.list_(NEGATIVE_TYPE)),
        pa.field("instruction_negative", pa.string()),
        pa.field("hard_negative_document_1", pa.string()),
        pa.field("hn1_passage_id", pa.string()),
        pa.field("query_negative", pa.string()),
        pa.field("hard_negative_document_2", pa.string()),
        pa.field("hn2_passage_id", pa.string()),
        pa.field("poison_model", pa.string()),
        pa.field("prompt_poison", pa.string()),
        pa.field("mine_error", pa.string()),
        pa.field("usage_mine", lc.USAGE_TYPE),
    ]
)


def build_tasks(cfg, rows: list[dict], prompt, model: str, params: dict) -> tuple[list, dict]:
    """One poison request per row that has an instruction, and the near misses shown to it."""
    m = cfg.mine
    # Near misses, not margin-filtered negatives: HN1 must answer Q+, which is exactly what the
    # false-negative margin removes from passage negatives.
    close = near_misses(cfg, rows, m.candidates) if m.candidates else {}
    tasks = [
        lc.task(
            r["id"],
            prompt,
            {
                "query": r["query_positive"],
                "instruction": r["instruction_positive"],
                "passage": r["document_positive"],
                "candidates": [n.text for n in close.get(r["id"], [])],
            },
            PoisonedPair,
            model,
            params,
        )
        for r in rows
        if r["instruction_positive"]
    ]
    return tasks, close


def run_mine(cfg, force: bool = False) -> StageResult:
    m = cfg.mine
    rd = run_dir(cfg)
    out, upstream, prompt, model = lc.open_stage(cfg, "mine", "generate", m, force)
    with out:
        done = out.start()
        if done:
            return skipped("mine", done)
        client = lc.make_client(cfg)
        params = lc.stage_params(cfg, "mine", model)
        batch = lc.prefetch_batch(cfg, "mine", client, rd / "generate", m.shard_rows, lambda rows: build_tasks(cfg, rows, prompt, model, params)[0])
        stats = {"rows": 0, "poisoned": 0, "failed": 0, "skipped (no instruction)": 0, "mined negatives": 0}

        def prepare(rows: list[dict]) -> tuple:
            return (mined_negatives(cfg, rows), *build_tasks(cfg, rows, prompt, model, params))

        def process(rows: list[dict], prepared: tuple) -> list[dict]:
            negatives, tasks, close = prepared
            results = {res.key_id: res for res in client.run(tasks)}
            out_rows = []
            for r in rows:
                negs = negatives[r["id"]]
                res = results.get(r["id"])
                v = res.value if res is not None and res.ok else None
                by_text = {n.text: n.passage_id for n in close.get(r["id"], [])}
                if res is None:
                    error = f"no instruction: {r['generate_error']}"
                else:
                    error = None if res.ok else res.error
                out_rows.append(
                    {
                        **r,
                        "mined_negatives": negs,
                        "instruction_negative": v.instruction_negative if v else None,
                        "hard_negative_document_1": v.hard_negative_document_1 if v else None,
                        # A negative written by the LLM has no id; one taken from the corpus keeps its own.
                        "hn1_passage_id": by_text.get(v.hard_negative_document_1) if v else None,
                        "query_negative": v.query_negative if v else None,
                        "hard_negative_document_2": v.hard_negative_document_2 if v else None,
                        "hn2_passage_id": by_text.get(v.hard_negative_document_2) if v else None,
                        "poison_model": model,
                        "prompt_poison": prompt.sha,
                        "mine_error": error,
                        "usage_mine": lc.usage_record(client, model, res),
                    }
                )
            return out_rows

        def count(table: pa.Table) -> None:
            stats["rows"] += table.num_rows
            ok = table.column("mine_error").null_count
            no_instr = table.column("instruction_positive").null_count
            stats["poisoned"] += ok
            stats["skipped (no instruction)"] += no_instr
            stats["failed"] += table.num_rows - ok - no_instr
            stats["mined negatives"] += sum(len(x) for x in table.column("mined_negatives").to_pylist())

        shards = run_chunks(out, rd / "generate", upstream["rows"], m.shard_rows, SCHEMA, process, "mine", client, count,
                            error_column="mine_error", prepare=prepare)
        summary = {**stats, **shards, "llm": lc.llm_summary(client, batch)}
        success = out.finish(summary)
    print_summary("mine", [(k, v) for k, v in summary.items() if k != "llm"] + list(summary["llm"].items()))
    return StageResult("mine", False, success)
