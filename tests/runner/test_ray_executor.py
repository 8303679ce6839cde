"""`run.executor = "ray"`: the same stages as Ray tasks on a local Ray with 2 CPUs write the same
bytes as the local executor, survive a worker killed mid-stage, and keep the run's request rate.

One local Ray serves the whole module (starting one takes ~10 s here); skipped without Ray."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'infir[ray]'")

from conftest import make_config, run_infir  # noqa: E402
from openai_server import FakeOpenAIServer  # noqa: E402
from stage_helpers import run_until  # noqa: E402
from test_llm_stages import openai_cfg, responder  # noqa: E402

KEY = "sk-test-ray"
SMALL_SHARDS = {f"{s}.shard_rows": 40 for s in ("generate", "mine", "filter", "verify")}


@pytest.fixture(scope="module")
def local_ray():
    from pipeline.runner.executors.ray_session import ensure_ray

    # Workers start with the environment of the process that starts Ray: the key the tests use.
    os.environ["OPENAI_API_KEY"] = KEY
    os.environ["INFIR_RAY_NUM_CPUS"] = "2"
    try:
        yield ensure_ray(None)
    finally:
        ray.shutdown()
        os.environ.pop("INFIR_RAY_NUM_CPUS", None)


def release_files(root: Path) -> dict[str, bytes]:
    files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.parquet")}
    assert files, f"no release data under {root}"
    return files


def _schema_name(body: dict) -> str:
    return body["response_format"]["json_schema"]["name"]


def test_cli_build_on_ray_writes_the_local_release(tmp_path, local_ray):
    local = make_config(**SMALL_SHARDS, **{"run.name": "local", "write.releases_dir": "rel-local"})
    run_until(local, "write")
    address = ray.get_runtime_context().gcs_address
    code, out, err = run_infir(
        "build", "--config", str(Path(__file__).resolve().parents[2] / "configs/sample.toml"), "--run", "onray",
        "--executor", "ray", "--ray-address", address, "--until", "write",
        "--set", f"source.path={Path(__file__).resolve().parents[2] / 'data/sample'}",
        "--set", "write.releases_dir=rel-ray", *[a for k, v in SMALL_SHARDS.items() for a in ("--set", f"{k}={v}")],
    )
    assert code == 0, err[-2000:]
    assert release_files(tmp_path / "rel-ray") == release_files(tmp_path / "rel-local")
    shards = json.loads((tmp_path / "runs/onray/verify/_SUCCESS.json").read_text())["shards"]
    assert len([s for s in shards if s["name"].startswith("part-")]) >= 3  # several tasks, not one


def _kill_one_chunk_worker() -> int | None:
    """SIGKILL one Ray worker process that is running a chunk task now (Ray titles it so)."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("ray::_chunk_task" in c for c in (p.info["cmdline"] or [])):
            os.kill(p.info["pid"], signal.SIGKILL)
            return p.info["pid"]
    return None


def test_worker_killed_in_generate_and_verify(tmp_path, monkeypatch, local_ray):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    over = {**SMALL_SHARDS, "source.sample_queries": 0, "llm.concurrency": 4}
    with FakeOpenAIServer(responder=responder) as srv:
        run_until(openai_cfg(srv, **over, **{"run.name": "local", "write.releases_dir": "rel-local",
                                              "llm.cache_path": str(tmp_path / "local.sqlite3")}), "write")
    kills: dict[str, int] = {}
    with FakeOpenAIServer(responder=responder, latency=0.05) as srv:
        stop = threading.Event()

        def killer() -> None:
            # The 10th request of a stage: its first chunks are in flight on both workers.
            while not stop.is_set() and len(kills) < 2:
                seen = Counter(_schema_name(r.body) for r in srv.chat_requests())
                for stage, schema in (("generate", "GeneratedInstruction"), ("verify", "JudgeVerdicts")):
                    if stage not in kills and seen[schema] >= 10:
                        pid = _kill_one_chunk_worker()
                        if pid is not None:
                            kills[stage] = pid
                stop.wait(0.01)

        th = threading.Thread(target=killer, daemon=True)
        th.start()
        try:
            run_until(openai_cfg(srv, **over, **{"run.name": "onray", "run.executor": "ray",
                                                  "write.releases_dir": "rel-ray",
                                                  "llm.cache_path": str(tmp_path / "ray.sqlite3")}), "write")
        finally:
            stop.set()
            th.join()
        bodies = Counter(json.dumps(r.body, sort_keys=True) for r in srv.chat_requests())
    assert set(kills) == {"generate", "verify"}
    assert release_files(tmp_path / "rel-ray") == release_files(tmp_path / "rel-local")
    # Only what was in flight on a killed worker is asked again: each worker holds
    # llm.concurrency // 2 = 2 requests at once. Its earlier answers come from its cache file.
    repeated = sum(n - 1 for n in bodies.values())
    assert repeated <= 2 * len(kills), repeated
    # Every worker file was merged into the run's cache and removed.
    assert not list((tmp_path / "ray.sqlite3.workers").glob("*.sqlite3"))


