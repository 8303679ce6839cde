"""`infir status` on a real build that finished with failed rows: every stage's rows in, rows out,
failed (in this stage: what a rerun retries), failed upstream and rejected, as the status table
prints them, equal the counts read from the stages' shards; in = out + failed + failed upstream +
rejected for every row stage.

The rows fail for real: the local OpenAI-compatible server answers a seeded share of the queries'
requests with a non-retryable 400 (generate, verify) or with 500s until the client gives up (mine),
and its poisoning answers make a few rows fail a deterministic filter."""

from __future__ import annotations

import hashlib
import json
import re

from conftest import REPO, SAMPLE, run_infir
from openai_server import FakeOpenAIServer, data_block
from pipeline.columns import REJECTIONS
from pipeline.declaration import PIPELINE
from pipeline.runner.shape import RowStage
from pipeline.store import read_stage_table
from test_llm_stages import responder as stage_responder

KEY = "sk-test-status-failed"
QUERIES = 30


def draw(body: dict) -> int:
    """The query's seeded draw (0-99): the same for every attempt at a row, so a row fails for good."""
    name = body["response_format"]["json_schema"]["name"]
    q = data_block(body["messages"][1]["content"], "Q+" if name.startswith(("Judge", "FirstJudge")) else "query")
    return int.from_bytes(hashlib.sha256(f"status-seed\x1f{q}".encode()).digest()[:4], "big") % 100


FAULTS = {"GeneratedInstruction": (range(0, 15), "400"), "PoisonedPair": (range(15, 30), "500"),
          "JudgeVerdicts": (range(30, 45), "400")}


def fault(n: int, body: dict) -> str | None:
    share, kind = FAULTS.get(body["response_format"]["json_schema"]["name"], (range(0), None))
    return kind if draw(body) in share else None


def respond(body: dict):
    answer = stage_responder(body)
    if body["response_format"]["json_schema"]["name"] == "PoisonedPair" and draw(body) >= 85:
        poisoned = json.loads(answer)  # HN1 far longer than P+: the length-ratio filter rejects the row
        poisoned["hard_negative_document_1"] = " ".join([poisoned["hard_negative_document_1"]] * 60)
        return json.dumps(poisoned)
    return answer


def from_shards(run) -> dict[str, dict]:
    """Per row stage, the counts its shards hold: a row failed in a stage when that stage's error
    column is set and no earlier stage's is (then it failed upstream)."""
    out, rows_in, errors = {}, None, []
    for st in PIPELINE.until("verify"):
        rows = read_stage_table(run / st.name).to_pylist()
        if not isinstance(st, RowStage):  # the source: rows, no failures
            rows_in = len(rows)
            continue
        upstream = [r for r in rows if any(r.get(c) for c in errors)]
        own = st.error_column
        failed = [r for r in rows if own and r.get(own) and r not in upstream]
        ok = [r for r in rows if r not in upstream and r not in failed]
        if "accepted" in st.adds:  # the judge: out = accepted
            out_rows = [r for r in ok if r["accepted"]]
        else:  # the filters reject by name; other stages pass every row they did not fail
            out_rows = [r for r in ok if not (r.get(REJECTIONS) or [])]
        rejects = "accepted" in st.adds or REJECTIONS in st.adds
        out[st.name] = {"in": rows_in, "out": len(out_rows), "failed": len(failed) if own else None,
                        "failed upstream": len(upstream), "rejected": len(ok) - len(out_rows) if rejects else None}
        rows_in = len(rows)
        errors += [own] if own else []
    return out


def status_table(text: str) -> dict[str, dict]:
    """The status table's stage rows, by column (rich draws it with box characters)."""
    header = ["stage", "state", "in", "out", "failed", "failed upstream", "rejected"]
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] in PIPELINE.names:
            row = dict(zip(header, cells))
            table[row["stage"]] = {k: (int(v.replace(",", "")) if v else None) if k not in ("stage", "state") else v
                                   for k, v in row.items()}
    return table


def test_status_counts_rows_of_a_build_with_failed_rows_as_its_shards_hold_them(tmp_path):
    with FakeOpenAIServer(responder=respond, fault_fn=fault) as server:
        rc, _, err = run_infir(
            "build", "--config", str(REPO / "configs/sample.toml"), "--set", f'source.path="{SAMPLE}"',
            "--backend", "openai", "--set", f'llm.base_url="{server.base_url}"', "--set", f"source.sample_queries={QUERIES}",
            "--set", "llm.backoff_base_s=0.01", "--until", "verify", env={"OPENAI_API_KEY": KEY})
    assert rc == 3, err[-2000:]
    run = tmp_path / "runs/sample"
    expected = from_shards(run)
    # The injected faults reached every LLM stage, and the filter rejected some rows.
    assert all(expected[s]["failed"] for s in ("generate", "mine", "verify")), expected
    assert expected["filter"]["rejected"] and expected["verify"]["failed upstream"], expected
    where = ", ".join(f"{s} {expected[s]['failed']}" for s in ("generate", "mine", "verify"))
    assert f"({where})" in err, err[-1000:]

    rc, out, err = run_infir("status", str(run))
    assert rc == 0, err
    shown = status_table(out)
    for stage, counts in expected.items():
        row = shown[stage]
        assert {k: row[k] for k in counts} == counts, (stage, out)
        assert counts["in"] == counts["out"] + (counts["failed"] or 0) + counts["failed upstream"] + (counts["rejected"] or 0)
        if counts["failed"]:
            assert row["state"] == f"done, {counts['failed']} failed (rerun retries them)", (stage, out)
    verify = expected["verify"]
    assert re.search(rf"accepted {verify['out']} of {verify['in']} candidates \(rejected {verify['rejected']}, "
                     rf"failed {verify['failed']}, failed upstream {verify['failed upstream']}\)", out), out
