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
  are split by model, then by count and bytes. A single request over the byte limit fails.
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
import dataclasses
import fcntl
import json
import logging
import os
import random
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, TypeVar

import openai

from pipeline.errors import InfirError
from pipeline.llm.client import (
    BATCH_FIELD,
    BackendError,
    LLMClient,
    LLMTask,
    Usage,
    build_body,
    cache_key,
    estimate_prompt_tokens,
    max_output_tokens,
    parse_response,
    repair_body,
)
from pipeline.llm.openai_backend import OpenAIBackend, retry_after_seconds
from pipeline.llm.ratelimit import backoff_delay

log = logging.getLogger(__name__)

# The Batch API's limits for one input file (OpenAI API reference, batches.create / files.create).
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200_000_000  # "200 MB": the decimal reading, the stricter of the two
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
STATE_VERSION = 1
NOT_ANSWERED = "not answered by the batch API"
TERMINAL = ("completed", "failed", "expired", "cancelled")
# Per-request error codes that say nothing about the request itself: worth another round.
RETRYABLE_CODES = {"batch_expired", "batch_cancelled", "server_error", "rate_limit_exceeded", "timeout"}
_LONG_TIMEOUT_S = 600.0  # uploads and downloads of up to 200 MB
_T = TypeVar("_T")


@dataclass
class BatchReport:
    requests: int = 0  # distinct requests needed (first requests and repairs), cached ones included
    cached_before: int = 0  # of those, in the cache when first looked at
    submitted: int = 0  # lines sent in batches created by this call
    answered: int = 0  # answers written to the cache by this call (resumed batches included)
    failed: int = 0  # requests left without an answer (see `failures`)
    batches: int = 0  # batches created by this call
    files: int = 0  # input files uploaded by this call
    resumed: int = 0  # batches of an earlier call polled by this one
    rounds: int = 0  # submission rounds of this call
    prompt_tokens: int = 0  # of the answers written by this call
    completion_tokens: int = 0
    cost_usd: float = 0.0  # of the answers written by this call, at batch prices
    failures: dict[str, str] = field(default_factory=dict)  # cache key -> reason

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Failure:
    reason: str
    retryable: bool


@dataclass
class _Entry:
    """One distinct first request of the tasks."""

    body: dict[str, Any]
    output_model: Any
    key_id: str


class _CacheOnlyBackend:
    """Serves nothing: after `prefetch`, every answer is in the cache or has failed for a reason."""

    name = "batch"
    can_resend = False  # the client must not ask it again past the cache

    def __init__(self, runner: BatchRunner):
        self._runner = runner

    async def complete(self, body: dict[str, Any], task: LLMTask) -> dict[str, Any]:
        reason = self._runner.failures.get(cache_key(body), NOT_ANSWERED)
        raise BackendError(reason, retryable=False, kind="batch")


