"""`--mode batch` at the stage level: generate -> mine -> verify through the Batch API of the test
server give the same accepted rows as an online run with the same responses, at batch prices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_infir
from openai_server import FakeOpenAIServer
from reliability_helpers import kill9, stage_of
from reliability_helpers import responder as crafted
from pipeline.declaration import PIPELINE
from pipeline.runner.run import run_stage
from stage_helpers import run_until
from test_llm_stages import openai_cfg, responder

KEY = "sk-test-batch-stages"


def build(cfg):
    run_until(cfg, "verify")


def accepted(run_dir):
    rows = []
    for p in sorted((run_dir / "verify" / "accepted").glob("part-*.parquet")):
        rows += pq.read_table(p).to_pylist()
    return rows


COMPARED = ("id", "instruction_positive", "instruction_negative", "hard_negative_document_1", "query_negative",
            "hard_negative_document_2", "failed_checks", "accepted")


def test_batch_mode_gives_the_online_rows_at_batch_prices(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAIServer(responder=responder) as online_srv:
        online = openai_cfg(online_srv, **{"run.name": "online", "llm.cache_path": str(tmp_path / "online.sqlite3")})
        build(online)
    with FakeOpenAIServer(responder=responder, batch_polls=1) as srv:
        cfg = openai_cfg(srv, **{
            "run.name": "batched", "llm.cache_path": str(tmp_path / "batch.sqlite3"),
            "llm.mode": "batch", "llm.batch_poll_interval_s": 0.01,
        })
        build(cfg)
        assert srv.counts.get("/v1/chat/completions", 0) == 0  # nothing online
        assert srv.batch_creations == 3  # one per stage
        # A rerun is served entirely by the stages' outputs: no upload, no batch.
        build(cfg)
        assert (srv.batch_creations, srv.file_uploads) == (3, 3)

    a = [{k: r[k] for k in COMPARED} for r in accepted(tmp_path / "runs/online")]
    b = [{k: r[k] for k in COMPARED} for r in accepted(tmp_path / "runs/batched")]
    assert a and a == b
    on = pq.read_table(tmp_path / "runs/online/verify").to_pylist()
    ba = pq.read_table(tmp_path / "runs/batched/verify").to_pylist()
    for stage in ("generate", "mine"):  # gpt-4o-mini: batch_discount 0.5
        for x, y in zip(on, ba):
            assert y[f"usage_{stage}"]["prompt_tokens"] == x[f"usage_{stage}"]["prompt_tokens"]
            assert y[f"usage_{stage}"]["cost_usd"] == pytest.approx(x[f"usage_{stage}"]["cost_usd"] / 2)
    success = json.loads((tmp_path / "runs/batched/generate/_SUCCESS.json").read_text())
    llm = success["summary"]["llm"]
    assert llm["mode"] == "batch" and llm["batch_submitted"] == 10 and llm["http_calls"] == 0


def test_batch_mode_failed_requests_fail_their_rows_with_the_reason(tmp_path, monkeypatch):
    """A request the batch could not answer within its rounds ends as a failed row with the
    batch's reason (never an online call); the other rows are complete."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAIServer(responder=responder, batch_polls=1, batch_fault_fn=_fail_first_line) as srv:
        cfg = openai_cfg(srv, **{"llm.mode": "batch", "llm.batch_poll_interval_s": 0.01, "llm.batch_max_rounds": 1})
        run_stage(PIPELINE, "source", cfg)
        run_stage(PIPELINE, "generate", cfg)
        assert srv.counts.get("/v1/chat/completions", 0) == 0
    rows = pq.read_table(tmp_path / "runs/sample/generate").to_pylist()
    failed = [r for r in rows if r["generate_error"]]
    assert len(failed) == 1 and len(rows) == 10
    assert "400" in failed[0]["generate_error"] or "invalid" in failed[0]["generate_error"].lower()


_first: dict = {}


def _fail_first_line(index, custom_id, body):
    # Fail exactly one request (the first line of the first batch) with a non-retryable 400.
    if not _first:
        _first["id"] = custom_id
    return "400" if custom_id == _first["id"] else None


def test_cli_batch_mode_needs_the_openai_backend(tmp_path):
    from conftest import SAMPLE

    code, _, err = run_infir("build", "--mode", "batch", "--until", "generate", "--set", f"source.path={SAMPLE}")
    assert code == 2 and "llm.backend = 'openai'" in err and "Traceback" not in err


# -- the Batch API's enqueued-token limit, at the CLI on MS MARCO (issue 26, acceptance 1) ------------

QUERIES = 100  # rows per LLM stage: enough for ten waves a stage, a build in seconds


