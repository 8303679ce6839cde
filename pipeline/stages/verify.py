"""`infir verify`: the reasoning judge on every check of every candidate the filters let through.

A row is accepted only if every check passes. Rejected rows are kept with the checks they failed
(`verify/rejected/`), accepted ones go to `verify/accepted/`; `verify/part-*` holds all rows.

With `verify.cascade`, a cheaper first judge answers every check first (two LLM rounds per chunk):
rows it fails with confidence are rejected by it (`decided_by = "first_judge"`), the others go to
the reasoning judge, which decides as without the cascade (pipeline/generation/cascade.py).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.columns import REJECTIONS
from pipeline.generation import cascade
from pipeline.generation.models import CHECKS, FirstJudgeVerdicts, JudgeVerdicts
from pipeline.llm.families import accepts
from pipeline.runner import llm
from pipeline.runner.shape import Context, LLMStage
from pipeline.store import shard_name


def decide(verdicts: JudgeVerdicts) -> tuple[list[dict], list[str]]:
    """Per-check records and the failed checks: a row is accepted only if every check holds."""
    records = []
    for check in CHECKS:
        v = getattr(verdicts, check)
        records.append({"check": check, "passed": bool(v.passed), "reason": v.reason})
    return records, [r["check"] for r in records if not r["passed"]]


def judge_variables(row: dict) -> dict:
    return {
        "query": row["query_positive"],
        "instruction": row["instruction_positive"],
        "instruction_negative": row["instruction_negative"],
        "query_negative": row["query_negative"],
        "passage": row["document_positive"],
        "hard_negative_1": row["hard_negative_document_1"],
        "hard_negative_2": row["hard_negative_document_2"],
    }


def upstream_error(row: dict) -> str | None:
    """The error the nearest upstream stage recorded for the row (columns ending in `_error`; a
    stage records its upstream's failure in its own, so the last one set says the most)."""
    return next((v for k, v in reversed(row.items()) if k.endswith("_error") and k != "verify_error" and v), None)


class Verify(LLMStage):
    name = "verify"
    section = "verify"
    adds = ("verdicts", "failed_checks", "accepted", "judge_model", "prompt_judge", "verify_error", "usage_verify",
            "decided_by", "first_judge_verdicts", "first_judge_model", "first_judge_confidence", "usage_verify_first")
    make_help = "stage 4: the judge"
    doc = """Judge every candidate the filters let through on every check (prompts/judge.md; default o3-mini).

    Input: the upstream stage's rows. Output: runs/<run>/verify/ (all rows with verdicts and
    reasons), verify/accepted/ and verify/rejected/ (with the failed checks). One LLM call per
    judged row.
    """

    def params(self, cfg, model: str) -> dict:
        s = self.settings(cfg)
        return llm.params_for(model, max_tokens=s.max_completion_tokens, reasoning_effort=s.reasoning_effort)

    def models(self, cfg) -> list[tuple[str, str]]:
        """The judge's model, and the first judge's when the cascade is on."""
        out = super().models(cfg)
        s = self.settings(cfg)
        return out + ([(f"{self.section}.first_model", llm.effective_model(cfg, s.first_model))] if s.cascade else [])

    # -- the cascade's settings, resolved once per run (ctx.cache) ---------------------------
    def cascade_on(self, ctx: Context) -> bool:
        return bool(self.settings(ctx.cfg).cascade)

    def first_judge(self, ctx: Context) -> tuple:
        """(prompt, effective model, params) of the cascade's first judge. Log-probabilities are
        asked for where the model's family takes them (reasoning models answer 400 to them)."""
        if "first" not in ctx.cache:
            s = self.settings(ctx.cfg)
            model = llm.effective_model(ctx.cfg, s.first_model)
            params = llm.params_for(model, temperature=0.0, max_tokens=s.first_max_tokens)
            if accepts(model, "logprobs"):
                params["logprobs"] = True
            ctx.cache["first"] = (llm.prompt(ctx.cfg, s.first_prompt), model, params)
        return ctx.cache["first"]

    def threshold(self, ctx: Context) -> float:
        if "threshold" not in ctx.cache:
            ctx.cache["threshold"] = cascade.effective_threshold(self.settings(ctx.cfg), ctx.run_dir)
        return ctx.cache["threshold"]

    def identity(self, ctx: Context) -> tuple:
        base = super().identity(ctx)
        if not self.cascade_on(ctx):
            return base
        prompt, model, params = self.first_judge(ctx)
        return (*base, model, prompt.sha, params, self.threshold(ctx))

    # -- requests --------------------------------------------------------------------------------
    def candidates(self, rows: list[dict]) -> tuple[list[dict], dict]:
        """The rows to judge, and each row's upstream rejections (the deterministic filters it
        failed: it is rejected with their names, never sent)."""
        pre = {r["id"]: ([] if upstream_error(r) else list(r.get(REJECTIONS) or [])) for r in rows}
        return [r for r in rows if not upstream_error(r) and not pre[r["id"]]], pre

    def judge_tasks(self, ctx: Context, rows: list[dict]) -> list:
        return [llm.task(r["id"], ctx.prompt, judge_variables(r), JudgeVerdicts, ctx.model, ctx.params,
                         ctx.cfg.llm.structured_output) for r in rows]

    def first_tasks(self, ctx: Context, rows: list[dict]) -> list:
        prompt, model, params = self.first_judge(ctx)
        return [llm.task(r["id"], prompt, judge_variables(r), FirstJudgeVerdicts, model, params,
                         ctx.cfg.llm.structured_output) for r in rows]

    def tasks(self, ctx: Context, rows: list[dict]) -> tuple[list, dict]:
        """The first round's requests: the judge's for every candidate, or with the cascade the
        first judge's (the judge's follow for the rows it lets through: `followup_tasks`)."""
        todo, pre = self.candidates(rows)
        return (self.first_tasks(ctx, todo) if self.cascade_on(ctx) else self.judge_tasks(ctx, todo)), pre

    def first_round(self, ctx: Context, rows: list[dict], first_tasks: list) -> tuple[dict, list[dict]]:
        """The first judge's judgments by row id, and the rows it lets through to the judge (those
        it does not fail with confidence, and those it could not answer)."""
        t = self.threshold(ctx)
        results = {r.key_id: r for r in ctx.client.run(first_tasks)}
        judged = {k: (res, cascade.judgment(res.value, res.raw_text, res.logprobs) if res.ok else None)
                  for k, res in results.items()}
        through = [r for r in rows if r["id"] in judged and not (judged[r["id"]][1] and judged[r["id"]][1].rejects(t))]
        return judged, through

    def followup_tasks(self, ctx: Context, rows: list[dict]) -> list:
        """Batch mode's second round: the judge's requests for the rows the first judge lets
        through (its answers are in the cache by then)."""
        if not self.cascade_on(ctx):
            return []
        todo, _ = self.candidates(rows)
        _, through = self.first_round(ctx, todo, self.first_tasks(ctx, todo))
        return self.judge_tasks(ctx, through)

    def process(self, ctx: Context, rows: list[dict], prepared) -> list[dict]:
        if not self.cascade_on(ctx):
            return super().process(ctx, rows, prepared)
        first_tasks, pre = prepared
        todo, _ = self.candidates(rows)
        judged, through = self.first_round(ctx, todo, first_tasks)
        results = {res.key_id: res for res in ctx.client.run(self.judge_tasks(ctx, through))}
        _, first_model, _ = self.first_judge(ctx)
        out = []
        for r in rows:
            first_res, first = judged.get(r["id"], (None, None))
            res = results.get(r["id"])
            if first is not None and res is None:  # rejected by the first judge
                row = {**r, **self.first_judge_row(ctx, first)}
            else:
                row = {**r, **self.to_row(ctx, r, res, pre)}
            if first_res is not None:
                row.update(first_judge_verdicts=first.verdicts if first else [], first_judge_model=first_model,
                           first_judge_confidence=first.confidence_source if first else None,
                           usage_verify_first=llm.usage_record(ctx.client, first_model, first_res))
            out.append(row)
        return out

    def first_judge_row(self, ctx: Context, first: cascade.FirstJudgment) -> dict:
        """A row the first judge rejected: its verdicts and reasons, the checks it failed with
        confidence, and no judge call."""
        prompt, first_model, _ = self.first_judge(ctx)
        return {"verdicts": [{k: v[k] for k in ("check", "passed", "reason")} for v in first.verdicts],
                "failed_checks": first.failed(self.threshold(ctx)), "accepted": False, "judge_model": first_model,
                "prompt_judge": prompt.sha, "verify_error": None, "usage_verify": None,
                "decided_by": cascade.FIRST_JUDGE}

    def estimate_notes(self, ctx: Context) -> list[str]:
        if not self.cascade_on(ctx):
            return []
        rate, source = cascade.expected_survival(self.settings(ctx.cfg), ctx.run_dir)
        return [f"cascade: the judge is priced on {rate:.1%} of the candidates (from {source})"]

    def estimate_parts(self, ctx: Context, rows: list[dict], client) -> list[tuple[str, str, dict]]:
        """The dry run's seam: (label, model, `client.estimate` figures) per kind of request the
        stage sends for `rows`. With the cascade: the first judge on every candidate, the judge on
        the expected survivors (the run's calibration, else verify.cascade_expected_survival)."""
        todo, _ = self.candidates(rows)
        if not self.cascade_on(ctx):
            return [(self.name, ctx.model, client.estimate(self.judge_tasks(ctx, todo)))]
        _, first_model, _ = self.first_judge(ctx)
        rate, _ = cascade.expected_survival(self.settings(ctx.cfg), ctx.run_dir)
        judge = client.estimate(self.judge_tasks(ctx, todo))
        scaled = {k: (v * rate if isinstance(v, float) else round(v * rate)) for k, v in judge.items()}
        return [(f"{self.name} (first judge)", first_model, client.estimate(self.first_tasks(ctx, todo))),
                (f"{self.name} (judge)", ctx.model, scaled)]

    def to_row(self, ctx: Context, r: dict, res, pre: dict) -> dict:
        verdicts, failed, error = [], [], None
        up = upstream_error(r)
        if up:
            error = f"upstream: {up}"
        elif pre[r["id"]]:
            failed = pre[r["id"]]
        elif res.ok:
            verdicts, failed = decide(res.value)
        else:
            error = f"judge: {res.error}"
        return {
            "verdicts": verdicts,
            "failed_checks": failed,
            "accepted": error is None and not failed,
            "judge_model": ctx.model if res is not None else None,
            "prompt_judge": ctx.prompt.sha,
            "verify_error": error,
            "usage_verify": llm.usage_record(ctx.client, ctx.model, res),
            "decided_by": cascade.FILTERS if (not up and pre[r["id"]]) else (cascade.REASONING_JUDGE if res is not None else None),
        }

    # -- calibration (`infir calibrate-judge`) ---------------------------------------------------
    def calibrate(self, ctx: Context, rows: int | None = None, seed: int | None = None) -> dict:
        """Both judges on a seeded sample of the candidates; writes and returns the figures and the
        recommended threshold (pipeline/generation/cascade.py). Answers go to the LLM cache, so
        verify later pays nothing again for the sampled rows."""
        import heapq

        from pipeline.fileio import write_json_atomic
        from pipeline.runner.chunks import iter_chunks

        s = self.settings(ctx.cfg)
        n, seed = rows or s.calibration_rows, s.calibration_seed if seed is None else seed
        heap: list = []
        for chunk in iter_chunks(ctx.upstream_dir, s.shard_rows):
            for r in self.candidates(chunk)[0]:
                item = (cascade.sample_key(seed, r["id"]), r["id"], r)
                heapq.heappush(heap, item) if len(heap) < n else heapq.heappushpop(heap, item)
        sample = [r for _, _, r in sorted(heap, key=lambda x: x[0])]
        firsts = {x.key_id: x for x in ctx.client.run(self.first_tasks(ctx, sample))}
        judges = {x.key_id: x for x in ctx.client.run(self.judge_tasks(ctx, sample))}
        pairs, failed = [], 0
        for r in sample:
            f, j = firsts[r["id"]], judges[r["id"]]
            if not (f.ok and j.ok):
                failed += 1
                continue
            pairs.append((cascade.judgment(f.value, f.raw_text, f.logprobs), decide(j.value)[1]))
        prompt, first_model, _ = self.first_judge(ctx)
        cal = {"first_model": first_model, "judge_model": ctx.model, "prompt_first": prompt.sha,
               "prompt_judge": ctx.prompt.sha, "seed": seed, "sampled": len(sample), "failed": failed,
               "cost_usd": round(ctx.client.totals.cost_usd, 6),
               **cascade.calibrate(pairs, s.calibration_max_false_reject)}
        path = cascade.calibration_path(ctx.run_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(cal, path, sort_keys=False)
        return cal

    def status_lines(self, run_dir) -> list[str]:
        """What `infir status` shows besides the table: the judge calibration, if any."""
        cal = cascade.load_calibration(run_dir)
        return cascade.summary_lines(cal) if cal else []

    def on_shard(self, ctx: Context, index: int, table: pa.Table) -> None:
        # accepted/ and rejected/ mirror each part shard, so resume keeps them in step.
        name = shard_name(index)
        accepted = pc.fill_null(table.column("accepted"), False)
        errors = pc.is_valid(table.column("verify_error"))
        rejected = pc.and_(pc.invert(accepted), pc.invert(errors))
        ctx.out.write_shard(f"accepted/{name}", table.filter(accepted))
        ctx.out.write_shard(f"rejected/{name}", table.filter(rejected))

    def tally(self, ctx: Context, t: Counter, table: pa.Table) -> None:
        accepted = pc.fill_null(table.column("accepted"), False)
        errors = pc.is_valid(table.column("verify_error"))
        rejected = pc.and_(pc.invert(accepted), pc.invert(errors))
        t["candidates"] += table.num_rows
        t["accepted"] += pc.sum(accepted).as_py() or 0
        t["rejected"] += pc.sum(rejected).as_py() or 0
        t["failed"] += pc.sum(errors).as_py() or 0
        for row in table.select(["verdicts", "failed_checks", "decided_by", "usage_verify_first"]).to_pylist():
            for f in row["failed_checks"]:
                t[f"failed:{f}"] += 1
            if row["usage_verify_first"] is not None:
                t["first judge: judged"] += 1
            if row["decided_by"] == cascade.FIRST_JUDGE:
                t["first judge: rejected"] += 1
                continue  # the pass rates are the reasoning judge's
            if row["decided_by"] == cascade.REASONING_JUDGE:
                t["judge: judged"] += 1
            for vd in row["verdicts"]:
                t[f"judged:{vd['check']}"] += 1
                t[f"passed:{vd['check']}"] += vd["passed"]

    def summary(self, ctx: Context, t: Counter, shards: Counter) -> dict:
        judged = {c: t[f"judged:{c}"] for c in CHECKS}
        failed_by = {k.split(":", 1)[1]: n for k, n in sorted(t.items()) if k.startswith("failed:")}
        return {
            "rows": t["candidates"],
            "candidates": t["candidates"],
            "accepted": t["accepted"],
            "rejected": t["rejected"],
            "failed": t["failed"],
            "acceptance_rate": round(t["accepted"] / t["candidates"], 4) if t["candidates"] else 0.0,
            "pass_rate_per_check": {c: round(t[f"passed:{c}"] / n, 4) for c, n in judged.items() if n},
            "failed_checks": failed_by,
            **({"cascade": self.cascade_summary(ctx, t)} if self.cascade_on(ctx) else {}),
            **shards,
        }

    def cascade_summary(self, ctx: Context, t: Counter) -> dict:
        _, first_model, _ = self.first_judge(ctx)
        return {"first_model": first_model, "threshold": self.threshold(ctx), "first_judged": t["first judge: judged"],
                "rejected_by_first_judge": t["first judge: rejected"], "sent_to_judge": t["judge: judged"]}

    def summary_rows(self, summary: dict) -> list[tuple[str, object]]:
        rows = [(k, summary[k]) for k in ("candidates", "accepted", "rejected", "failed", "acceptance_rate")]
        rows += [(k, summary[k]) for k in ("failed rows retried",) if summary.get(k)]
        rows += [(f"cascade: {k}", v) for k, v in (summary.get("cascade") or {}).items()]
        rows += [(f"pass rate: {c}", f"{r:.1%}") for c, r in summary["pass_rate_per_check"].items()]
        rows += [(f"failed: {c}", n) for c, n in summary["failed_checks"].items()]
        return rows


STAGE = Verify()
