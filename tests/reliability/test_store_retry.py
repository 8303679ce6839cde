"""The store's retry and redo rules, one by one (fast, no LLM): which finished stages run again,
which shards a rerun keeps, and what it refuses."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from pipeline.errors import InfirError
from pipeline.runner.chunks import own_failures, rows_hash, run_chunks
from pipeline.runner.shape import Context, RowStage
from pipeline.store import StageOutput, stage_fingerprint

SCHEMA = pa.schema([("x", pa.int64()), ("up_error", pa.string()), ("demo_error", pa.string())])


def _upstream(run, rows):
    up = StageOutput(run, "up", "src", "cfg", force=True)
    with up:
        up.prepare()
        for k in range(0, len(rows), 2):
            up.write_shard(f"part-{k // 2:05d}.parquet", pa.Table.from_pylist(rows[k : k + 2], schema=SCHEMA))
        return up.finish({})


def _demo(run, upstream, fail=(), force=False):
    """A stage over `up` (shards of 2 rows) whose process fails the rows whose x is in `fail`."""
    seen = []
    out = StageOutput(run, "demo", stage_fingerprint(upstream), "cfg", force=force)

    class Demo(RowStage):
        name = "demo"
        adds = ("demo_error",)

        def shard_rows(self, cfg):
            return 2

        def process(self, ctx, rows, prepared):
            seen.extend(r["x"] for r in rows)
            return [{**r, "demo_error": "boom" if r["x"] in fail else None} for r in rows]

    ctx = Context(cfg=None, stage=Demo(), run_dir=run, upstream_dir=run / "up", schema=SCHEMA, out=out)
    with out:
        done = out.start()
        if done:
            return done, seen
        counts = run_chunks(ctx, ctx.stage, upstream["rows"])
        return out.finish(dict(counts)), seen


def test_rerun_redoes_only_shards_with_own_failures(tmp_path):
    rows = [{"x": i, "up_error": "upstream broke" if i == 5 else None, "demo_error": None} for i in range(6)]
    up = _upstream(tmp_path, rows)
    first, seen = _demo(tmp_path, up, fail={1, 5})
    assert seen == list(range(6))
    # Row 5 failed upstream already: not this stage's failure, not retried here.
    assert [s.get("failed", 0) for s in first["shards"]] == [1, 0, 0]
    second, seen = _demo(tmp_path, up)
    assert seen == [0, 1]  # only the shard holding the failed row
    assert second["summary"]["failed rows retried"] == 1 and second["summary"]["shards resumed"] == 2
    assert len(second["lineage"]) == 1
    third, seen = _demo(tmp_path, up)
    assert seen == [] and third == second  # nothing failed: skipped


def test_downstream_redoes_changed_shards_after_an_upstream_retry_only(tmp_path):
    rows = [{"x": i, "up_error": None, "demo_error": None} for i in range(6)]
    up = _upstream(tmp_path, rows)
    _demo(tmp_path, up)
    # The upstream retries its failed rows: its new output names the old one in its lineage.
    rows[3]["x"] = 33
    _upstream(tmp_path, rows)
    record = json.loads((tmp_path / "up/_SUCCESS.json").read_text())
    record["lineage"] = [stage_fingerprint(up)]
    (tmp_path / "up/_SUCCESS.json").write_text(json.dumps(record))
    _, seen = _demo(tmp_path, record)
    assert seen == [2, 33]
    # An upstream that changed for another reason (redone with --force, other data) is refused.
    rows[0]["x"] = 100
    other = _upstream(tmp_path, rows)
    with pytest.raises(InfirError, match="finished earlier with other inputs"):
        _demo(tmp_path, other)
    _, seen = _demo(tmp_path, other, force=True)
    assert seen == [100, 1, 2, 33, 4, 5]


def test_an_attempt_interrupted_before_an_upstream_retry_resumes(tmp_path):
    rows = [{"x": i, "up_error": None, "demo_error": None} for i in range(6)]
    up = _upstream(tmp_path, rows)
    out = StageOutput(tmp_path, "demo", stage_fingerprint(up), "cfg")
    with out:
        out.prepare()
        for k in range(2):
            chunk = rows[2 * k : 2 * k + 2]
            out.write_shard(f"part-{k:05d}.parquet", pa.Table.from_pylist(chunk, schema=SCHEMA), input_hash=rows_hash(chunk))
        # killed here; then the upstream retries a row of the second chunk
    rows[3]["x"] = 33
    _upstream(tmp_path, rows)
    record = json.loads((tmp_path / "up/_SUCCESS.json").read_text())
    record["lineage"] = [stage_fingerprint(up)]
    (tmp_path / "up/_SUCCESS.json").write_text(json.dumps(record))
    _, seen = _demo(tmp_path, record)
    assert seen == [2, 33, 4, 5]  # the first shard is kept, the changed and the missing ones made


def test_a_shard_is_kept_only_if_made_from_the_same_rows(tmp_path):
    out = StageOutput(tmp_path, "demo", "in", "cfg")
    with out:
        out.prepare()
        rows = [{"x": 1}]
        out.write_shard("part-00000.parquet", pa.Table.from_pylist(rows), input_hash=rows_hash(rows))
        # killed here
    again = StageOutput(tmp_path, "demo", "in", "cfg")
    with again:
        again.prepare()
        assert again.can_adopt("part-00000.parquet", rows_hash([{"x": 1}]))
        assert not again.can_adopt("part-00000.parquet", rows_hash([{"x": 2}]))
        assert not again.can_adopt("part-00001.parquet", rows_hash([{"x": 1}]))


def test_finish_removes_shards_this_attempt_did_not_write(tmp_path):
    out = StageOutput(tmp_path, "demo", "in", "cfg")
    with out:
        out.prepare()
        for k in range(3):
            out.write_shard(f"part-{k:05d}.parquet", pa.table({"x": [k]}))
    (tmp_path / "demo/.part-00009.parquet.tmp-4242").write_bytes(b"left by a killed writer")
    shorter = StageOutput(tmp_path, "demo", "in", "cfg")
    with shorter:
        shorter.prepare()
        shorter.write_shard("part-00000.parquet", pa.table({"x": [0]}))
        success = shorter.finish({})
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == [".lock", "_SUCCESS.json", "part-00000.parquet"]
    assert success["rows"] == 1


def test_own_failures_ignore_rows_failed_upstream():
    t = pa.table({"generate_error": [None, "x", None], "mine_error": ["a", "no instruction: x", None]})
    assert own_failures(t, "mine_error") == 1
    assert own_failures(t, "generate_error") == 1  # columns after it belong to later stages
    assert own_failures(t, None) == 0
