"""Batch mode within the Batch API's enqueued-token limit (pipeline/llm/openai_api/batch_waves.py):
the real openai SDK against FakeOpenAIServer, which refuses a batch that would pass its
`batch_queue_tokens` with `token_limit_exceeded`, as the service does."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from llm_fixtures import api_key, make_tasks, settings_for, write_prompt  # noqa: F401
from openai_server import FakeOpenAIServer
from pipeline.llm import build_body, cache_key, make_client
from pipeline.llm.openai_api.batch import BatchRunner
from pipeline.llm.openai_api.batch_waves import limit_in, line_tokens

POLL = 0.02
MODEL = "gpt-4o-mini"


def server_tokens(srv, tasks) -> int:
    """The tokens the server holds in its queue for these requests (its own counting rule)."""
    return sum(srv.queue_tokens_of(build_body(t)) for t in tasks)


def runner_for(client, tmp_path, **kw) -> BatchRunner:
    return BatchRunner(client, tmp_path / "state", poll_interval_s=kw.pop("poll_interval_s", POLL), **kw)


def answer_all(client, runner, tasks):
    client.backend = runner.backend()
    return client.run(tasks)


def assert_each_key_once(srv, tasks) -> None:
    """Every request is in exactly one batch the server accepted (refused batches aside)."""
    accepted = [b for b in srv.batches.values() if not (b.get("errors") or {}).get("data")]
    keys = [line["custom_id"] for b in accepted for line in b["_lines"]]
    assert sorted(keys) == sorted(cache_key(build_body(t)) for t in tasks)


def test_waves_keep_the_queue_within_the_limit(tmp_path, api_key, capsys):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 100)
    # The service counts as we estimate here: the waves' planning is under test, not the estimate
    # (the server's own count is higher than chars/4 for these prompts; a service counting more
    # than the estimate: test_a_service_counting_more_than_the_estimate_gets_halved_files).
    with FakeOpenAIServer(usage=lambda body: (line_tokens(body), 10)) as srv:
        limit = server_tokens(srv, tasks) // 10
        srv.batch_queue_tokens = {MODEL: limit}
        c = make_client(settings_for(srv, tmp_path))
        report = runner_for(c, tmp_path, queue_tokens={MODEL: limit}).prefetch(tasks)
        results = answer_all(c, runner_for(c, tmp_path), tasks)
        assert srv.chat_requests() == []
        inputs = srv.batch_inputs()
    assert all(r.ok and r.batch for r in results)
    assert (report.answered, report.failed, report.rounds, report.queue_full) == (100, 0, 1, 0)
    assert srv.token_limit_failures == 0
    # The server never held more than the limit, and the waves used most of it.
    assert limit // 2 < srv.batch_queue_peak[MODEL] <= limit
    # One file per wave (two never fit together), as many as the estimated tokens need.
    est = [line_tokens(build_body(t)) for t in tasks]
    low = math.ceil(sum(est) / limit)
    assert report.waves == len(inputs) == report.batches
    assert low <= report.waves <= sum(est) / (limit - max(est)) + 1 and report.waves >= 10
    assert_each_key_once(srv, tasks)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    subs = sorted(state["submissions"].values(), key=lambda s: s["wave"])
    assert [s["wave"] for s in subs] == list(range(1, report.waves + 1))
    assert all(s["tokens"] <= limit and s["done"] for s in subs)
    err = capsys.readouterr().err
    assert f"batch waves {report.waves}/{report.waves} done" in err
    assert err.count("batch waves ") == report.waves  # one plain line per wave
    c.close()


@pytest.mark.parametrize("per_file", [10, 50_000])
def test_token_limit_refusals_are_waited_out_not_counted_as_rounds(tmp_path, api_key, per_file):
    """No bound in the settings: the server refuses what does not fit (several files at once, or
    one file alone over the limit); the refused batches go again as the queue drains, within the
    first round, and every request is answered."""
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 100)
    with FakeOpenAIServer() as srv:
        limit = server_tokens(srv, tasks[:25])
        srv.batch_queue_tokens = limit
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, max_requests_per_file=per_file)
        report = runner.prefetch(tasks)
        results = answer_all(c, runner, tasks)
        assert srv.chat_requests() == []
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:1]
    assert (report.answered, report.failed, report.rounds) == (100, 0, 1)
    assert report.queue_full == srv.token_limit_failures >= 1
    assert srv.batch_queue_peak[MODEL] <= limit
    assert_each_key_once(srv, tasks)
    # The limit the service named is kept for the next run.
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["queue_limits"] == {MODEL: limit}
    assert sum(1 for s in state["submissions"].values() if s.get("refused") == "token_limit_exceeded") == report.queue_full
    c.close()


@pytest.mark.parametrize("bounded", [True, False])
def test_a_queue_another_process_holds_is_waited_for(tmp_path, api_key, capsys, bounded):
    """Unbounded, three files go at once and are all refused; the first while the others are still
    validating: the wait for those must end when they are refused too."""
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 30)
    with FakeOpenAIServer(batch_validating_polls=lambda index: 1 if index == 0 else 3) as srv:
        limit = server_tokens(srv, tasks) // 2
        srv.batch_queue_tokens = limit
        srv.batch_queue_external[MODEL] = limit  # full: nothing of ours is in it
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, queue_tokens=limit if bounded else None,
                            max_requests_per_file=50_000 if bounded else 10)
        box = {}
        th = threading.Thread(target=lambda: box.setdefault("r", runner.prefetch(tasks)), daemon=True)
        th.start()
        end = time.monotonic() + 60
        while srv.token_limit_failures < 3 and time.monotonic() < end:
            time.sleep(0.01)
        srv.batch_queue_external[MODEL] = 0  # the other process's batches complete
        th.join(60)
        report = box["r"]
        results = answer_all(c, runner, tasks)
    assert all(r.ok for r in results)
    assert (report.answered, report.failed, report.rounds) == (30, 0, 1)
    assert report.queue_full == srv.token_limit_failures >= 3
    assert_each_key_once(srv, tasks)
    assert "none of ours queued (another process holds the queue?)" in capsys.readouterr().err
    c.close()


def test_a_queue_that_stays_full_fails_its_requests_after_the_wait(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 4)
    with FakeOpenAIServer(batch_queue_tokens=10_000) as srv:
        srv.batch_queue_external[MODEL] = 10_000
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, queue_wait_max_s=0.5)
        report = runner.prefetch(tasks)
        results = answer_all(c, runner, tasks)
    assert report.rounds == 1 and report.failed == 4 and report.answered == 0
    assert not any(r.ok for r in results)
    assert "token_limit_exceeded: Enqueued token limit reached for gpt-4o-mini" in results[0].error
    assert "rerun later" in results[0].error
    c.close()


def test_a_service_counting_more_than_the_estimate_gets_halved_files(tmp_path, api_key):
    """The bound in the settings fits our estimate, but the service counts twice as many tokens:
    with none of ours queued, the refused file goes again, then in halves."""
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 40)

    def usage(body):  # twice our chars/4 estimate
        return (2 * line_tokens(body), 10)

    with FakeOpenAIServer(usage=usage) as srv:
        limit = server_tokens(srv, tasks) // 4
        srv.batch_queue_tokens = limit
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, queue_tokens=limit, queue_wait_max_s=20)  # bounded if halving broke
        report = runner.prefetch(tasks)
        results = answer_all(c, runner, tasks)
    assert all(r.ok for r in results)
    assert report.rounds == 1 and report.failed == 0 and report.queue_full >= 2
    assert srv.batch_queue_peak[MODEL] <= limit
    assert_each_key_once(srv, tasks)
    c.close()


def test_a_request_over_the_bound_fails_alone(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    tasks = make_tasks(prompt, 3)
    tasks[1].variables["passage"] = "word " * 400
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, queue_tokens={MODEL: 200})
        report = runner.prefetch(tasks)
        results = answer_all(c, runner, tasks)
    assert [r.ok for r in results] == [True, False, True] and report.failed == 1
    assert "exceeds the Batch API's enqueued-token limit of 200 for gpt-4o-mini (llm.batch_queue_tokens)" in results[1].error
    c.close()


def test_limit_in_reads_the_services_message():
    msg = ("Enqueued token limit reached for gpt-4o-mini in organization org-x. Limit: 2,000,000 enqueued tokens. "
           "Please try again once some in_progress batches have been completed.")
    assert limit_in(msg) == 2_000_000
    assert limit_in("Enqueued token limit reached") is None


def test_setting_takes_an_int_or_a_table_per_model():
    from pipeline.errors import InfirError
    from conftest import make_config

    assert make_config(**{"llm.batch_queue_tokens": 2_000_000}).llm.batch_queue_tokens == 2_000_000
    table = make_config(**{"llm.batch_queue_tokens": {"gpt-4o-mini": 2_000_000, "o3-mini": 90_000}})
    assert table.llm.batch_queue_tokens == {"gpt-4o-mini": 2_000_000, "o3-mini": 90_000}
    assert make_config().llm.batch_queue_tokens is None
    for bad in (0, True, {"gpt-4o-mini": -1}, "many"):
        with pytest.raises((InfirError, ValueError)):
            make_config(**{"llm.batch_queue_tokens": bad})


@pytest.mark.slow
def test_unfinished_batches_of_a_killed_run_count_against_the_bound(tmp_path, api_key):
    """A run killed with SIGKILL left a batch in the queue: the next call (other requests) counts
    its tokens, so it submits nothing the queue would refuse, and goes once that batch completes."""
    from test_batch import _spawn, _wait_polling

    prompt = write_prompt(tmp_path / "p")
    later = make_tasks(prompt, 20, start=100)
    with FakeOpenAIServer(hold_batches=True) as srv:
        proc = _spawn(tmp_path, srv, 20)
        _wait_polling(srv, proc, 1)
        proc.kill()
        proc.communicate(timeout=120)
        held = srv.enqueued_tokens(MODEL)  # the killed run's batch, validated and running
        limit = held + server_tokens(srv, later) // 2
        srv.batch_queue_tokens = limit
        c = make_client(settings_for(srv, tmp_path))
        runner = runner_for(c, tmp_path, queue_tokens=limit)
        box = {}
        th = threading.Thread(target=lambda: box.setdefault("r", runner.prefetch(later)), daemon=True)
        th.start()
        time.sleep(0.5)
        assert srv.batch_creations == 1  # its first file does not fit beside the killed run's batch
        srv.release_batches()
        th.join(60)
        report = box["r"]
        results = answer_all(c, runner, later)
    assert all(r.ok for r in results) and report.failed == 0 and report.rounds == 1
    assert srv.token_limit_failures == 0 and srv.batch_queue_peak[MODEL] <= limit
    c.close()
