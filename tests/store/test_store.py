import multiprocessing as mp
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import InfirError
from pipeline.store import StageOutput, content_id, write_parquet_atomic
from pipeline.store.lock import StageLock

T = pa.table({"x": [1, 2, 3]})


def test_content_id_is_stable_and_content_derived():
    assert content_id("a", "b") == content_id("a", "b")
    assert content_id("a", "b") != content_id("ab", "")
    assert len(content_id("x")) == 16


def test_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    target = tmp_path / "part-00000.parquet"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(InfirError, match="No space left on device"):
        write_parquet_atomic(T, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def _stage(tmp_path, fp="in1", cfg="c1", force=False):
    return StageOutput(tmp_path / "run", "demo", fp, cfg, {"p": "abc"}, force=force)


def test_finished_stage_is_skipped_and_changed_identity_refused(tmp_path):
    with _stage(tmp_path) as out:
        assert out.completed() is None
        out.prepare()
        out.write_shard("part-00000.parquet", T)
        out.finish({"n": 3})
    with _stage(tmp_path) as out:
        assert out.completed()["rows"] == 3
    with _stage(tmp_path, cfg="c2") as out:
        with pytest.raises(InfirError, match="other config"):
            out.completed()
    with _stage(tmp_path, fp="in2") as out:
        with pytest.raises(InfirError, match="other inputs"):
            out.completed()
    with _stage(tmp_path, cfg="c2", force=True) as out:
        assert out.completed() is None
        out.prepare()
        assert not out.has_shard("part-00000.parquet")  # --force discards the old output


def test_interrupted_attempt_resumes_only_with_same_identity(tmp_path):
    with _stage(tmp_path) as out:
        out.prepare()
        out.write_shard("part-00000.parquet", T)
        # no finish(): the process died here
    with _stage(tmp_path) as out:
        assert out.completed() is None
        out.prepare()
        assert out.has_shard("part-00000.parquet")
        assert out.adopt_shard("part-00000.parquet").num_rows == 3
    with _stage(tmp_path, cfg="other") as out:
        with pytest.raises(InfirError, match="interrupted attempt used other config"):
            out.prepare()


def _hold_lock(path, ready, release):
    with StageLock(path):
        ready.set()
        release.wait(10)


def test_two_processes_cannot_write_one_stage(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path / "stage", ready, release))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(InfirError, match="being written by pid"):
            with StageLock(tmp_path / "stage"):
                pass
    finally:
        release.set()
        p.join(10)
    with StageLock(tmp_path / "stage"):  # free again once the holder is gone
        pass
