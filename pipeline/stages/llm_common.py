"""What the LLM stages share: the client, the effective model name, per-stage LLM summaries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from pipeline.errors import InfirError
from pipeline.llm.client import LLMClient, LLMTask, default_params, request_of
from pipeline.llm.prompts import Prompt, load_prompt
from pipeline.stages.common import run_dir
from pipeline.store import StageOutput, identity_hash, require_stage, stage_fingerprint

_OFFLINE_SOURCES = ("llm/offline.py", "generation/lexical.py")


def offline_model_name() -> str:
    """The offline backend's model name carries a hash of its code: changing its rules can never
    serve answers cached from the old rules, and its keys never collide with a real model's."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for rel in _OFFLINE_SOURCES:
        h.update((root / rel).read_bytes())
    return f"infir-offline@{h.hexdigest()[:8]}"


def effective_model(cfg, model: str) -> str:
    return offline_model_name() if cfg.llm.backend == "offline" else model


def make_client(cfg) -> LLMClient:
    from pipeline.llm import make_client as _make

    return _make(cfg.llm)


def task(key_id: str, prompt: Prompt, variables: dict, output_model, model: str, params: dict) -> LLMTask:
    """A task with its request already rendered and keyed: stages build tasks on the runner's
    prepare thread, so the event loop that waits on the endpoint has less to do per request."""
    t = LLMTask(key_id=key_id, prompt=prompt, variables=variables, output_model=output_model, model=model, params=params)
    try:
        request_of(t)
    except InfirError:
        pass  # the client records it as this row's failure
    return t


def params_for(model: str, *, temperature: float | None = None, max_tokens: int | None = None,
               reasoning_effort: str = "medium") -> dict:
    kw = {"max_tokens": max_tokens, "reasoning_effort": reasoning_effort}
    if temperature is not None:
        kw["temperature"] = temperature
    return default_params(model, **kw)


def stage_params(cfg, stage: str, model: str) -> dict:
    """Request parameters of an LLM stage: reasoning models get reasoning_effort and
    max_completion_tokens, others temperature and max_tokens (default_params decides)."""
    s = getattr(cfg, stage)
    if stage == "verify":
        return params_for(model, max_tokens=s.max_completion_tokens, reasoning_effort=s.reasoning_effort)
    return params_for(model, temperature=s.temperature, max_tokens=s.max_tokens)


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


USAGE_TYPE = pa.struct(
    [("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("cost_usd", pa.float64())]
)


def usage_record(client: LLMClient, model: str, res) -> dict | None:
    """What one row's call cost when it was made, cache hits included: the row-level audit that
    survives resume and reruns (the client's totals only count this process)."""
    if res is None:
        return None
    u = res.usage
    cost = client.prices.cost(model, u.prompt_tokens, u.completion_tokens, u.cached_tokens, batch=res.batch)
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "cost_usd": cost}


def sum_usage(table, column: str) -> dict:
    total = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "calls": 0}
    for u in table.column(column).to_pylist():
        if u:
            total["prompt_tokens"] += u["prompt_tokens"]
            total["completion_tokens"] += u["completion_tokens"]
            total["cost_usd"] += u["cost_usd"]
            total["calls"] += 1
    return total


def prefetch_batch(cfg, stage: str, client: LLMClient, input_dir: Path, shard_rows: int, tasks_of) -> dict | None:
    """Batch mode: every request of the stage goes through the Batch API into the cache first
    (requests already cached are not sent; a rerun polls the batches it recorded instead of
    submitting again), then the client is switched to a backend that sends nothing, so the
    stage's normal pass is served from the cache with the same keys, parser and repairs as online."""
    if cfg.llm.mode != "batch":
        return None
    from pipeline.llm.batch import BatchRunner
    from pipeline.stages.sharded import iter_chunks

    if cfg.llm.backend != "openai":
        raise InfirError("llm.mode = 'batch' needs llm.backend = 'openai' (the Batch API of an OpenAI-compatible server)")
    # All chunks, finished shards included: their requests are cache hits, and a shard redone
    # after failed rows needs its requests here too.
    tasks = [t for rows in iter_chunks(input_dir, shard_rows) for t in tasks_of(rows)]
    runner = BatchRunner(
        client, run_dir(cfg) / "_batches" / stage, poll_interval_s=cfg.llm.batch_poll_interval_s,
        max_rounds=cfg.llm.batch_max_rounds, label=f"{stage} (batch)",
    )
    report = runner.prefetch(tasks).as_dict()
    client.backend = runner.backend()
    report.pop("failures")  # each failed row keeps its own reason
    return report


def open_stage(cfg, stage: str, upstream_stage: str, section, force: bool, *identity_extra):
    """The output of an LLM stage, keyed by its upstream shards, its config section, the effective
    model and its prompt's hash: (out, upstream success, prompt, model)."""
    rd = run_dir(cfg)
    upstream = require_stage(rd, upstream_stage)
    p = prompt(cfg, section.prompt)
    model = effective_model(cfg, section.model)
    identity = identity_hash(section, cfg.llm.backend, model, *identity_extra)
    out = StageOutput(rd, stage, stage_fingerprint(upstream), identity, {section.prompt: p.sha}, force=force)
    return out, upstream, p, model
