"""A stage whose shards were deleted after it finished is not "done" (issue #30, point 8).

`status` says it is damaged and how to recover; a plain rerun redoes the missing shards (keeping the
others) instead of skipping the stage as finished. Before: `status` stopped with "no 'part' shards",
or said "done" for verify with its accepted/ shard gone, and every rerun skipped the stage.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLE, run_infir

RUN = Path("runs/sample")


def _build(until: str) -> None:
    code, out, err = run_infir("build", "--set", f'source.path="{SAMPLE}"', "--until", until)
    assert code == 0, (out + err)[-2000:]


def _status() -> str:
    code, out, err = run_infir("status", str(RUN), env={"COLUMNS": "200"})
    assert code == 0 and "Traceback" not in out + err and "error" not in err, (out + err)[-2000:]
    return out


def _state_of(stage: str) -> str:
    from pipeline.status import stage_states

    return next(s["state"] for s in stage_states(RUN) if s["stage"] == stage)


@pytest.mark.parametrize("until, shard", [("mine", "generate/part-00000.parquet"),
                                          ("verify", "verify/accepted/part-00000.parquet")])
def test_deleted_shard_is_damaged_and_a_rerun_redoes_it(until, shard):
    _build(until)
    stage = shard.split("/", 1)[0]
    recorded = {s["name"]: s["sha256"] for s in json.loads((RUN / stage / "_SUCCESS.json").read_text())["shards"]}
    (RUN / shard).unlink()

    damaged = "damaged: 1 shard(s) missing; rerun to redo it"
    assert _state_of(stage) == damaged and damaged in _status()

    _build(until)  # no --force: the damaged stage is redone, the stages before it are skipped
    after = json.loads((RUN / stage / "_SUCCESS.json").read_text())
    assert (RUN / shard).is_file()
    assert {s["name"]: s["sha256"] for s in after["shards"]} == recorded  # the same bytes, offline
    assert "damaged" not in _status() and _state_of(stage) == "done"
