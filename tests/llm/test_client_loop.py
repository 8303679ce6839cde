"""The client's own event loop (`LLMClient.start_loop`): the runner keeps two chunks of a stage in flight
on it. Closing the client (Ctrl-C) must answer whoever still waits on a run, never leave it waiting: a
chunk's thread blocked for ever kept the interrupted process from exiting."""

from __future__ import annotations

import concurrent.futures
import threading
import time

from llm_fixtures import api_key, make_tasks, settings_for, write_prompt  # noqa: F401
from openai_server import FakeOpenAIServer
from pipeline.llm import make_client


def test_runs_from_two_threads_share_one_concurrency_bound(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(latency=0.2) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=3))
        c.start_loop()
        try:
            runs = [threading.Thread(target=c.run, args=(make_tasks(prompt, 6, start=6 * i),)) for i in range(2)]
            for t in runs:
                t.start()
            for t in runs:
                t.join(timeout=60)
        finally:
            c.close()
        reqs = srv.chat_requests()
    assert len(reqs) == 12
    # At no moment more than `concurrency` requests at the server, across both threads' runs.
    events = sorted([(r.arrived, 1) for r in reqs] + [(r.finished, -1) for r in reqs])
    level, peak = 0, 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak <= 3, peak


def test_closing_the_client_answers_a_run_still_waiting(tmp_path, api_key):
    prompt = write_prompt(tmp_path / "p")
    with FakeOpenAIServer(latency=30) as srv:
        c = make_client(settings_for(srv, tmp_path, concurrency=2, request_timeout_s=60))
        c.start_loop()
        box: dict = {}

        def run() -> None:
            try:
                box["r"] = c.run(make_tasks(prompt, 2))
            except BaseException as e:  # noqa: BLE001 - what the waiting thread gets is the subject
                box["e"] = e

        th = threading.Thread(target=run, daemon=True)
        th.start()
        deadline = time.monotonic() + 30
        while srv.count < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        c.close()  # what the runner does after Ctrl-C (the requests are still running)
        th.join(timeout=20)
    assert not th.is_alive()
    assert isinstance(box.get("e"), concurrent.futures.CancelledError), box
