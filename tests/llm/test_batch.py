"""Batch API mode (pipeline/llm/batch.py): the real openai SDK against FakeOpenAIServer's Files and
Batches endpoints. Also a subprocess entry point for the kill -9 and Ctrl-C tests:
    python tests/llm/test_batch.py child --base-url URL --cache PATH --prompts-dir DIR --state DIR --n 25
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

import pytest  # noqa: E402

from llm_fixtures import KEY_ENV, api_key, item_of, make_tasks, settings_for, write_prompt  # noqa: E402,F401
from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.errors import InfirError  # noqa: E402
from pipeline.llm import LLMSettings, build_body, cache_key, load_prompt, make_client, parse_response  # noqa: E402
from pipeline.llm.openai_api.batch import NOT_ANSWERED, BatchRunner  # noqa: E402
from pipeline.llm.openai_api.parse import repair_body  # noqa: E402
from pipeline.llm.types import BATCH_FIELD  # noqa: E402

POLL = 0.02


def runner_for(client, tmp_path, **kw) -> BatchRunner:
    return BatchRunner(client, tmp_path / "state", poll_interval_s=kw.pop("poll_interval_s", POLL), **kw)


def keys_of(lines) -> list[str]:
    return [line["custom_id"] for line in lines]


def key_of_item(tasks, i: int) -> str:
    return cache_key(build_body(tasks[i]))


def items_of(lines) -> list[int]:
    return sorted(item_of(line["body"]) for line in lines)


def second_pass(client, runner, tasks):
    client.backend = runner.backend()
    return client.run(tasks)


# -- 1. same answers as online mode, at batch prices, nothing online in the second pass ------------


def test_batch_run_equals_online_run_at_half_price(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 40)
    with FakeOpenAIServer() as srv:
        online = make_client(settings_for(srv, tmp_path / "online"))
        est = online.estimate(tasks)
        online_results = online.run(tasks)
        online_bodies = {cache_key(r.body): r.body for r in srv.chat_requests()}
        assert len(online_bodies) == 40
        srv.reset()

        batch = make_client(settings_for(srv, tmp_path / "batch"))
        runner = runner_for(batch, tmp_path)
        report = runner.prefetch(tasks)
        results = second_pass(batch, runner, tasks)
        assert srv.chat_requests() == []  # neither the prefetch nor the second pass went online

        # The batch lines are the online requests: same bodies, custom_id = the online cache key.
        (lines,) = srv.batch_inputs()
        assert {line["custom_id"]: line["body"] for line in lines} == online_bodies
        assert report.requests == 40 and report.submitted == 40 and report.answered == 40
        assert (report.batches, report.files, report.rounds, report.failed) == (1, 1, 1, 0)

    assert [r.value for r in results] == [r.value for r in online_results]
    assert all(r.ok and r.cached and r.batch and r.http_calls == 0 for r in results)
    assert not any(r.batch for r in online_results)
    assert batch.totals.http_calls == 0 and batch.totals.cache_hits == 40
    # gpt-4o-mini's batch_discount is 0.5: the batch answers (same usage) cost half, in the report
    # and whenever a later run is served them from the cache.
    spent_online = online.totals.cost_usd
    assert spent_online > 0
    assert report.cost_usd == pytest.approx(spent_online / 2)
    assert batch.totals.saved_cost_usd == pytest.approx(spent_online / 2)
    assert est["batch_cost_usd"] == pytest.approx(est["cost_usd"] / 2) and est["cost_usd"] > 0
    assert est["calls"] == 40
    assert batch.estimate(tasks)["calls"] == 0  # cached now

    # The mark is stored with the response; the key never reaches the state directory.
    hit = batch.cache.get(key_of_item(tasks, 0))
    assert hit[BATCH_FIELD].startswith("batch-")
    state_files = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert state_files == [".lock", "state.json"]  # the input JSONL went after its upload
    assert api_key not in (tmp_path / "state" / "state.json").read_text()
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    (sub,) = state["submissions"].values()
    assert sub["done"] and sub["status"] == "completed" and sub["requests"] == 40
    online.close()
    batch.close()


def test_prefetch_sends_only_what_the_cache_lacks(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 12)
    twin = make_tasks(prompt, 1)[0]
    twin.key_id = "twin-of-0"  # an identical request: one line
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        c.run(tasks[:5])  # five answered online first
        srv.reset()
        runner = runner_for(c, tmp_path)
        report = runner.prefetch(tasks + [twin])
        assert report.requests == 12 and report.cached_before == 5 and report.submitted == 7
        assert items_of(srv.batch_inputs()[0]) == list(range(5, 12))
        again = runner.prefetch(tasks)
        assert (again.submitted, again.batches, again.files, again.cached_before) == (0, 0, 0, 12)
        assert srv.file_uploads == 1 and srv.batch_creations == 1
        results = second_pass(c, runner, tasks + [twin])
        assert all(r.ok for r in results) and results[-1].value == results[0].value
        assert [r.batch for r in results[:5]] == [False] * 5 and all(r.batch for r in results[5:12])
        assert srv.chat_requests() == []
    c.close()


# -- 2. kill -9 while a batch is in flight, then rerun: the recorded batches are polled ------------


def _spawn(tmp_path, srv, n, *extra) -> subprocess.Popen:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "child", "--base-url", srv.base_url,
        "--cache", str(tmp_path / "cache" / "llm.sqlite3"), "--prompts-dir", str(tmp_path / "p"),
        "--state", str(tmp_path / "state"), "--n", str(n), "--out", str(tmp_path / "child.json"), *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_polling(srv, proc, batches: int, timeout: float = 180.0) -> None:
    """Until the child has created `batches` batches and polled each of them at least once."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        polled = {p for p in srv.counts if p.startswith("/v1/batches/batch-")}
        if srv.batch_creations >= batches and len(polled) >= batches:
            return
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"child never polled: {proc.communicate()}")