def _msmarco_args(srv, msmarco, name: str, *extra: str) -> list[str]:
    return ["build", "--config", str(REPO / "configs" / "msmarco.toml"), "--backend", "openai", "--until", "verify",
            "--set", f'source.path="{msmarco}"', "--set", f"source.sample_queries={QUERIES}",
            "--set", "source.decontaminate=[]", "--set", f'llm.base_url="{srv.base_url}"',
            "--set", f'run.name="{name}"', "--set", f'llm.cache_path=".cache/{name}.sqlite3"', *extra]


def _batch_sets(limits: dict[str, int]) -> tuple[str, ...]:
    table = "{" + ", ".join(f'"{m}" = {v}' for m, v in sorted(limits.items())) + "}"
    return ("--set", 'llm.mode="batch"', "--set", "llm.batch_poll_interval_s=0.02",
            "--set", f"llm.batch_queue_tokens={table}")


def _infir(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **kw)


def _run(args: list[str]) -> str:
    proc = _infir(args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return err


def _rows(run_dir) -> list[dict]:
    """The verify rows, the usage columns aside (batch answers are priced at the batch discount)."""
    rows = [r for p in sorted((run_dir / "verify").glob("part-*.parquet")) for r in pq.read_table(p).to_pylist()]
    return sorted(({k: v for k, v in r.items() if not k.startswith("usage_")} for r in rows), key=lambda r: r["id"])


def _llm_summaries(run_dir) -> dict[str, dict]:
    return {s: json.loads((run_dir / s / "_SUCCESS.json").read_text())["summary"]["llm"]
            for s in ("generate", "mine", "verify")}


@pytest.mark.slow
def test_msmarco_batch_waves_within_the_enqueued_token_limit_and_a_kill(tmp_path, msmarco):
    """Against a server whose enqueued-token limit is a tenth of a stage's tokens, `--mode batch`
    answers every row in waves, with the verify rows of an online run; killed with SIGKILL during
    the waves (twice) then rerun, no request is in two batches the server accepted."""
    # batch_polls=2: a batch is queued at one poll and completes at the next, so batches submitted
    # together are in the queue together (at 1, each would leave it at the poll that queues it).
    # The service counts prompt tokens as the client estimates them (`usage`): the waves' planning is
    # under test here; a service counting more than the estimate is refused and halved
    # (tests/llm/test_batch_waves.py::test_a_service_counting_more_than_the_estimate_gets_halved_files).
    from pipeline.llm.openai_api.batch_waves import line_tokens

    with FakeOpenAIServer(responder=crafted, batch_polls=2, usage=lambda body: (line_tokens(body), 100)) as srv:
        _run(_msmarco_args(srv, msmarco, "online"))
        tokens: Counter = Counter()  # (stage, model) -> prompt tokens, as the server counts them
        for r in srv.chat_requests():
            tokens[(stage_of(r.body), r.body["model"])] += srv.queue_tokens_of(r.body)
        limits: dict[str, int] = {}
        for (_, model), n in tokens.items():
            limits[model] = min(limits.get(model, n // 10), n // 10)
        srv.batch_queue_tokens = limits

        _run(_msmarco_args(srv, msmarco, "batched", *_batch_sets(limits)))
        assert srv.counts.get("/v1/chat/completions", 0) == QUERIES * 3  # the online run's only
        assert srv.token_limit_failures == 0
        assert all(0 < srv.batch_queue_peak[m] <= limits[m] for m in limits), (srv.batch_queue_peak, limits)
        for stage, llm in _llm_summaries(tmp_path / "runs/batched").items():
            assert llm["batch_failed"] == 0 and llm["batch_rounds"] == 1 and llm["batch_queue_full"] == 0
            assert llm["batch_waves"] >= 10 and llm["batch_batches"] == llm["batch_waves"], (stage, llm)
        online = _rows(tmp_path / "runs/online")
        assert len(online) == QUERIES and not any(r[f"{s}_error"] for r in online for s in ("generate", "mine", "verify"))
        assert _rows(tmp_path / "runs/batched") == online

        first = srv.batch_creations
        for kill_at in (first + 5, first + 17):  # in generate's waves, then in mine's
            proc = _infir(_msmarco_args(srv, msmarco, "killed", *_batch_sets(limits)))
            end = time.monotonic() + 300
            while srv.batch_creations < kill_at and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.005)
            assert kill9(proc), proc.communicate()[1][-2000:]
        err = _run(_msmarco_args(srv, msmarco, "killed", *_batch_sets(limits)))
        assert "Traceback" not in err
        batches = sorted((b for b in srv.batches.values() if b["_index"] >= first), key=lambda b: b["_index"])
    seen: dict[str, dict] = {}
    for b in batches:
        for line in b["_lines"]:
            earlier = seen.get(line["custom_id"])
            assert earlier is None or earlier["status"] in ("failed", "expired", "cancelled"), line["custom_id"]
            seen[line["custom_id"]] = b
    assert len(seen) == QUERIES * 3  # every request in one accepted batch
    assert all(srv.batch_queue_peak[m] <= limits[m] for m in limits)
    assert _rows(tmp_path / "runs/killed") == online