def test_request_rate_holds_over_two_workers(tmp_path, monkeypatch, local_ray):
    """Two Ray workers share the run's `llm.requests_per_minute` (one limiter actor): 120 requests
    at 600/min (10 a second; the bucket holds one second's worth, 10) take ~11 s, three windows of
    3 s and more. On the SERVER's own arrival times, no 3 s window holds more than the limiter
    grants in 3 s (10 + 3 x 10 = 40) plus one second of the rate (10) for arrivals bunched by the
    actor's round trips and a loaded machine (41 seen here). Two workers each with its own limiter
    would send 20 a second: 60 in any 3 s window, 80 in the first (and 100 in one window with a
    limiter per task, as each task's new client would start with a full bucket)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert ray.cluster_resources().get("CPU", 0) >= 2
    rpm, queries, window = 600, 120, 3.0
    rate, capacity, tolerance = rpm / 60, rpm / 60, rpm / 60
    bound = capacity + rate * window + tolerance
    with FakeOpenAIServer(responder=responder) as srv:
        cfg = openai_cfg(srv, **{"source.sample_queries": queries, "generate.shard_rows": 10, "run.executor": "ray",
                                 "llm.requests_per_minute": rpm, "llm.cache_path": str(tmp_path / "c.sqlite3")})
        run_until(cfg, "generate")
        arrived = sorted(r.arrived for r in srv.chat_requests())
    assert len(arrived) == queries > 2 * bound  # more work than two windows allow
    worst = max(sum(1 for t in arrived if a <= t < a + window) for a in arrived)
    assert worst <= bound, (worst, bound)
    shards = json.loads((tmp_path / "runs/sample/generate/_SUCCESS.json").read_text())["shards"]
    assert len(shards) >= 6  # twelve tasks of 10 rows, run two at a time on the two workers


def test_budget_holds_over_two_workers_through_the_drivers_ledger(tmp_path, monkeypatch, local_ray):
    """The cap holds for the run over both workers, and no worker opens the SQLite ledger (which
    would be wrong on a network filesystem): every reservation seen in the file during the run is
    held by the one ledger actor on the driver's node."""
    import sqlite3

    import psutil
    from run_helpers import billing_server

    from pipeline.errors import InfirError
    from pipeline.llm.budget import SpendLedger

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    cap = 0.01  # generate costs ~$0.0003 a row at gpt-4o-mini prices: ~30 of the 80 rows fit
    holders: set[int] = set()
    ledger_file = tmp_path / "runs/sample/spend.sqlite3"
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if ledger_file.exists():
                try:
                    with sqlite3.connect(f"file:{ledger_file}?mode=ro", uri=True, timeout=1) as db:
                        holders.update(p for (p,) in db.execute("SELECT DISTINCT pid FROM reserved"))
                except sqlite3.Error:
                    pass
            stop.wait(0.005)

    with billing_server(latency=0.05) as srv:
        cfg = openai_cfg(srv, **{"source.sample_queries": 80, "generate.shard_rows": 10, "run.executor": "ray",
                                 "llm.concurrency": 4, "llm.max_cost_usd": cap,
                                 "llm.cache_path": str(tmp_path / "c.sqlite3")})
        th = threading.Thread(target=watch, daemon=True)
        th.start()
        try:
            with pytest.raises(InfirError, match="stopped at the cost budget"):
                run_until(cfg, "generate")
        finally:
            stop.set()
            th.join()
        sent = len(srv.chat_requests())
    ledger = SpendLedger(ledger_file)
    spent = ledger.spent()
    held = ledger._db.execute("SELECT COUNT(*) FROM reserved").fetchone()[0]
    ledger.close()
    assert 10 < sent < 80, sent  # stopped by the cap, after both workers had sent
    # Over the cap by at most what was in flight beyond its reservations (4 requests at once).
    assert cap * 0.5 < spent <= cap + 4 * 0.0005, spent
    assert held == 0  # nothing left reserved by the tasks that stopped
    assert holders, "no reservation was ever seen in the ledger file"
    names = {pid: " ".join(psutil.Process(pid).cmdline()) if psutil.pid_exists(pid) else "(gone)" for pid in holders}
    assert len(holders) == 1 and os.getpid() not in holders, names
    assert all("SharedLedger" in n or n == "(gone)" for n in names.values()), names


