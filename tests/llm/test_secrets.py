"""The API key never lands in a file: cache, logs, results written by the stage callback."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from llm_fixtures import api_key, make_tasks, settings_for, write_prompt  # noqa: E402,F401
from openai_server import FakeOpenAIServer  # noqa: E402
from pipeline.llm import make_client  # noqa: E402


def test_api_key_in_no_written_file(tmp_path, api_key):
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("", "pipeline", "openai", "httpx2", "httpcore2")]
    saved = [(lg, lg.level) for lg in loggers]
    logging.getLogger().addHandler(handler)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    results_file = tmp_path / "results.jsonl"
    prompt = write_prompt(tmp_path / "prompts")
    try:
        with results_file.open("w") as out:

            def write(r):
                out.write(json.dumps({"id": r.key_id, "ok": r.ok, "error": r.error, "raw": r.raw_text,
                                      "value": r.value.model_dump() if r.value else None}) + "\n")

            # A run with retries and repairs, then one against a server that echoes the key
            # back in its 401 error message (a careless proxy).
            with FakeOpenAIServer(fault_rate=0.3, seed=3, retry_after="0", timeout_sleep=1.0) as srv:
                s = settings_for(srv, tmp_path, request_timeout_s=0.3)
                c = make_client(s)
                rs = c.run(make_tasks(prompt, 40), on_result=write)
                c.close()
                assert srv.requests[0].headers["authorization"] == f"Bearer {api_key}"
            with FakeOpenAIServer(fault_rate=1.0, fault_kinds=("401",)) as srv:
                c = make_client(settings_for(srv, tmp_path))
                bad = c.run(make_tasks(prompt, 3, start=100), on_result=write)
                (tmp_path / "totals.json").write_text(json.dumps({"totals": c.totals.as_dict(), "cache": c.cache.stats()}))
                c.close()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        for lg, level in saved:
            lg.setLevel(level)

    assert sum(r.ok for r in rs) >= 35
    assert "Incorrect API key provided" in bad[0].error  # the echo happened and was redacted
    assert log_file.stat().st_size > 0  # DEBUG logging really ran
    cache = tmp_path / "cache" / "llm.sqlite3"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    secret_parts = [api_key.encode(), api_key.removeprefix("sk-test-").encode()]
    scanned = 0
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for part in secret_parts:
                assert part not in data, f"API key found in {path}"
    assert scanned >= 5  # prompt, log, results, totals, cache (+ -wal/-shm)


def test_admin_key_never_sent(tmp_path, api_key, monkeypatch):
    admin = "sk-admin-never-send-this-0123456789"
    monkeypatch.setenv("OPENAI_ADMIN_KEY", admin)
    prompt = write_prompt(tmp_path / "prompts")
    with FakeOpenAIServer() as srv:
        c = make_client(settings_for(srv, tmp_path))
        assert c.run(make_tasks(prompt, 2))[0].ok
        headers = [q.headers for q in srv.requests]
    assert len(headers) == 2
    for h in headers:
        assert h["authorization"] == f"Bearer {api_key}"
        assert not any(admin in v for v in h.values())
