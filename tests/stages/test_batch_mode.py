"""`--mode batch` at the stage level: generate -> mine -> verify through the Batch API of the test
server give the same accepted rows as an online run with the same responses, at batch prices."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import run_infir
from openai_server import FakeOpenAIServer
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
