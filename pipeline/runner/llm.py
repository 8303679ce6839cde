"""The LLM glue every LLM stage shares: the client, the effective model, request parameters,
per-row usage records, the stage's LLM summary and batch-mode prefetch."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InfirError
from pipeline.llm.budget import SpendLedger
from pipeline.llm.client import LLMClient, make_client as _make_client
from pipeline.llm.openai_api.request import default_params, request_of
from pipeline.llm.prompts import Prompt, load_prompt
from pipeline.llm.types import LLMTask
from pipeline.runner.prices import check_prices


def offline_model_name() -> str:
    """The offline backend's model name (its rules' code hash): owned by the domain package."""
    from pipeline.generation.offline_backend import offline_model_name as name

    return name()


def effective_model(cfg, model: str) -> str:
    return offline_model_name() if cfg.llm.backend == "offline" else model


SPEND_LEDGER = "spend.sqlite3"


def ledger(cfg, run_dir: Path, label: str = "") -> SpendLedger:
    """The run's spend ledger (`runs/<run>/spend.sqlite3`): every stage, attempt and resume of the
    run records its spend there, and `llm.max_cost_usd` caps their total."""
    return SpendLedger(Path(run_dir) / SPEND_LEDGER, cap=cfg.llm.max_cost_usd, label=label)


def make_client(cfg, run_dir: Path | None = None, label: str = "") -> LLMClient:
    """The LLM client of a stage; with `run_dir`, it reserves and records spend in the run's ledger."""
    import pipeline.generation.offline_backend  # noqa: F401  registers the "offline" scripted backend

    client = _make_client(cfg.llm)
    if run_dir is not None:
        client.ledger = ledger(cfg, run_dir, label)
    return client


def task(key_id: str, prompt: Prompt, variables: dict, output_model, model: str, params: dict,
         structured_output: str = "json_schema") -> LLMTask:
    """A task with its request already rendered and keyed: stages build tasks on the runner's
    prepare thread, so the event loop that waits on the endpoint has less to do per request.
    `structured_output`: the run's `llm.structured_output` (the form of the schema in the body)."""
    t = LLMTask(key_id=key_id, prompt=prompt, variables=variables, output_model=output_model, model=model,
                params=params, structured_output=structured_output)
    try:
        request_of(t)
    except InfirError:
        pass  # the client records it as this row's failure
    return t


def params_for(model: str, *, temperature: float | None = None, max_tokens: int | None = None,
               reasoning_effort: str = "medium") -> dict:
    """Reasoning models get reasoning_effort and max_completion_tokens, others temperature and
    max_tokens (default_params decides)."""
    kw = {"max_tokens": max_tokens, "reasoning_effort": reasoning_effort}
    if temperature is not None:
        kw["temperature"] = temperature
    return default_params(model, **kw)


def prompt(cfg, name: str) -> Prompt:
    return load_prompt(name, cfg.run.prompts_dir)


def llm_summary(client: LLMClient, batch: dict | None = None) -> dict:
    t = client.totals
    out = {
        "mode": "batch" if batch is not None else "online",
        "requests": t.requests,
        "http_calls": t.http_calls,
        "cache_hits": t.cache_hits,
        "retries": t.retries,
        "repairs": t.repairs,
        "failures": t.failures,
        "prompt_tokens": t.prompt_tokens,
        "completion_tokens": t.completion_tokens,
        "cached_tokens": t.cached_tokens,
        "reasoning_tokens": t.reasoning_tokens,
        # Checked at the edge (pipeline/llm/completion.py): answers refused (retried, never cached),
        # cache rows that were not a usable answer (dropped, asked again), answers without usage
        # (priced from the request's estimate, counted against llm.max_cost_usd).
        "invalid_answers": t.invalid_answers,
        "cache_entries_dropped": t.cache_dropped,
        "usage_estimated": t.usage_estimated,
        # Spent by this run: online calls, plus the batch answers it collected (at batch prices).
        "cost_usd": round(t.cost_usd + (batch["cost_usd"] if batch else 0.0), 6),
        # What every response used cost when it was made, cache hits included: the corpus's price.
        "corpus_cost_usd": round(t.cost_usd + t.saved_cost_usd, 6),
        "backend": client.backend.name if hasattr(client.backend, "name") else type(client.backend).__name__,
    }
    if batch is not None:
        out.update({f"batch_{k}": v for k, v in batch.items() if k != "cost_usd"})
        out["prompt_tokens"] += batch["prompt_tokens"]
        out["completion_tokens"] += batch["completion_tokens"]
    return out


