"""The exit status tells a script what happened (README, "Exit status"): 0 success, 1 internal
error, 2 error, 3 finished with failed rows (a rerun retries them), 130 interrupted (Ctrl-C), with
one line saying how to resume. The real CLI in a subprocess, against the local test server."""

from __future__ import annotations

import signal
import subprocess
import time

import pyarrow.parquet as pq

from conftest import SAMPLE, run_infir
from openai_server import FakeOpenAIServer, data_block
from reliability_helpers import child_env, infir_cmd
from test_llm_stages import responder

KEY = {"OPENAI_API_KEY": "sk-test-exit-status"}
SAMPLE_10 = ("--set", f"source.path={SAMPLE}", "--set", "source.sample_queries=10")


def _openai(server, *more: str) -> list[str]:
    return ["--backend", "openai", *SAMPLE_10, "--set", f"llm.base_url={server.base_url}",
            "--set", "llm.backoff_base_s=0.01", "--set", "llm.concurrency=2", *more]


def _lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


def test_success_is_0_and_a_config_error_is_2():
    code, out, err = run_infir("-q", "build", "--until", "generate", *SAMPLE_10)
    assert code == 0, err
    code, out, err = run_infir("build", "--until", "generate", "--set", "llm.no_such_key=1")
    assert code == 2 and _lines(err)[-1].startswith("error: ") and "Traceback" not in err


def test_failed_rows_exit_3_with_one_line_and_a_rerun_that_retries_them_exits_0():
    """Two rows' requests are refused (HTTP 400: not retried, the rows fail in generate); the build
    finishes, says how many rows failed where, and exits 3; the rerun sends only those two again."""
    refused: set[str] = set()

    def fault(n, body):
        q = data_block(body["messages"][1]["content"], "query")
        return "400" if q in refused else None

    with FakeOpenAIServer(responder=responder, fault_fn=fault) as srv:
        code, out, err = run_infir("-q", "build", "--until", "source", *SAMPLE_10)
        assert code == 0, err
        queries = sorted(pq.read_table("runs/sample/source/part-00000.parquet").column("query_positive").to_pylist())
        refused.update(queries[:2])
        code, out, err = run_infir("build", "--until", "generate", *_openai(srv), env=KEY)
        assert code == 3, err
        line = _lines(err)[-1]
        assert line == ("build: finished with 2 failed row(s) (generate 2); rerun the same command to retry "
                        "them (exit status 3)"), err
        refused.clear()
        before = srv.count
        code, out, err = run_infir("generate", *_openai(srv), env=KEY)
        assert code == 0, err
        assert srv.count - before == 2  # the shard is redone from the cache; only the failed rows are sent


def test_sigint_during_a_stage_exits_130_with_the_resume_line_and_the_rerun_resumes(tmp_path):
    with FakeOpenAIServer(responder=responder, latency=0.5) as srv:
        proc = subprocess.Popen(infir_cmd("build", "--until", "generate", *_openai(srv)), cwd=tmp_path,
                                env=child_env(**KEY), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while srv.count < 1 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, proc.communicate()  # mid-stage: the first request is at the server
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert _lines(err)[-1] == ("interrupted; rerun the same command to resume (finished shards and paid "
                                   "answers are kept)"), err
        code, out, err = run_infir("build", "--until", "generate", *_openai(srv), cwd=tmp_path, env=KEY)
        assert code == 0, err


def test_an_internal_error_is_1_with_one_line(monkeypatch, capsys):
    import pipeline.status
    from pipeline.cli import main

    def broken(run_path):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline.status, "print_status", broken)
    assert main(["status", "runs/none"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: a bug (rerun with --debug for details)" in err
    assert main(["--version"]) == 0