class BatchRunner:
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
        self.failures: dict[str, str] = {}  # of the last prefetch: cache key -> reason
        self._rng = random.Random()
        self._api: OpenAIBackend | None = None
        self._sdk: Any = None
        self._state: dict[str, Any] = {}
        self._keys: dict[str, list[str]] = {}  # sid -> custom_ids (from <sid>.keys)

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
                new: list[str] = []
                if todo and report.rounds < self.max_rounds:
                    report.rounds += 1
                    self._check_budget(todo, report)
                    new = await self._submit(todo, report.rounds, report, failures)
                elif todo:
                    for k in todo:
                        prior = failures.get(k)
                        why = f": {prior.reason}" if prior else ""
                        failures[k] = _Failure(f"not answered after {self.max_rounds} batch round(s){why}", False)
                report.resumed += sum(1 for sid in relevant if not self._sub(sid).get("this_run"))
                if not relevant and not new:
                    break
                await self._wait(relevant + new, report, failures)
            final = self._wanted(plan, seen, resolved, report)
            self.failures = {k: failures[k].reason if k in failures else NOT_ANSWERED for k in final}
            report.failures = dict(self.failures)
            report.failed = len(self.failures)
            return report
        except (asyncio.CancelledError, KeyboardInterrupt):
            await self._interrupted()
            raise
        finally:
            for sub in self._state.get("submissions", {}).values():
                sub.pop("this_run", None)
            await self._close_sdk()
            self.cache.flush()
            lock.close()  # releases the flock

    def _plan(self, tasks: list[LLMTask]) -> dict[str, _Entry]:
        plan: dict[str, _Entry] = {}
        for t in tasks:
            try:
                body = build_body(t)
            except InfirError:  # the client's pass reports it, with the same reason
                continue
            plan.setdefault(cache_key(body), _Entry(body, t.output_model, t.key_id))
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
            have = self.cache.contains_many(repairs)
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

    async def _submit(
        self, todo: dict[str, dict[str, Any]], round_no: int, report: BatchReport, failures: dict[str, _Failure]
    ) -> list[str]:
        """Split `todo` into files (one model each, within the limits), upload and submit them."""
        by_model: dict[str, list[str]] = {}
        for key, body in todo.items():
            by_model.setdefault(str(body["model"]), []).append(key)
        sids: list[str] = []
        for model, keys in by_model.items():
            chunk: list[str] = []
            lines: list[bytes] = []
            size = 0
            for key in keys:
                line = self._line(key, todo[key])
                if len(line) > self.max_bytes_per_file:
                    failures[key] = _Failure(
                        f"request of {len(line)} bytes exceeds the batch file limit of {self.max_bytes_per_file} bytes",
                        False,
                    )
                    continue
                if chunk and (len(chunk) >= self.max_requests_per_file or size + len(line) > self.max_bytes_per_file):
                    sids.append(await self._submit_file(model, chunk, lines, round_no, report))
                    chunk, lines, size = [], [], 0
                chunk.append(key)
                lines.append(line)
                size += len(line)
            if chunk:
                sids.append(await self._submit_file(model, chunk, lines, round_no, report))
        return sids

    async def _submit_file(
        self, model: str, keys: list[str], lines: list[bytes], round_no: int, report: BatchReport
    ) -> str:
        st = self._state
        sid = f"s{st['next']:05d}"
        st["next"] += 1
        keys_path = self.state_dir / f"{sid}.keys"
        jsonl_path = self.state_dir / f"{sid}.jsonl"
        _atomic_write(keys_path, ("\n".join(keys) + "\n").encode("utf-8"))
        _atomic_write(jsonl_path, b"".join(lines))
        self._keys[sid] = keys
        sub = {
            "model": model, "requests": len(keys), "bytes": sum(len(x) for x in lines), "round": round_no,
            "keys_file": keys_path.name, "input_file_id": None, "batch_id": None, "status": "prepared",
            "counts": None, "created": time.time(), "done": False, "this_run": True,
        }
        st["submissions"][sid] = sub
        self._save()
        sdk = self._client()
        fobj = await self._call(
            f"upload {jsonl_path.name}",
            lambda: sdk.files.create(file=jsonl_path, purpose="batch", timeout=self._long_timeout()),
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
        log.info("%s: submitted batch %s (%d requests, %s, round %d)", self.label, batch.id, len(keys), model, round_no)
        return sid

    async def _create_batch(self, sid: str, sub: dict[str, Any]) -> Any:
        sdk = self._client()
        metadata = {"infir_submission": f"{self._state['token']}:{sid}", "infir_label": self.label[:500]}
        tried = False

        async def create() -> Any:
            nonlocal tried
            if tried:  # the last attempt may have created it before failing: never create twice
                found = await self._find_remote(sub["input_file_id"])
                if found is not None:
                    return found
            tried = True
            return await sdk.batches.create(
                input_file_id=sub["input_file_id"], endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
                metadata=metadata,
            )

        return await self._call(f"create the batch of {sid}", create)

    async def _find_remote(self, input_file_id: str) -> Any:
        sdk = self._client()
        page = await self._call("list batches", lambda: sdk.batches.list(limit=100))
        for b in page.data:
            if b.input_file_id == input_file_id:
                return b
        return None

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

    def _drop(self, sid: str) -> None:
        sub = self._state["submissions"].pop(sid)
        for name in (sub["keys_file"], f"{sid}.jsonl"):
            (self.state_dir / name).unlink(missing_ok=True)
        self._keys.pop(sid, None)

    # -- polling and results -------------------------------------------------------------------
    async def _wait(
        self, sids: list[str], report: BatchReport, failures: dict[str, _Failure], once: bool = False
    ) -> None:
        """Poll until every batch of `sids` has finished and is ingested (`once`: one poll each)."""
        from pipeline.progress import progress_bar

        sdk = self._client()
        pending = list(dict.fromkeys(sids))
        total = sum(self._sub(sid)["requests"] for sid in pending)
        finished = 0
        with progress_bar(f"{self.label}: batch API", total) as (bar, task_id):
            while pending:
                progressed = finished
                for sid in list(pending):
                    sub = self._sub(sid)
                    try:
                        b = await self._call(f"poll {sub['batch_id']}", lambda: sdk.batches.retrieve(sub["batch_id"]))
                    except _Gone as e:
                        await self._finish(sid, None, str(e), report, failures)
                        pending.remove(sid)
                        finished += sub["requests"]
                        continue
                    counts = b.request_counts
                    sub["counts"] = counts.model_dump() if counts is not None else None
                    if b.status != sub["status"]:
                        sub["status"] = b.status
                        self._save()
                    if b.status in TERMINAL:
                        await self._finish(sid, b, None, report, failures)
                        pending.remove(sid)
                        finished += sub["requests"]
                    elif counts is not None:
                        progressed += min(sub["requests"], (counts.completed or 0) + (counts.failed or 0))
                states = [self._sub(s)["status"] for s in pending]
                info = f"{len(pending)} batch(es) running ({', '.join(sorted(set(states))) or 'done'})"
                bar.update(task_id, completed=progressed if pending else finished, info=info)
                if once:
                    return
                if pending:
                    await asyncio.sleep(self.poll_interval_s)

    async def _finish(
        self, sid: str, batch: Any, gone: str | None, report: BatchReport, failures: dict[str, _Failure]
    ) -> None:
        """Download a finished batch's output and error files into the cache; record what failed."""
        sub = self._sub(sid)
        keys = set(self._sub_keys(sid))
        answered: set[str] = set()
        reported: set[str] = set()
        if batch is not None:
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    await self._ingest(sid, sub, batch.id, file_id, keys, answered, reported, report, failures)
            why = f"batch {batch.id} ended {batch.status}"
            errors = getattr(getattr(batch, "errors", None), "data", None) or []
            if errors:
                why += ": " + "; ".join(f"{e.code}: {e.message}" for e in errors[:3] if e is not None)
        else:
            why = gone or NOT_ANSWERED
        for k in keys - answered - reported:
            failures[k] = _Failure(f"{NOT_ANSWERED} ({why})", True)
        sub["done"] = True
        sub["answered"] = len(answered)
        self._save()
        (self.state_dir / sub["keys_file"]).unlink(missing_ok=True)
        self._keys.pop(sid, None)
        log.info("%s: batch %s %s: %d answered, %d not", self.label, sub["batch_id"], sub["status"],
                 len(answered), len(keys) - len(answered))

    async def _ingest(
        self, sid: str, sub: dict[str, Any], batch_id: str, file_id: str, keys: set[str], answered: set[str],
        reported: set[str], report: BatchReport, failures: dict[str, _Failure],
    ) -> None:
        path = self.state_dir / f"{sid}.{file_id}.download"
        await self._download(file_id, path)
        rows: list[tuple[str, dict[str, Any], str | None]] = []
        try:
            with open(path, encoding="utf-8") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    try:
                        entry = json.loads(raw)
                        cid = entry["custom_id"]
                    except (ValueError, KeyError, TypeError, RecursionError):
                        log.warning("%s: result file %s line %d is not a batch result; skipped", self.label, file_id, n)
                        continue
                    if cid not in keys:
                        log.warning("%s: result file %s line %d: custom_id %r is not in batch %s; skipped",
                                    self.label, file_id, n, cid, batch_id)
                        continue
                    resp = entry.get("response") or {}
                    status = resp.get("status_code")
                    body = resp.get("body")
                    if status == 200 and isinstance(body, dict) and isinstance(body.get("choices"), list):
                        body[BATCH_FIELD] = batch_id
                        rows.append((cid, body, sub["model"]))
                        answered.add(cid)
                        failures.pop(cid, None)
                        u = Usage.of(body)
                        report.prompt_tokens += u.prompt_tokens
                        report.completion_tokens += u.completion_tokens
                        report.cost_usd += self.client.prices.cost(
                            sub["model"], u.prompt_tokens, u.completion_tokens, u.cached_tokens, batch=True,
                            response_model=body.get("model"),
                        )
                        if len(rows) >= 1000:
                            self._store(rows, report)
                    elif cid not in answered:
                        reported.add(cid)
                        failures[cid] = _classify(status, entry.get("error"), body)
            self._store(rows, report)
        finally:
            path.unlink(missing_ok=True)

    def _store(self, rows: list[tuple[str, dict[str, Any], str | None]], report: BatchReport) -> None:
        if not rows:
            return
        try:
            report.answered += self.cache.put_many(rows)
        except Exception as e:  # sqlite3.Error / OSError: paying for answers we cannot keep must stop
            raise InfirError(f"LLM cache {self.cache.path}: write failed: {e} (rerun to download again)") from None
        rows.clear()

    async def _download(self, file_id: str, path: Path) -> None:
        sdk = self._client()

        async def fetch() -> None:
            tmp = path.with_name(path.name + ".part")
            async with sdk.files.with_streaming_response.content(file_id, timeout=self._long_timeout()) as resp:
                with open(tmp, "wb") as f:
                    async for chunk in resp.iter_bytes():
                        f.write(chunk)
            os.replace(tmp, path)

        await self._call(f"download {file_id}", fetch)

    async def _interrupted(self) -> None:
        from pipeline.progress import console

        running = [(sid, s["batch_id"]) for sid, s in self._state.get("submissions", {}).items()
                   if not s["done"] and s["batch_id"]]
        if not running:
            return
        ids = ", ".join(b for _, b in running)
        if self.cancel_on_interrupt:
            sdk = self._client()
            for _, bid in running:
                try:
                    await asyncio.wait_for(sdk.batches.cancel(bid), 10)
                except Exception as e:  # best effort: the rerun polls it either way
                    log.warning("%s: could not cancel batch %s: %s", self.label, bid, type(e).__name__)
            console.print(f"[{self.label}] interrupted: cancel requested for {ids}; a rerun collects what they "
                          f"answered and resubmits the rest (state: {self.state_dir})")
        else:
            console.print(f"[{self.label}] interrupted: {ids} keep running on the server; rerun to resume "
                          f"polling them (state: {self.state_dir})")

    # -- SDK calls -----------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._api is None:
            # Same construction as online mode: base_url, key env var, organization/project, timeouts.
            self._api = OpenAIBackend(self.client.settings)
        if self._sdk is None:
            self._sdk = self._api._get_client()
        return self._sdk

    async def _close_sdk(self) -> None:
        if self._api is not None:
            await self._api.aclose()
        self._sdk = None

    def _long_timeout(self) -> float:
        return max(_LONG_TIMEOUT_S, self.client.settings.request_timeout_s)

    async def _call(self, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """One Files/Batches API call with the settings' retry policy (the SDK itself never retries)."""
        s = self.client.settings
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except openai.APIStatusError as e:
                status = e.status_code
                message = self._redact(str(getattr(e, "message", "") or e))[:300]
                if status == 404 and what.startswith("poll"):
                    raise _Gone(f"{what}: HTTP 404: {message}") from None
                if not (status in (408, 409, 429) or status >= 500) or attempt >= s.max_attempts:
                    raise InfirError(f"{self.label}: batch API: {what}: HTTP {status}: {message}") from None
                wait = retry_after_seconds(e.response.headers, status)
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                if attempt >= s.max_attempts:
                    raise InfirError(
                        f"{self.label}: batch API: {what}: {type(e).__name__} after {attempt} attempts"
                        f" (state kept in {self.state_dir}; rerun to resume)"
                    ) from None
                wait = None
            if wait is None:
                wait = backoff_delay(attempt, s.backoff_base_s, s.backoff_max_s, self._rng)
            log.debug("%s: %s failed (attempt %d); retry in %.2fs", self.label, what, attempt, wait)
            await asyncio.sleep(wait)

    def _redact(self, text: str) -> str:
        return self._api._redact(text) if self._api is not None else text

    # -- state ---------------------------------------------------------------------------------
    def _lock(self) -> Any:
        f = open(self.state_dir / ".lock", "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise InfirError(f"batch state {self.state_dir}: in use by another process") from None
        return f

    def _load(self) -> dict[str, Any]:
        path = self.state_dir / "state.json"
        if not path.exists():
            return {"version": STATE_VERSION, "token": uuid.uuid4().hex[:12], "label": self.label, "next": 1,
                    "submissions": {}}
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InfirError(f"batch state {path}: unreadable ({e}); move it away to start over") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise InfirError(f"batch state {path}: unknown format (version {state.get('version')!r})")
        return state

    def _save(self) -> None:
        st = {**self._state, "submissions": {
            sid: {k: v for k, v in sub.items() if k != "this_run"} for sid, sub in self._state["submissions"].items()
        }}
        _atomic_write(self.state_dir / "state.json", json.dumps(st, indent=1, sort_keys=True).encode("utf-8"))

    def _sub(self, sid: str) -> dict[str, Any]:
        return self._state["submissions"][sid]

    def _unfinished(self) -> list[str]:
        return [sid for sid, s in self._state["submissions"].items() if not s["done"] and s["batch_id"]]

    def _sub_keys(self, sid: str) -> list[str]:
        if sid not in self._keys:
            path = self.state_dir / self._sub(sid)["keys_file"]
            try:
                self._keys[sid] = path.read_text(encoding="utf-8").split()
            except OSError as e:
                raise InfirError(f"batch state {path}: {e}") from None
        return self._keys[sid]


class _Gone(Exception):
    """The batch no longer exists on the server."""


def _classify(status: Any, error: Any, body: Any) -> _Failure:
    """A failed line of a result file: its reason, and whether another round may succeed."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
    err = error if isinstance(error, dict) else {}
    code = err.get("code")
    message = str(err.get("message") or "no message")[:300]
    if isinstance(status, int):
        retryable = status in (408, 409, 429) or status >= 500
        return _Failure(f"HTTP {status}: {message}", retryable)
    return _Failure(f"{code or 'error'}: {message}", code in RETRYABLE_CODES)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["BatchReport", "BatchRunner", "MAX_BYTES_PER_FILE", "MAX_REQUESTS_PER_FILE", "NOT_ANSWERED"]
