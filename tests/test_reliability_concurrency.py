"""Two `infir` processes at once: on the same run and stage the second refuses with a clear message
and the first finishes uncorrupted; where sharing is safe (a release, one LLM cache for two runs)
both finish and agree."""

from __future__ import annotations

import sqlite3
import subprocess
import threading

import pyarrow.parquet as pq
import pytest

from openai_server import FakeOpenAIServer
from pipeline.release import verify_release
from pipeline.store.lock import StageLock
from stage_helpers import names_between
from reliability_helpers import KEY_ENV, child_env, infir_args, infir_cmd, responder, run, tree_bytes

QUERIES = 40


@pytest.fixture
def server():
    with FakeOpenAIServer(responder=responder, latency=0.02) as srv:
        yield srv


def _args(stage, server, msmarco, run_name="sample"):
    return infir_args(stage, server.base_url, msmarco, queries=QUERIES, concurrency=2) + ["--run", run_name]


def test_second_process_on_the_same_stage_refuses_and_the_first_is_intact(tmp_path, server, msmarco):
    env = child_env(**{KEY_ENV: "sk-test-concurrency"})
    assert run(_args("source", server, msmarco), tmp_path, env).returncode == 0
    # The server holds its answers until the other commands have had their turn, so the first
    # process is surely mid-stage (holding the lock, requests in flight) while they run.
    gate = threading.Event()
    server.responder = lambda body: (gate.wait(120), responder(body))[1]
    first = subprocess.Popen(infir_cmd(*_args("generate", server, msmarco)), cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.wait_for_count(2, timeout=120), "the first process never started sending"  # 2 = concurrency
        saved = (tmp_path / "runs/sample/config.toml").read_text()
        second = run(_args("generate", server, msmarco) + ["--set", "generate.temperature=0.9"], tmp_path, env)
        assert first.poll() is None, "the first process ended before the second one started"
        # The refused process, with other settings, left the run's saved config alone.
        assert (tmp_path / "runs/sample/config.toml").read_text() == saved
        assert second.returncode == 2, second.stderr
        assert f"runs/sample/generate: stage is being written by pid {first.pid}; wait for it or stop it" in second.stderr
        assert "Traceback" not in second.stderr
        # `build` meets the same lock at the first stage still being written.
        build = run(["build", *_args("generate", server, msmarco)[1:], "--until", "mine"], tmp_path, env)
        assert build.returncode == 2 and "stage is being written by pid" in build.stderr, build.stderr
        assert first.poll() is None
    finally:
        gate.set()
        first.wait(timeout=300)
        err = first.stderr.read()
        first.stderr.close()
    assert first.returncode == 0, err
    table = pq.read_table(tmp_path / "runs/sample/generate")
    assert table.num_rows == QUERIES and table.column("generate_error").null_count == QUERIES
    assert server.count == QUERIES  # the refused processes sent nothing


def test_train_refuses_while_another_process_trains(tmp_path, msmarco):
    # The train stage takes the same lock before it loads anything heavy.
    with StageLock(tmp_path / "runs/sample/train"):
        done = run(["train", "--set", f'source.path="{msmarco}"'], tmp_path, child_env())
    assert done.returncode == 2 and "runs/sample/train: stage is being written by pid" in done.stderr, done.stderr


@pytest.mark.slow
def test_two_runs_at_once_share_one_cache_and_write_one_release(tmp_path, server, msmarco):
    """`infir build` of two runs at the same time: one SQLite cache, and the same release content
    (a run's name is not part of it), so both write releases/inf-ir-sample/1.0.0."""
    env = child_env(**{KEY_ENV: "sk-test-concurrency"})
    procs = [
        subprocess.Popen(infir_cmd("build", *_args("source", server, msmarco, r)[1:], "--until", "write"),
                         cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for r in ("one", "two")
    ]
    errs = []
    for p in procs:
        p.wait(timeout=300)
        errs.append(p.stderr.read())
        p.stderr.close()
    assert [p.returncode for p in procs] == [0, 0], errs
    for stage in names_between("source", "verify"):
        one = tree_bytes(tmp_path / "runs/one" / stage, "*.parquet")
        assert one and one == tree_bytes(tmp_path / "runs/two" / stage, "*.parquet"), stage
    con = sqlite3.connect(tmp_path / ".cache/llm.sqlite3")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 3 * QUERIES
    con.close()
    versions = list((tmp_path / "releases/inf-ir-sample").iterdir())
    assert [p.name for p in versions] == ["1.0.0"], versions
    assert verify_release(versions[0]).rows > 0
    # At most both processes pay for the same request, never more.
    assert 3 * QUERIES <= server.count <= 2 * 3 * QUERIES