def test_dense_encoding_on_ray_data_gives_the_local_vectors_and_negatives(tmp_path, local_ray):
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.retrieval.dense import EmbeddingStore

    # Short truncation keeps the two encodings cheap; it is the same setting on both sides.
    dense = {**SMALL_SHARDS, "mine.retrieval.method": "dense", "mine.retrieval.max_seq_length": 32,
             "source.sample_queries": 30}
    run_until(make_config(**dense, **{"run.name": "local"}), "mine")
    run_until(make_config(**dense, **{"run.name": "onray", "run.executor": "ray"}), "mine")

    def negatives(run):
        rows = pq.read_table(tmp_path / "runs" / run / "mine").to_pylist()
        return [[(n["passage_id"], n["rank"]) for n in r["mined_negatives"]] for r in rows]

    assert negatives("onray") == negatives("local") and any(negatives("local"))
    [ldir] = (tmp_path / "runs/local/index").glob("emb-*")
    [rdir] = (tmp_path / "runs/onray/index").glob("emb-*")
    local, onray = EmbeddingStore(ldir), EmbeddingStore(rdir)
    keys = [k for (k,) in local.db.execute("SELECT key FROM emb")]
    assert len(keys) >= 400  # the whole sample collection (and the queries)
    lrows, rrows = local.lookup(keys), onray.lookup(keys)
    assert (rrows >= 0).all()
    np.testing.assert_allclose(onray.get(rrows), local.get(lrows), atol=1e-5)


def test_ledger_actor_releases_what_a_dead_task_reserved(tmp_path):
    """A task killed between reserve and settle leaves reservations that would block the cap for
    the rest of the run (the actor's pid is alive): its next attempt, or the driver at stage end,
    releases them by the task's key."""
    from pipeline.llm.budget import SpendLedger
    from pipeline.runner.executors.ray_limits import SharedLedger

    actor = SharedLedger(str(tmp_path / "spend.sqlite3"), 1.0, "generate")
    a = [actor.reserve("run-generate:0", 0.3) for _ in range(3)]
    assert None not in a and actor.reserve("run-generate:1", 0.3) is None  # 0.9 held: 0.3 more passes $1
    actor.settle("run-generate:0", a[0], 0.25)
    assert actor.release_owner("run-generate:0") == 2 and actor.held() == 0
    b = actor.reserve("run-generate:1", 0.7)
    assert b is not None and actor.release_all() == 1
    assert actor.spent() == pytest.approx(0.25) and SpendLedger(tmp_path / "spend.sqlite3").spent("generate") == pytest.approx(0.25)


def _one_file_collection(tmp_path, n=400):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "coll" / "part-00000.parquet"
    path.parent.mkdir()
    texts = [f"passage {i} about topic {i % 17} and its detail {i * 7 % 13}" for i in range(n)]
    pq.write_table(pa.table({"id": [str(i) for i in range(n)], "title": [""] * n, "text": texts}), path)
    return path


def test_a_one_file_collection_is_encoded_by_every_actor(tmp_path, local_ray, monkeypatch):
    """One Parquet file is one read task and one block: without splitting it into encoder-batch
    blocks, one actor encoded the whole collection while the others waited. And without waiting for
    the whole pool to start, the first actor ready could take every block of a small collection."""
    from pipeline.retrieval import ray_encode
    from pipeline.retrieval.types import MiningSettings

    monkeypatch.setattr(ray_encode, "RAY_BATCH", 50)  # 400 passages: 8 blocks instead of 1
    stats = ray_encode.encode_collection([_one_file_collection(tmp_path)], tmp_path / "index",
                                         MiningSettings(method="dense", max_seq_length=16), "f" * 16)
    assert stats["ray_encode"] == "400 passages on 2 of 2 CPU actor(s)", stats


def test_encoder_actors_that_cannot_start_in_time_give_one_clear_error(tmp_path, local_ray, monkeypatch):
    from pipeline.retrieval import ray_encode
    from pipeline.retrieval.errors import RetrievalError
    from pipeline.retrieval.types import MiningSettings

    import ray.data

    # 1 s is less than an actor needs to import torch and load the model: the pool cannot be ready.
    monkeypatch.setattr(ray_encode, "ACTOR_START_S", 1)
    before = ray.data.DataContext.get_current().wait_for_min_actors_s
    with pytest.raises(RetrievalError, match=r"the 2 encoder actor\(s\) did not all start within 1 s; .* CPUs"):
        ray_encode.encode_collection([_one_file_collection(tmp_path, 20)], tmp_path / "index",
                                     MiningSettings(method="dense", max_seq_length=16), "e" * 16)
    assert ray.data.DataContext.get_current().wait_for_min_actors_s == before  # the user's setting is back