def usage_record(client: LLMClient, model: str, res) -> dict | None:
    """What one row's call cost when it was made, cache hits included: the row-level audit that
    survives resume and reruns (the client's totals only count this process)."""
    if res is None:
        return None
    u = res.usage
    cost = client.prices.cost(model, u.prompt_tokens, u.completion_tokens, u.cached_tokens, batch=res.batch)
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cost_usd": cost,
            "cached_tokens": u.cached_tokens, "reasoning_tokens": u.reasoning_tokens}


def sum_usage(table, column: str) -> dict:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "calls": 0,
             "cached_tokens": 0, "reasoning_tokens": 0}
    if column not in table.column_names:
        return total
    for u in table.column(column).to_pylist():
        if u:
            total["prompt_tokens"] += u["prompt_tokens"]
            total["completion_tokens"] += u["completion_tokens"]
            total["cost_usd"] += u["cost_usd"]
            total["cached_tokens"] += u.get("cached_tokens") or 0  # absent in shards written before
            total["reasoning_tokens"] += u.get("reasoning_tokens") or 0
            total["calls"] += 1
    return total


def prefetch_batch(ctx, stage) -> dict | None:
    """Batch mode: every request of the stage goes through the Batch API into the cache first
    (requests already cached are not sent; a rerun polls the batches it recorded instead of
    submitting again), then the client is switched to a backend that sends nothing, so the
    stage's normal pass is served from the cache with the same keys, parser and repairs as online."""
    cfg = ctx.cfg
    if cfg.llm.mode != "batch":
        return None
    from pipeline.llm.openai_api.batch import BatchRunner
    from pipeline.runner.chunks import iter_chunks

    if cfg.llm.backend != "openai":
        raise InfirError("llm.mode = 'batch' needs llm.backend = 'openai' (the Batch API of an OpenAI-compatible server)")
    # All chunks, finished shards included: their requests are cache hits, and a shard redone
    # after failed rows needs its requests here too.
    tasks = [t for rows in iter_chunks(ctx.upstream_dir, stage.shard_rows(cfg)) for t in stage.tasks(ctx, rows)[0]]
    runner = BatchRunner(
        ctx.client, ctx.run_dir / "_batches" / stage.name, poll_interval_s=cfg.llm.batch_poll_interval_s,
        max_rounds=cfg.llm.batch_max_rounds, label=f"{stage.name} (batch)", queue_tokens=cfg.llm.batch_queue_tokens,
    )
    report = runner.prefetch(tasks).as_dict()
    if ctx.client.ledger is not None and report.get("cost_usd"):
        ctx.client.ledger.settle(None, report["cost_usd"])  # the batch answers this run collected
    ctx.client.backend = runner.backend()
    followup = getattr(stage, "followup_tasks", None)
    if followup is not None:
        # A second round: requests that depend on the first round's answers (the judge after the
        # cascade's first judge), computed from the cache the first round filled.
        more = [t for rows in iter_chunks(ctx.upstream_dir, stage.shard_rows(cfg)) for t in followup(ctx, rows)]
        if more:
            second = BatchRunner(
                ctx.client, ctx.run_dir / "_batches" / stage.name / "round-2",
                poll_interval_s=cfg.llm.batch_poll_interval_s, max_rounds=cfg.llm.batch_max_rounds,
                label=f"{stage.name} (batch, round 2)", queue_tokens=cfg.llm.batch_queue_tokens,
            )
            second_report = second.prefetch(more).as_dict()
            second.failures = {**runner.failures, **second.failures}
            ctx.client.backend = second.backend()
            for k, v in second_report.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    report[k] = report.get(k, 0) + v
            report["rounds_of_requests"] = 2
    report.pop("failures")  # each failed row keeps its own reason
    return report


def llm_prepare(ctx, stage) -> None:
    """The prompt and effective model of an LLM stage: both are part of its identity. Before any
    request: its models' prices, when the run's cost cap needs them (`prices.check_prices`)."""
    check_prices(ctx.cfg, [stage])
    ctx.prompt = prompt(ctx.cfg, getattr(stage.settings(ctx.cfg), stage.prompt_key))
    ctx.model = effective_model(ctx.cfg, stage.model(ctx.cfg))
    ctx.params = stage.params(ctx.cfg, ctx.model)
