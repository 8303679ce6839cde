"""A stage's inputs are locked while a later stage reads them (issue #30 point 7): `infir source
--force` run while a build's `generate` reads the source is refused with one line naming that
process, instead of replacing the rows under it; a later stage does not start on a stage that is
being written; a hold left by a killed reader blocks nothing; and where a hold cannot reach (another
host, a filesystem whose locks do not cross hosts) the reading stage finds the changed input before
it writes `_SUCCESS.json` and stops with one line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from conftest import SAMPLE
from openai_server import FakeOpenAIServer
from pipeline.cli import main
from pipeline.status import stage_states
from pipeline.store import read_success
from pipeline.store.verify_input import verify_upstream
from reliability_helpers import KEY_ENV, child_env, infir_args, infir_cmd, responder, run, tree_bytes

QUERIES = 10


def _args(command: str, base_url: str) -> list[str]:
    return infir_args(command, base_url, SAMPLE, queries=QUERIES, concurrency=2)


def _one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr and "internal error" not in stderr, stderr
    return lines[0]


def _holder(code: str, *args: str) -> subprocess.Popen:
    """A Python process that takes a lock (`code`), prints 'held' and sleeps until killed."""
    proc = subprocess.Popen([sys.executable, "-c", code + "\nprint('held', flush=True)\nimport time; time.sleep(120)", *args],
                            env=child_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_source_force_is_refused_while_a_build_reads_it(tmp_path):
    env = child_env(**{KEY_ENV: "sk-test-upstream-lock"})
    gate = threading.Event()
    with FakeOpenAIServer(responder=lambda body: (gate.wait(120), responder(body))[1]) as server:
        build = subprocess.Popen(infir_cmd("build", *_args("source", server.base_url)[1:], "--until", "generate"),
                                 cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            # The build is inside generate: requests sent, answers held back by the gate.
            assert server.wait_for_count(2, timeout=120), "the build never reached generate"
            source = tmp_path / "runs/sample/source"
            before = tree_bytes(source, "*.parquet"), (source / "_SUCCESS.json").read_bytes()
            forced = run(_args("source", server.base_url) + ["--force", "--set", "source.sample_queries=20"], tmp_path, env)
            assert build.poll() is None, "the build ended before `source --force` ran"
            assert forced.returncode == 2, forced.stderr[-2000:]
            line = _one_line(forced.stderr)
            assert f"runs/sample/source: being read by pid {build.pid} (generate)" in line, line
            # Nothing of the source was touched: not cleared, not rewritten.
            assert (tree_bytes(source, "*.parquet"), (source / "_SUCCESS.json").read_bytes()) == before
        finally:
            gate.set()
            build.wait(timeout=300)
            err = build.stderr.read()
            build.stderr.close()
        assert build.returncode == 0, err[-2000:]
    run_dir = tmp_path / "runs/sample"
    for stage in ("source", "generate"):
        verify_upstream(run_dir / stage, read_success(run_dir / stage))
    states = {s["stage"]: s for s in stage_states(run_dir)}
    assert states["source"]["state"] == states["generate"]["state"] == "done"
    assert states["generate"]["counts"]["in"] == states["generate"]["counts"]["out"] == QUERIES
    assert not list((run_dir / "source").glob(".read-*")), "the build's read hold outlived it"
    # The holds went with the build: the same command now runs.
    assert main(["source", "--force", "--set", f'source.path="{SAMPLE}"', "--set", "source.sample_queries=20"]) == 0
    assert read_success(run_dir / "source")["rows"] == 20


def test_a_later_stage_does_not_start_on_a_stage_being_written(tmp_path, capsys):
    holder = _holder("import sys; from pipeline.store.lock import StageLock\nheld = StageLock(sys.argv[1]).__enter__()",
                     "runs/sample/source")
    try:
        rc = main(["generate", "--set", f'source.path="{SAMPLE}"'])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"runs/sample/source: stage is being written by pid {holder.pid}; `generate` reads it" in _one_line(err)
    assert not Path("runs/sample/generate/_STATE.json").exists()
    assert not list(Path("runs/sample/source").glob(".read-*")), "the refused reader left its hold behind"


def test_a_hold_left_by_a_killed_reader_blocks_nothing(tmp_path, capsys):
    assert main(["source", "--set", f'source.path="{SAMPLE}"']) == 0
    holder = _holder("import sys; from pipeline.store.lock import ReadLock\nheld = ReadLock(sys.argv[1], 'mine').__enter__()",
                     "runs/sample/source")
    capsys.readouterr()
    try:
        assert main(["source", "--force", "--set", f'source.path="{SAMPLE}"']) == 2
        assert f"runs/sample/source: being read by pid {holder.pid} (mine)" in _one_line(capsys.readouterr().err)
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: its hold file stays, its lock dies with it
        holder.wait()
    assert len(list(Path("runs/sample/source").glob(".read-*"))) == 1
    assert main(["source", "--force", "--set", f'source.path="{SAMPLE}"']) == 0, capsys.readouterr().err
    assert not list(Path("runs/sample/source").glob(".read-*"))


def test_an_upstream_replaced_where_holds_do_not_reach_stops_the_stage_before_its_marker(tmp_path, capsys, monkeypatch):
    from pipeline.config import load_config
    from pipeline.declaration import PIPELINE
    from pipeline.runner import run as runner

    base = ["--set", f'source.path="{SAMPLE}"', "--set", f"source.sample_queries={QUERIES}"]
    assert main(["source", *base]) == 0
    rerun = load_config(None, {"source.path": str(SAMPLE), "source.sample_queries": 12})
    original = runner._run

    def run_then_replace(ctx, stage, link=None):
        summary = original(ctx, stage, link)
        if stage.name == "generate":
            runner.run_stage(PIPELINE, "source", rerun, force=True)
        return summary

    # Another host rewrites the source while generate runs: generate's hold is not seen there (a
    # no-op here), and the rewrite lands between generate's reading and its marker.
    with monkeypatch.context() as m:
        m.setattr(runner, "ReadLock", lambda *a: contextlib.nullcontext())
        m.setattr(runner, "_run", run_then_replace)
        capsys.readouterr()
        rc = main(["generate", *base])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "runs/sample/source: changed while `generate` was reading it; generate is not marked done" in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert read_success("runs/sample/generate") is None  # never marked done on the old rows
    states = {s["stage"]: s["state"] for s in stage_states(Path("runs/sample"))}
    assert states["source"] == "done" and states["generate"].startswith("interrupted"), states
    assert main(["generate", "--force", "--set", f'source.path="{SAMPLE}"', "--set", "source.sample_queries=12"]) == 0
    assert read_success("runs/sample/generate")["rows"] == read_success("runs/sample/source")["rows"] == 12