@pytest.mark.slow
def test_kill9_while_in_flight_then_rerun_polls_recorded_batches(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 25)
    with FakeOpenAIServer(hold_batches=True) as srv:
        proc = _spawn(tmp_path, srv, 25, "--max-requests", "10")
        _wait_polling(srv, proc, 3)
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.communicate(timeout=120)
        assert not (tmp_path / "child.json").exists()
        assert (srv.batch_creations, srv.file_uploads) == (3, 3)
        state_path = tmp_path / "state" / "state.json"
        state = json.loads(state_path.read_text())
        assert len(state["submissions"]) == 3 and not any(s["done"] for s in state["submissions"].values())
        # Also the narrowest crash window: batch created, its id not yet recorded. Recovery finds
        # it by its input file id.
        lost = sorted(state["submissions"])[1]
        state["submissions"][lost]["batch_id"] = None
        state["submissions"][lost]["status"] = "uploaded"
        state_path.write_text(json.dumps(state))

        srv.release_batches()
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path)
        report = runner.prefetch(tasks)
        assert (srv.batch_creations, srv.file_uploads) == (3, 3)  # nothing submitted again
        assert (report.batches, report.files, report.submitted, report.resumed) == (0, 0, 0, 3)
        assert report.answered == 25 and report.failed == 0
        results = second_pass(c, runner, tasks)
        assert all(r.ok and r.batch for r in results)
        assert srv.chat_requests() == []
        assert sorted(sum((keys_of(b) for b in srv.batch_inputs()), [])) == sorted(key_of_item(tasks, i) for i in range(25))
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_while_polling_leaves_resumable_state(tmp_path, api_key, cancel):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 8)
    with FakeOpenAIServer(hold_batches=True) as srv:
        proc = _spawn(tmp_path, srv, 8, *(["--cancel-on-interrupt"] if cancel else []))
        _wait_polling(srv, proc, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Traceback" not in err and "rerun" in err
        assert srv.batch_cancels == (1 if cancel else 0)
        state = json.loads((tmp_path / "state" / "state.json").read_text())
        (sub,) = state["submissions"].values()
        assert sub["batch_id"] and not sub["done"]

        srv.release_batches()
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path)
        if cancel:  # the cancelled batch answered nothing: its requests go in a new batch
            report = runner.prefetch(tasks)
            assert report.resumed == 1 and report.failed == 0
            assert srv.batch_creations == 2 and report.submitted == 8
            assert srv.batches[sub["batch_id"]]["status"] == "cancelled"
        else:
            # A call for other requests still collects the interrupted batch's answers (paid for).
            others = make_tasks(prompt, 3, start=100)
            report = runner.prefetch(others)
            assert report.submitted == 3 and report.answered == 8 + 3 and report.resumed == 0
            report = runner.prefetch(tasks)
            assert (report.cached_before, report.submitted, report.answered) == (8, 0, 0)
            assert srv.batch_creations == 2
        assert all(r.ok for r in second_pass(c, runner, tasks))
        c.close()


