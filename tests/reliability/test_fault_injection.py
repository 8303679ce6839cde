"""Fault injection end to end: 30% mixed faults from the local OpenAI-compatible server over a
300-row run on the MS MARCO sample, then a rerun once the faults stop."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from conftest import make_config
from openai_server import CONTENT_FAULTS, RETRYABLE_FAULTS, FakeOpenAIServer
from pipeline.release import verify_release
from stage_helpers import names_between, run_source, run_write, runner
from pipeline.store import read_stage_table
from reliability_helpers import KEY_ENV, query_of, responder, stage_of

ROWS = 300
# Every stage from generate to verify, in declared order (LLM stages and any deterministic ones between).
STAGES = names_between("generate", "verify")


def run_stages(cfg) -> dict:
    return {name: runner(name)(cfg) for name in STAGES}


def _cfg(server, msmarco, request_timeout_s=0.3):
    return make_config(**{
        "source.path": str(msmarco),
        "source.sample_queries": ROWS,
        "llm.backend": "openai",
        "llm.base_url": server.base_url,
        "llm.api_key_env": KEY_ENV,
        "llm.concurrency": 16,
        "llm.request_timeout_s": request_timeout_s,
        "llm.deadline_s": 10.0,
        "llm.max_attempts": 2,
        "llm.backoff_base_s": 0.01,
        "llm.backoff_max_s": 0.05,
        "generate.shard_rows": 10,
        "mine.shard_rows": 10,
        "verify.shard_rows": 10,
    })


def _rows(stage: str) -> dict[str, dict]:
    return {r["query_positive"]: r for r in read_stage_table(f"runs/sample/{stage}").to_pylist()}


def _requests(server) -> dict[str, Counter]:
    out: dict[str, Counter] = defaultdict(Counter)
    for r in server.chat_requests():
        out[stage_of(r.body)][query_of(r.body)] += 1
    return out


@pytest.mark.slow
def test_mixed_faults_then_rerun_retries_only_failed_rows(tmp_path, msmarco, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test-faults")
    with FakeOpenAIServer(responder=responder, fault_rate=0.3, seed=5, fault_kinds=RETRYABLE_FAULTS + CONTENT_FAULTS,
                          retry_after="0.05", timeout_sleep=1.0) as srv:
        cfg = _cfg(srv, msmarco)
        run_source(cfg)
        first = run_stages(cfg)
        faults = Counter(r.fault for r in srv.chat_requests())
        sent = srv.count

        # The run completes; every row ends accepted, rejected with its checks, or failed with a reason.
        assert set(faults) - {None} == set(RETRYABLE_FAULTS + CONTENT_FAULTS), faults
        assert 0.2 < (sent - faults[None]) / sent < 0.4
        gen, mine, ver = _rows("generate"), _rows("mine"), _rows("verify")
        assert len(gen) == len(mine) == len(ver) == ROWS
        s = first["verify"].success["summary"]
        assert s["accepted"] + s["rejected"] + s["failed"] == s["candidates"] == ROWS
        for r in ver.values():
            if r["accepted"]:
                assert not r["failed_checks"] and not r["verify_error"]
            elif r["verify_error"]:
                assert len(r["verify_error"]) > 10
            else:
                assert r["failed_checks"], r
        failed = {
            "generate": {q for q, r in gen.items() if r["generate_error"]},
            "mine": {q for q, r in mine.items() if r["mine_error"] and not r["generate_error"]},
            "verify": {q for q, r in ver.items() if r["verify_error"] and not r["mine_error"]},
        }
        # The seeded faults leave failures in every stage (retries exhausted, two bad answers).
        assert all(failed.values()), {k: len(v) for k, v in failed.items()}
        assert s["failed"] == sum(len(v) for v in failed.values())
        release = run_write(cfg).success["summary"]["release"]
        assert verify_release(release).rows == s["accepted"]

        # The faults stop; a plain rerun sends exactly one request per row that failed, nothing else.
        srv.fault_rate = 0.0
        srv.reset()
        # Client settings are not part of a stage's identity; a roomy timeout keeps a slow machine
        # from turning a healthy answer into one more failure.
        cfg = _cfg(srv, msmarco, request_timeout_s=30.0)
        second = run_stages(cfg)
        reqs = _requests(srv)
        assert set(reqs["generate"]) == failed["generate"]
        assert set(reqs["mine"]) == failed["mine"] | failed["generate"]
        assert set(reqs["verify"]) == failed["verify"] | failed["mine"] | failed["generate"]
        assert all(n == 1 for c in reqs.values() for n in c.values()), reqs
        order = list(gen)  # every stage keeps its input's row order
        affected = {"generate": failed["generate"]}
        affected["mine"] = affected["generate"] | failed["mine"]
        affected["verify"] = affected["mine"] | failed["verify"]
        for stage in ("generate", "mine", "verify"):
            summary = second[stage].success["summary"]
            res = second[stage]
            assert not res.skipped and summary["failed rows retried"] == len(failed[stage])
            assert summary["failed"] == 0
            # Only the shards (10 rows each) holding a failed row or a row changed upstream were redone.
            redo = {i // 10 for i, q in enumerate(order) if q in affected[stage]}
            assert (summary["shards written"], summary["shards resumed"]) == (len(redo), ROWS // 10 - len(redo))
        ver2 = _rows("verify")
        assert sum(r["accepted"] for r in ver2.values()) + sum(bool(r["failed_checks"]) for r in ver2.values()) == ROWS
        # Rows that had succeeded are untouched.
        gen2 = _rows("generate")
        assert all(gen2[q] == r for q, r in gen.items() if q not in failed["generate"])

        # Nothing left to retry: every stage is skipped and nothing is sent.
        srv.reset()
        assert all(r.skipped for r in run_stages(cfg).values()) and srv.count == 0
        newer = run_write(cfg, bump="patch").success["summary"]
        assert newer["version"] == "1.0.1" and verify_release(newer["release"]).rows == second["verify"].success["summary"]["accepted"]
