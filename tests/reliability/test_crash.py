"""Crash-resume: every stage killed with SIGKILL at seeded random moments, then rerun to completion.

One uninterrupted run (A) and one run whose every stage is killed five times before it completes
(B), on the MS MARCO sample against the local OpenAI-compatible server. Kill moments: for the LLM
stages, when the server has seen a seeded random number of the stage's requests (plus a random
delay of up to 15 ms, so kills land inside requests, between them and inside shard writes); for
`source` and `write`, when a seeded random number of the stage's files has been written (plus the
same delay). `train` is one process that keeps nothing partial (its folder is removed on start and
its success marker is written last), so it is killed twice and must give A's metrics after a rerun.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from openai_server import FakeOpenAIServer
from pipeline.release import verify_release
from stage_helpers import names_between
from reliability_helpers import (
    KEY_ENV,
    LLM_STAGES,
    child_env,
    infir_args,
    infir_cmd,
    kill9,
    responder,
    run,
    settle,
    tree_bytes,
)

QUERIES = 60
CONCURRENCY = 4
KILLS = 5
STAGES = tuple(names_between("source", "write"))
RELEASE = Path("releases/inf-ir-sample/1.0.0")
SECRETS = ("sk-test-crash-5f0c1d2e3b4a", "hf_testcrash9a8b7c6d5e")


def _new_files(root: Path, since_ns: int) -> int:
    if not root.is_dir():
        return 0
    n = 0
    # os.walk skips a folder that vanishes while it is listed (a writer's temp folder renamed or
    # removed mid-scan), where Path.rglob would raise.
    for d, _, names in os.walk(root, onerror=lambda e: None):
        for name in names:
            try:
                if name != ".lock" and os.stat(os.path.join(d, name)).st_mtime_ns >= since_ns:
                    n += 1
            except FileNotFoundError:  # a temp file renamed while we looked
                pass
    return n


#: The only dot-named entries a finished run may hold: each stage's lock file, and the read holds later
#: stages take on it (a killed reader's hold is free, and removed by the next writer: store/lock.py).
_LOCK_FILE = re.compile(r"\.lock|\.read-.+\.lock")


def leftovers(*roots: Path) -> list[str]:
    """Every temp folder or file under `roots` (a release's `.tmp-<version>-<pid>-<id>`, a shard's
    `.part-N.parquet.tmp-...`, a plot's `.png.tmp`, ...): any name with "tmp" in it, and any other
    dot-named entry than a lock. Nothing is filtered by a leading dot: that is what temp names use."""
    found = []
    for root in roots:
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                if "tmp" in name.lower() or (name.startswith(".") and not _LOCK_FILE.fullmatch(name)):
                    found.append(os.path.relpath(os.path.join(d, name), root.parent))
    return sorted(found)


def _watch_root(stage: str, cwd: Path) -> Path:
    return cwd / ("releases" if stage == "write" else f"runs/sample/{stage}")


def _check_after_kill(stage: str, cwd: Path) -> None:
    """What a kill may leave: complete shards only, and no success marker unless the stage finished."""
    d = cwd / "runs/sample" / stage
    if stage == "write":
        for v in (cwd / "releases/inf-ir-sample").glob("[0-9]*"):
            verify_release(v)  # a version folder is always a whole release
        return
    for p in d.rglob("*.parquet"):
        pq.read_table(p)
    if (d / "_SUCCESS.json").is_file():
        success = json.loads((d / "_SUCCESS.json").read_text())
        assert {s["name"] for s in success["shards"]} == {p.relative_to(d).as_posix() for p in d.rglob("*.parquet")}


def _kill_once(stage, args, cwd, env, server, rng, target, phase_start) -> bool:
    """Start `infir <stage>`, SIGKILL it once `target` progress is reached; True if it died mid-run.

    Progress: for an LLM stage, the server's requests since the stage's first attempt, and at least
    one from this attempt; else the files this attempt has written."""
    start_ns = time.time_ns()
    target_count = max(phase_start + target, server.count + 1)
    proc = subprocess.Popen(infir_cmd(*args), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while proc.poll() is None:
            if stage in LLM_STAGES:
                reached = server.count >= target_count
            else:
                reached = _new_files(_watch_root(stage, cwd), start_ns) >= target
            if reached:
                time.sleep(rng.uniform(0, 0.015))
                return kill9(proc)
            time.sleep(0.002)
        assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
        return False
    finally:
        if proc.poll() is None:
            kill9(proc)
        proc.stderr.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import require_msmarco

    msmarco = require_msmarco()
    a, b = tmp_path_factory.mktemp("uninterrupted"), tmp_path_factory.mktemp("killed")
    env = child_env(**{KEY_ENV: SECRETS[0], "HF_TOKEN": SECRETS[1], "SOURCE_DATE_EPOCH": "1700000000"})
    rng = random.Random(20240601)
    with FakeOpenAIServer(responder=responder, latency=0.01) as server:
        def args(stage):
            # The filter stage has no LLM wait: small shards give it enough files (and time) for
            # each kill to land before it finishes.
            return infir_args(stage, server.base_url, msmarco, queries=QUERIES, concurrency=CONCURRENCY,
                              extra=("--set", "filter.shard_rows=2"))

        # Stages run one after the other, so a stage's requests are the server's count over its
        # runs (a request cut off by a kill, with no readable body, included).
        files, baseline, killed = {}, Counter(), Counter()
        for stage in STAGES:
            start_ns, before = time.time_ns(), server.count
            done = run(args(stage), a, env)
            assert done.returncode == 0, done.stderr[-2000:]
            files[stage] = _new_files(_watch_root(stage, a), start_ns)
            baseline[stage] = server.count - before

        kills: Counter = Counter()
        for stage in STAGES:
            before = server.count
            total = baseline[stage] if stage in LLM_STAGES else files[stage]
            # Targets measured from each attempt's start; kept clear of the end so the kill lands.
            # Deterministic stages write their last files in a quick burst: the targets stay in the
            # first half of them, so the process is still running when the kill comes.
            top = max(2, total - 2 * CONCURRENCY) if stage in LLM_STAGES else max(KILLS, total // 2)
            for target in sorted(rng.sample(range(1, top + 1), KILLS)):
                kills[stage] += _kill_once(stage, args(stage), b, env, server, rng, target, before)
                settle(server, 0.05)
                _check_after_kill(stage, b)
            done = run(args(stage), b, env)
            assert done.returncode == 0, done.stderr[-2000:]
            killed[stage] = settle(server, 0.05) - before
    return {"a": a, "b": b, "env": env, "baseline": baseline, "killed": killed, "kills": kills, "args": args}


@pytest.mark.slow
def test_killed_run_gives_byte_identical_release_and_stage_shards(runs):
    a, b = runs["a"], runs["b"]
    # `filter` has no LLM wait and writes its shards in one quick burst: some kills come after its
    # last shard. At least 3 of its 5 must land; every other stage takes all 5.
    assert all(runs["kills"][s] >= (3 if s == "filter" else KILLS) for s in STAGES), runs["kills"]
    release_a, release_b = tree_bytes(a / RELEASE), tree_bytes(b / RELEASE)
    assert any(k.startswith("data/") for k in release_a)
    assert verify_release(a / RELEASE).rows > 0
    assert release_a == release_b
    # Every kill's leftovers were cleaned by the next attempt: the release folder holds the version
    # and nothing else, and no temp file or folder is left anywhere in either run.
    assert sorted(p.name for p in (b / "releases/inf-ir-sample").iterdir()) == ["1.0.0"]
    assert leftovers(b / "runs", b / "releases") == []
    assert leftovers(a / "runs", a / "releases") == []
    for stage in STAGES[:-1]:
        shards_a = tree_bytes(a / "runs/sample" / stage, "*.parquet")
        assert shards_a and shards_a == tree_bytes(b / "runs/sample" / stage, "*.parquet"), stage


@pytest.mark.slow
def test_repeated_llm_requests_per_kill_within_the_concurrency_bound(runs):
    for stage in LLM_STAGES:
        extra = runs["killed"][stage] - runs["baseline"][stage]
        # Only requests in flight at a kill are sent again: their answers never reached the cache.
        assert 0 <= extra <= runs["kills"][stage] * CONCURRENCY, (stage, extra, runs["kills"][stage])


@pytest.mark.slow
def test_train_killed_then_rerun_gives_the_uninterrupted_metrics(runs):
    a, b, env, args = runs["a"], runs["b"], runs["env"], runs["args"]
    extra = ("--set", "train.max_rows=4", "--set", "train.batch_size=4", "--set", "train.max_seq_length=32",
             "--set", "train.ablate_mined_negatives=false")  # one training: the kill and rerun are under test
    done = run(args("train") + list(extra), a, env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rng = random.Random(7)
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(infir_cmd(*args("train"), *extra), cwd=b, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Training has begun once it writes into its folder (the lock file aside); kill inside it.
        train_dir = b / "runs/sample/train"
        while proc.poll() is None and not (train_dir.is_dir() and any(p.name != ".lock" for p in train_dir.iterdir())):
            time.sleep(0.01)
        time.sleep(rng.uniform(0.2, 3.0))
        kills += kill9(proc)
        assert not (b / "runs/sample/train/_SUCCESS.json").exists()
    assert kills == 2
    done = run(args("train") + list(extra), b, env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = [json.loads((d / "runs/sample/train/_SUCCESS.json").read_text())["summary"]["metrics"] for d in (a, b)]
    assert metrics[0] == metrics[1]
    assert leftovers(b / "runs/sample/train") == []  # the killed attempts' staged model is gone
    # The saved model and its logs (written with a key and an HF token in the environment) hold neither.
    for p in (b / "runs/sample/train").rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), p