# -- 3. partial failures and expiry: only what is missing goes in the next round -------------------


@pytest.mark.parametrize("errors_in_output", [False, True])
def test_failed_lines_resubmitted_permanent_errors_not(tmp_path, api_key, errors_in_output):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 20)
    faults = {1: "500", 2: "503", 3: "429", 4: "400"}

    def fault(index, custom_id, body):
        return faults.get(item_of(body)) if index == 0 else None

    with FakeOpenAIServer(batch_fault_fn=fault, batch_errors_in_output=errors_in_output) as srv:
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path)
        report = runner.prefetch(tasks)
        first, second = srv.batch_inputs()
        assert len(first) == 20 and items_of(second) == [1, 2, 3]  # the 400 is not sent again
        assert report.rounds == 2 and report.submitted == 23 and report.answered == 19
        key4 = key_of_item(tasks, 4)
        assert report.failures == {key4: "HTTP 400: Invalid parameter: messages"}
        results = second_pass(c, runner, tasks)
        assert srv.chat_requests() == []
    assert [r.key_id for r in results if not r.ok] == ["4"]
    assert results[4].error == "HTTP 400: Invalid parameter: messages"
    c.close()


def test_expired_batch_only_unanswered_requests_resubmitted(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 20)

    def fault(index, custom_id, body):  # the first batch expires with half of it answered
        return "expire" if index == 0 and item_of(body) >= 10 else None

    with FakeOpenAIServer(batch_fault_fn=fault) as srv:
        c = make_client(settings_for(srv, tmp_path))
        report = runner_for(c, tmp_path).prefetch(tasks)
        first_id = min(srv.batches, key=lambda b: srv.batches[b]["_index"])
        assert srv.batches[first_id]["status"] == "expired"
        first, second = srv.batch_inputs()
        assert items_of(second) == list(range(10, 20))
        assert report.answered == 20 and report.failed == 0 and report.rounds == 2
    c.close()


def test_rounds_are_bounded_and_failures_keep_their_reason(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 6)
    with FakeOpenAIServer(
        batch_fault_fn=lambda index, cid, body: "500" if item_of(body) == 0 else None,
        batch_fail_fn=lambda index: "Enqueued token limit reached for gpt-4o-mini" if index == 0 else None,
    ) as srv:
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, max_rounds=3)
        report = runner.prefetch(tasks)
        inputs = srv.batch_inputs()
        # round 1: the whole batch failed at validation; round 2: all again; round 3: item 0 only
        assert [items_of(b) for b in inputs] == [list(range(6)), list(range(6)), [0]]
        assert report.rounds == 3 and report.failed == 1
        results = second_pass(c, runner, tasks)
    assert [r.ok for r in results] == [False] + [True] * 5
    assert results[0].error == "not answered after 3 batch round(s): HTTP 500: The server had an error"
    assert srv.chat_requests() == []
    c.close()


def test_failed_batch_reason_reaches_the_task(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 3)
    with FakeOpenAIServer(batch_fail_fn=lambda index: "Enqueued token limit reached") as srv:
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, max_rounds=1)
        runner.prefetch(tasks)
        results = second_pass(c, runner, tasks)
    assert not any(r.ok for r in results)
    assert results[0].error.startswith(f"not answered after 1 batch round(s): {NOT_ANSWERED} (batch batch-")
    assert "ended failed: batch_failed: Enqueued token limit reached" in results[0].error
    c.close()


# -- 4. splitting into files within the limits ------------------------------------------------------


