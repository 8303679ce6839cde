"""Batch API mode of the LLM layer: fill the response cache through OpenAI's Batch API, then let
the stage's normal pass run from the cache (see docs/batch.md).

    runner = BatchRunner(client, state_dir)
    report = runner.prefetch(tasks)      # upload, submit, poll, download -> cache
    client.backend = runner.backend()    # sends nothing: misses fail with the batch's reason
    results = client.run(tasks)          # same cache keys, parser and repair as online mode

- Same requests as online mode: each line's body is `client.build_body(task)` and its custom_id
  is `cache_key(body)`; identical requests become one line. A cached answer that does not parse
  gets its repair request (`repair_body`) in the next round, as the online client would send it.
- Limits of one input file (the Batch API's: 50,000 requests, 200 MB, one model per file): requests
  are split by model, then by count, bytes and the enqueued-token bound. A single request over the
  byte limit or the bound fails.
- Waves (`queue_tokens`, llm.batch_queue_tokens; batch_waves.py): at most the bound's estimated
  prompt tokens of a model are queued at once; a file goes when it fits beside the recorded
  unfinished batches. A batch refused with `token_limit_exceeded` goes again once the queue drains;
  it does not use up a round.
- Rounds: a round submits what is missing (never what a recorded unfinished batch already holds);
  expired, cancelled, failed and retryable per-request errors (408/409/429/5xx) are resubmitted in
  the next round, at most `max_rounds` rounds per call. Other per-request errors (a 400) fail.
- Resumable: every step is recorded in `state_dir/state.json` (written atomically) before the next
  one; a rerun polls the recorded batches instead of submitting their requests again. An input
  file uploaded whose batch id was not recorded (killed in between) is matched against the
  server's batch list by its file id. Ctrl-C while polling leaves the batches running (a rerun
  picks them up) unless `cancel_on_interrupt=True`.
- Pricing: answers are stored with `BATCH_FIELD` = the batch id, so every use of them (this
  call's report, later cache hits) is priced with the model's `batch_discount`.
- State files: `state.json`, `<sid>.keys` (custom_ids of a submission, deleted once its results
  are in the cache); the `<sid>.jsonl` input file lives only until its upload succeeded (it holds
  prompts; the remote copy is what the batch reads). No API key or header is ever written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from pipeline.errors import InfirError
from pipeline.fileio import write_bytes_atomic
from pipeline.llm.client import LLMClient
from pipeline.llm.openai_api.backend import OpenAIBackend
from pipeline.llm.openai_api.batch_collect import _Collect
from pipeline.llm.openai_api.batch_remote import (  # noqa: F401  (the Batch API's limits, re-exported)
    ENDPOINT,
    MAX_BYTES_PER_FILE,
    MAX_REQUESTS_PER_FILE,
    NOT_ANSWERED,
    BatchReport,
    _Entry,
    _Failure,
    _RemoteCalls,
    as_file,
)
from pipeline.llm.openai_api.batch_state import _StateFile
from pipeline.llm.openai_api.batch_waves import QUEUE_WAIT_MAX_S, _File, _Waves
from pipeline.llm.openai_api.parse import parse_response, repair_body
from pipeline.llm.openai_api.request import build_body, cache_key
from pipeline.llm.tokens import estimate_prompt_tokens, max_output_tokens
from pipeline.llm.types import BackendError, LLMTask

log = logging.getLogger(__name__)


class _CacheOnlyBackend:
    """Serves nothing: after `prefetch`, every answer is in the cache or has failed for a reason."""

    name = "batch"
    can_resend = False  # the client must not ask it again past the cache

    def __init__(self, runner: BatchRunner):
        self._runner = runner

    async def complete(self, body: dict[str, Any], task: LLMTask) -> dict[str, Any]:
        reason = self._runner.failures.get(cache_key(body), NOT_ANSWERED)
        raise BackendError(reason, retryable=False, kind="batch")


class BatchRunner(_StateFile, _Collect, _Waves, _RemoteCalls):
    def __init__(
        self,
        client: LLMClient,
        state_dir: Path,
        *,
        poll_interval_s: float = 30.0,
        max_rounds: int = 3,
        max_requests_per_file: int = MAX_REQUESTS_PER_FILE,
        max_bytes_per_file: int = MAX_BYTES_PER_FILE,
        label: str = "batch",
        cancel_on_interrupt: bool = False,
        queue_tokens: int | dict[str, int] | None = None,
        queue_wait_max_s: float = QUEUE_WAIT_MAX_S,
    ):
        if client.cache is None:
            raise InfirError("batch mode needs the LLM cache (llm.cache_path): the results are delivered through it")
        if not 1 <= max_requests_per_file <= MAX_REQUESTS_PER_FILE:
            raise InfirError(f"max_requests_per_file must be in 1..{MAX_REQUESTS_PER_FILE}")
        if not 1 <= max_bytes_per_file <= MAX_BYTES_PER_FILE:
            raise InfirError(f"max_bytes_per_file must be in 1..{MAX_BYTES_PER_FILE}")
        if max_rounds < 1:
            raise InfirError("max_rounds must be at least 1")
        self.client = client
        self.cache = client.cache
        self.state_dir = Path(state_dir)
        self.poll_interval_s = poll_interval_s
        self.max_rounds = max_rounds
        self.max_requests_per_file = max_requests_per_file
        self.max_bytes_per_file = max_bytes_per_file
        self.label = label
        self.cancel_on_interrupt = cancel_on_interrupt
        self.queue_tokens = queue_tokens  # llm.batch_queue_tokens: an int for every model, or {model: int}
        self.queue_wait_max_s = queue_wait_max_s
        self.failures: dict[str, str] = {}  # of the last prefetch: cache key -> reason
        self._rng = random.Random()
        self._api: OpenAIBackend | None = None
        self._sdk: Any = None
        self._state: dict[str, Any] = {}
        self._keys: dict[str, list[str]] = {}  # sid -> custom_ids (from <sid>.keys)
        # key -> (body, task) of the requests of this call (first requests and repairs): prices an
        # answer that comes without usage at the request's estimate, as online mode does.
        self._requests: dict[str, tuple[dict[str, Any], LLMTask]] = {}

    # -- public API --------------------------------------------------------------------------
    def prefetch(self, tasks: Iterable[LLMTask]) -> BatchReport:
        """Make sure every task's request (and, where its cached answer does not parse, its repair
        request) is in the cache, through Batch API rounds. Cached requests are not sent."""
        task_list = list(tasks)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["r"] = asyncio.run(self._prefetch(task_list))
            except BaseException as e:  # re-raised in the caller's thread
                box["e"] = e

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._prefetch(task_list))
        th = threading.Thread(target=target, name="llm-batch-prefetch")  # called from a running loop
        th.start()
        th.join()
        if "e" in box:
            raise box["e"]
        return box["r"]

    def backend(self) -> _CacheOnlyBackend:
        """A Backend for LLMClient that sends nothing: a request not in the cache fails, not
        retried, with the reason the batch gave (or NOT_ANSWERED)."""
        return _CacheOnlyBackend(self)

    # -- the rounds ----------------------------------------------------------------------------
    async def _prefetch(self, tasks: list[LLMTask]) -> BatchReport:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = self._lock()
        report = BatchReport()
        failures: dict[str, _Failure] = {}
        self._meta, self._sid_file = {}, {}  # key -> (tokens, line bytes); sid -> its planned _File
        self._halved = {}  # model -> the smaller file bound after refusals with none of ours queued
        self._wave_seq = self._waves_total = self._waves_done = 0
        # wave -> its files not ended / ended / [model, requests, tokens] (docs/batch.md, "Waves")
        self._wave_open, self._wave_ended, self._wave_size = {}, {}, {}
        try:
            self._state = self._load()
            plan = self._plan(tasks)
            seen: set[str] = set()
            resolved: set[str] = set()
            await self._recover()
            # Batches of earlier calls that hold none of these requests: collect what has finished
            # (it is paid for), leave the rest running for the call that needs them.
            others = [sid for sid in self._unfinished() if not set(self._sub_keys(sid)) & plan.keys()]
            if others:
                await self._wait(others, report, failures, once=True)
            while True:
                wanted = self._wanted(plan, seen, resolved, report)
                inflight = {sid: set(self._sub_keys(sid)) for sid in self._unfinished()}
                busy = set().union(*inflight.values()) if inflight else set()
                relevant = [sid for sid, keys in inflight.items() if keys & wanted.keys()]
                todo = {
                    k: b for k, b in wanted.items()
                    if k not in busy and not (k in failures and not failures[k].retryable)
                }
                queues = {}
                if todo and report.rounds < self.max_rounds:
                    report.rounds += 1
                    self._check_budget(todo, report)
                    queues = self._plan_waves(todo, failures)
                elif todo:
                    for k in todo:
                        prior = failures.get(k)
                        why = f": {prior.reason}" if prior else ""
                        failures[k] = _Failure(f"not answered after {self.max_rounds} batch round(s){why}", False)
                report.resumed += sum(1 for sid in relevant if not self._sub(sid).get("this_run"))
                if not relevant and not any(q.files for q in queues.values()):
                    break
                await self._run_waves(queues, relevant, wanted, report.rounds, report, failures)
            final = self._wanted(plan, seen, resolved, report)
            self.failures = {k: failures[k].reason if k in failures else NOT_ANSWERED for k in final}
            report.failures = dict(self.failures)
            report.failed = len(self.failures)
            report.waves = self._waves_total  # refused batches go again in waves of their own
            return report
        except (asyncio.CancelledError, KeyboardInterrupt):
            await self._interrupted()
            raise
        finally:
            for sub in self._state.get("submissions", {}).values():
                sub.pop("this_run", None)
            await self._close_sdk()
            self.cache.flush()
            lock.release()

    def _plan(self, tasks: list[LLMTask]) -> dict[str, _Entry]:
        plan: dict[str, _Entry] = {}
        for t in tasks:
            try:
                body = build_body(t)
            except InfirError:  # the client's pass reports it, with the same reason
                continue
            key = cache_key(body)
            if key not in plan:
                plan[key] = _Entry(body, t.output_model, t.key_id, t)
                self._requests[key] = (body, t)
        return plan

    def _wanted(
        self, plan: dict[str, _Entry], seen: set[str], resolved: set[str], report: BatchReport
    ) -> dict[str, dict[str, Any]]:
        """{key: body} of the requests still missing: first requests not cached, and the repair
        requests of cached first answers that do not parse (as the online client would send them).
        `resolved`: first keys needing nothing more (the cache only grows), skipped next time."""
        out: dict[str, dict[str, Any]] = {}
        todo = [k for k in plan if k not in resolved]
        for i in range(0, len(todo), 2000):  # bounded memory: responses are read a chunk at a time
            chunk = todo[i : i + 2000]
            cached = self.cache.peek_many(chunk)
            repairs: dict[str, tuple[str, dict[str, Any]]] = {}
            for key in chunk:
                entry = plan[key]
                if key not in seen:
                    seen.add(key)
                    report.requests += 1
                    report.cached_before += key in cached
                response = cached.get(key)
                if response is None:
                    out[key] = entry.body
                    continue
                outcome = parse_response(response, entry.output_model) if self.client.settings.repair else None
                if outcome is None or outcome.error is None:
                    resolved.add(key)
                    continue
                rbody = repair_body(entry.body, outcome, entry.output_model)
                repairs[cache_key(rbody)] = (key, rbody)
                self._requests[cache_key(rbody)] = (rbody, entry.task)
            have = self.cache.peek_many(repairs)  # read, not just listed: a stored row that is not usable is dropped
            for rkey, (key, rbody) in repairs.items():
                if rkey not in seen:
                    seen.add(rkey)
                    report.requests += 1
                    report.cached_before += rkey in have
                if rkey in have:
                    resolved.add(key)
                else:
                    out[rkey] = rbody
        return out

    def _check_budget(self, todo: dict[str, dict[str, Any]], report: BatchReport) -> None:
        cap = self.client.settings.max_cost_usd
        if cap is None:
            return
        est = 0.0
        for body in todo.values():
            pt = estimate_prompt_tokens(body["messages"])
            ct = max_output_tokens(body) // 2 or 256
            est += self.client.prices.cost(body["model"], pt, ct, batch=True)
        spent = self.client.totals.cost_usd + report.cost_usd
        if spent + est > cap:
            raise InfirError(
                f"batch round {report.rounds}: {len(todo)} requests, estimated ${est:.4f} at batch prices, would "
                f"exceed llm.max_cost_usd ${cap:.4f} (${spent:.4f} spent); nothing was submitted"
            )

    # -- submission ----------------------------------------------------------------------------
    def _line(self, key: str, body: dict[str, Any]) -> bytes:
        line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
        return json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"

    async def _submit_file(
        self, f: _File, bodies: dict[str, dict[str, Any]], round_no: int, report: BatchReport
    ) -> str:
        """Write, upload and create the batch of one planned file, each step recorded before the next."""
        model, keys = f.model, f.keys
        lines = [self._line(k, bodies[k]) for k in keys]
        st = self._state
        sid = f"s{st['next']:05d}"
        st["next"] += 1
        keys_path = self.state_dir / f"{sid}.keys"
        jsonl_path = self.state_dir / f"{sid}.jsonl"
        write_bytes_atomic(keys_path, ("\n".join(keys) + "\n").encode("utf-8"))
        write_bytes_atomic(jsonl_path, b"".join(lines))
        self._keys[sid] = keys
        sub = {
            "model": model, "requests": len(keys), "bytes": sum(len(x) for x in lines), "round": round_no,
            "keys_file": keys_path.name, "input_file_id": None, "batch_id": None, "status": "prepared",
            "counts": None, "created": time.time(), "done": False, "this_run": True,
            "tokens": f.tokens, "wave": f.wave,  # estimated prompt tokens it holds in the queue
        }
        st["submissions"][sid] = sub
        self._save()
        sdk = self._client()
        fobj = await self._call(
            f"upload {jsonl_path.name}",
            lambda: sdk.files.create(file=jsonl_path, purpose="batch", timeout=self._long_timeout()),
            as_file,
        )
        sub["input_file_id"], sub["status"] = fobj.id, "uploaded"
        self._save()
        jsonl_path.unlink(missing_ok=True)  # the remote copy is what the batch reads
        report.files += 1
        batch = await self._create_batch(sid, sub)
        sub["batch_id"], sub["status"] = batch.id, batch.status
        self._save()
        report.batches += 1
        report.submitted += len(keys)
        log.info("%s: submitted batch %s (%d requests, ~%d tokens, %s, round %d, wave %d)", self.label, batch.id,
                 len(keys), f.tokens, model, round_no, f.wave)
        return sid

    async def _recover(self) -> None:
        """Submissions a killed run left half-done: adopt a batch created from an uploaded file,
        drop the rest (their requests are planned again)."""
        for sid, sub in list(self._state["submissions"].items()):
            if sub["done"] or sub["batch_id"]:
                continue
            found = await self._find_remote(sub["input_file_id"]) if sub["input_file_id"] else None
            if found is not None:
                sub["batch_id"], sub["status"] = found.id, found.status
                log.info("%s: adopted batch %s of submission %s", self.label, found.id, sid)
            else:
                self._drop(sid)
        self._save()


__all__ = ["BatchReport", "BatchRunner", "MAX_BYTES_PER_FILE", "MAX_REQUESTS_PER_FILE", "NOT_ANSWERED"]