@pytest.mark.parametrize("limit", ["requests", "bytes"])
def test_requests_split_into_files_within_limits(tmp_path, api_key, limit):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 25) + make_tasks(prompt, 5, model="gpt-4.1-mini", start=100)
    line_sizes = [
        len(json.dumps({"custom_id": cache_key(build_body(t)), "method": "POST", "url": "/v1/chat/completions",
                        "body": build_body(t)}, ensure_ascii=False, separators=(",", ":")).encode()) + 1
        for t in tasks
    ]
    max_req, max_bytes = (10, 10_000_000) if limit == "requests" else (50_000, int(max(line_sizes) * 4.5))
    # The server enforces the same limits: an over-limit file would fail or be refused.
    with FakeOpenAIServer(batch_max_requests=max_req, batch_max_bytes=max_bytes) as srv:
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, max_requests_per_file=max_req, max_bytes_per_file=max_bytes)
        report = runner.prefetch(tasks)
        uploads = [f for f in srv.files.values() if f["purpose"] == "batch"]
        inputs = srv.batch_inputs()
        assert report.failed == 0 and report.answered == 30
        assert all(b["status"] == "completed" for b in srv.batches.values())
        results = second_pass(c, runner, tasks)
    for f in uploads:
        assert f["bytes"] <= max_bytes and len(f["_content"].splitlines()) <= max_req
    for lines in inputs:
        assert len({line["body"]["model"] for line in lines}) == 1  # one model per file
    if limit == "requests":
        assert sorted(len(x) for x in inputs) == [5, 5, 10, 10]
    else:
        assert len(inputs) >= 8 and max(len(x) for x in inputs) == 4
    assert sorted(sum((keys_of(x) for x in inputs), [])) == sorted(cache_key(build_body(t)) for t in tasks)
    assert report.files == report.batches == len(inputs)
    assert all(r.ok for r in results)
    c.close()


def test_request_over_the_byte_limit_fails_alone(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 4)
    tasks[2].variables["passage"] = "x" * 5000
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, max_bytes_per_file=4000)
        report = runner.prefetch(tasks)
        assert items_of(srv.batch_inputs()[0]) == [0, 1, 3]
        results = second_pass(c, runner, tasks)
    assert report.failed == 1 and [r.ok for r in results] == [True, True, False, True]
    assert "exceeds the batch file limit of 4000 bytes" in results[2].error
    c.close()


# -- 5. an invalid batch answer gets its repair request in the next round ---------------------------


def test_schema_violation_repaired_in_a_second_round(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 6)

    def first_answer_bad(body) -> bool:  # item 2's first request (not its repair)
        return item_of(body) == 2 and len(body["messages"]) == 2

    with FakeOpenAIServer(fault_fn=lambda n, body: "schema" if first_answer_bad(body) else None,
                          batch_fault_fn=lambda i, cid, body: "schema" if first_answer_bad(body) else None) as srv:
        online = make_client(settings_for(srv, tmp_path / "online"))
        online_results = online.run(tasks)
        srv.reset()
        c = make_client(settings_for(srv, tmp_path / "batch"))
        runner = runner_for(c, tmp_path)
        report = runner.prefetch(tasks)
        first, second = srv.batch_inputs()
        results = second_pass(c, runner, tasks)
        assert srv.chat_requests() == []
    assert len(first) == 6 and len(second) == 1
    body2 = build_body(tasks[2])
    bad = c.cache.get(cache_key(body2))
    expected = repair_body(body2, parse_response(bad, tasks[2].output_model), tasks[2].output_model)
    assert second[0]["body"] == expected and second[0]["custom_id"] == cache_key(expected)
    assert report.rounds == 2 and report.requests == 7 and report.answered == 7
    assert results[2].ok and results[2].repaired and results[2].batch
    assert [r.value for r in results] == [r.value for r in online_results]
    assert online_results[2].repaired
    online.close()
    c.close()


def test_no_repair_round_when_repair_is_off(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 3)
    with FakeOpenAIServer(batch_fault_fn=lambda i, cid, body: "schema" if item_of(body) == 1 else None) as srv:
        c = make_client(settings_for(srv, tmp_path, repair=False))
        runner = runner_for(c, tmp_path)
        report = runner.prefetch(tasks)
        results = second_pass(c, runner, tasks)
    assert len(srv.batch_inputs()) == 1 and report.rounds == 1
    assert [r.ok for r in results] == [True, False, True] and results[1].error.startswith("schema violation")
    c.close()


# -- guards -----------------------------------------------------------------------------------------


def test_budget_refuses_a_round_over_max_cost(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path, max_cost_usd=1e-7))
        with pytest.raises(InfirError, match="would exceed llm.max_cost_usd"):
            runner_for(c, tmp_path).prefetch(make_tasks(prompt, 5))
        assert srv.file_uploads == 0 and srv.batch_creations == 0
    c.close()


def test_needs_a_cache_and_one_process_per_state_dir(tmp_path, api_key):
    with FakeOpenAIServer() as srv:
        with pytest.raises(InfirError, match="needs the LLM cache"):
            BatchRunner(make_client(settings_for(srv, tmp_path), cache=False), tmp_path / "s")
        c = make_client(settings_for(srv, tmp_path))
        (tmp_path / "state").mkdir()
        import fcntl

        with open(tmp_path / "state" / ".lock", "a+") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            with pytest.raises(InfirError, match="in use by another process"):
                runner_for(c, tmp_path).prefetch(make_tasks(write_prompt(tmp_path / "p"), 1))
        c.close()


def test_api_errors_become_infir_errors_without_the_key(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer() as srv:
        def refuse(server, rec):  # a 401 that echoes the key, as careless servers do
            return server.answer({}, rec.n, "401", rec.headers)

        refuse.accepts_raw = True
        srv.routes[("POST", "/v1/files")] = refuse
        c = make_client(settings_for(srv, tmp_path))
        with pytest.raises(InfirError) as e:
            runner_for(c, tmp_path).prefetch(make_tasks(prompt, 2))
    assert "HTTP 401" in str(e.value) and api_key not in str(e.value)
    c.close()


def test_server_validates_batch_input(tmp_path):
    from openai import OpenAI

    def line(cid, model):
        return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": cid}]}}

    with FakeOpenAIServer(batch_polls=1, batch_max_requests=2, batch_max_bytes=1000) as srv:
        api = OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)

        def run(lines):
            data = "".join(json.dumps(x) + "\n" for x in lines).encode()
            f = api.files.create(file=("in.jsonl", data), purpose="batch")
            b = api.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
            assert b.status == "validating"
            return api.batches.retrieve(b.id)

        mixed = run([line("a", "gpt-4o-mini"), line("b", "gpt-4o")])
        assert mixed.status == "failed" and mixed.errors.data[0].code == "mismatched_model"
        assert run([line(c, "m") for c in "abc"]).errors.data[0].code == "too_many_requests"
        assert run([line("a", "m"), line("a", "m")]).errors.data[0].code == "duplicate_custom_id"
        ok = run([line("a", "m"), line("b", "m")])
        assert ok.status == "completed" and ok.request_counts.completed == 2
        out = [json.loads(x) for x in api.files.content(ok.output_file_id).text.splitlines()]
        assert [o["custom_id"] for o in out] == ["a", "b"] and out[0]["response"]["status_code"] == 200
        with pytest.raises(Exception, match="too large"):
            api.files.create(file=("big.jsonl", b"x" * 2000), purpose="batch")
        assert srv.file_uploads == 4 and srv.batch_creations == 4


# -- subprocess entry point ---------------------------------------------------------------------------


def _child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    for name in ("--base-url", "--cache", "--prompts-dir", "--state", "--out"):
        ap.add_argument(name, required=True)
    ap.add_argument("--n", type=int, default=25)
    ap.add_argument("--max-requests", type=int, default=50_000)
    ap.add_argument("--cancel-on-interrupt", action="store_true")
    a = ap.parse_args(argv)
    settings = LLMSettings(backend="openai", base_url=a.base_url, api_key_env=KEY_ENV, cache_path=Path(a.cache),
                           backoff_base_s=0.01, backoff_max_s=0.1)
    client = make_client(settings)
    runner = BatchRunner(client, Path(a.state), poll_interval_s=POLL, max_requests_per_file=a.max_requests,
                         cancel_on_interrupt=a.cancel_on_interrupt)
    try:
        report = runner.prefetch(make_tasks(load_prompt("judge", Path(a.prompts_dir)), a.n))
    except KeyboardInterrupt:
        sys.exit(130)
    Path(a.out).write_text(json.dumps(report.as_dict()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        # A job started in the background by a non-interactive shell inherits SIGINT ignored, and
        # Python then keeps it ignored: restore Ctrl-C so the test's SIGINT reaches the child.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _child(sys.argv[2:])
    else:
        raise SystemExit("usage: tests/llm/test_batch.py child ...")
