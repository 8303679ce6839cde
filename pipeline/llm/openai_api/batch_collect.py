"""The Batch API runner's collecting side: polling until batches end, downloading their output
and error files, storing answers in the cache, and Ctrl-C (a mixin of `BatchRunner`).

Each output line is checked as an online answer is (`completion.check_completion`): a line that
is not UTF-8 or whose answer is not a usable completion (content a number, usage "lots") is a
failed request with its reason, never stored, and goes again in the next round."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from pipeline.errors import InfirError
from pipeline.llm.completion import InvalidAnswer, check_completion, has_usage
from pipeline.llm.types import BATCH_FIELD, Usage

from pipeline.llm.openai_api.batch_remote import (
    NOT_ANSWERED,
    TERMINAL,
    BatchReport,
    _classify,
    _Failure,
    _Gone,
    as_batch,
)
from pipeline.llm.openai_api.batch_waves import TOKEN_LIMIT_CODE

log = logging.getLogger("pipeline.llm.openai_api.batch")


class _Collect:
    async def _wait(
        self, sids: list[str], report: BatchReport, failures: dict[str, _Failure], once: bool = False
    ) -> None:
        """Poll until every batch of `sids` has finished and is ingested (`once`: one poll each)."""
        from pipeline.progress import progress_bar

        pending = list(dict.fromkeys(sids))
        total = sum(self._sub(sid)["requests"] for sid in pending)
        finished = 0
        with progress_bar(f"{self.label}: batch API", total) as (bar, task_id):
            while pending:
                ended, progressed = await self._poll(pending, report, failures)
                for sid, _ in ended:
                    pending.remove(sid)
                    finished += self._sub(sid)["requests"]
                states = [self._sub(s)["status"] for s in pending]
                info = f"{len(pending)} batch(es) running ({', '.join(sorted(set(states))) or 'done'})"
                bar.update(task_id, completed=finished + progressed, info=info)
                if once:
                    return
                if pending:
                    await asyncio.sleep(self.poll_interval_s)

    async def _poll(
        self, sids: list[str], report: BatchReport, failures: dict[str, _Failure]
    ) -> tuple[list[tuple[str, str | None]], int]:
        """One retrieve of each batch of `sids`; those that ended are ingested. Returns the ended
        ones, each with the message of a token_limit_exceeded refusal (else None), and the requests
        done so far in the ones still running."""
        sdk = self._client()
        ended: list[tuple[str, str | None]] = []
        progressed = 0
        for sid in sids:
            sub = self._sub(sid)
            try:
                b = await self._call(f"poll {sub['batch_id']}", lambda: sdk.batches.retrieve(sub["batch_id"]), as_batch)
            except _Gone as e:
                ended.append((sid, await self._finish(sid, None, str(e), report, failures)))
                continue
            counts = b.request_counts
            sub["counts"] = counts.model_dump() if counts is not None else None
            if b.status != sub["status"]:
                sub["status"] = b.status
                self._save()
            if b.status in TERMINAL:
                ended.append((sid, await self._finish(sid, b, None, report, failures)))
            elif counts is not None:
                progressed += min(sub["requests"], (counts.completed or 0) + (counts.failed or 0))
        return ended, progressed

    async def _finish(
        self, sid: str, batch: Any, gone: str | None, report: BatchReport, failures: dict[str, _Failure]
    ) -> str | None:
        """Download a finished batch's output and error files into the cache; record what failed.
        Returns the service's message when the batch was refused for the enqueued-token limit."""
        sub = self._sub(sid)
        keys = set(self._sub_keys(sid))
        answered: set[str] = set()
        reported: set[str] = set()
        refused = None
        if batch is not None:
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    await self._ingest(sid, sub, batch.id, file_id, keys, answered, reported, report, failures)
            why = f"batch {batch.id} ended {batch.status}"
            errors = [e for e in (getattr(getattr(batch, "errors", None), "data", None) or []) if e is not None]
            if errors:
                why += ": " + "; ".join(f"{e.code}: {e.message}" for e in errors[:3])
            if batch.status == "failed":
                refused = next((str(e.message or "") for e in errors if e.code == TOKEN_LIMIT_CODE), None)
                if refused is not None:
                    sub["refused"] = TOKEN_LIMIT_CODE  # the audit: it goes again, not counted as a round
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
        return refused

    async def _ingest(
        self, sid: str, sub: dict[str, Any], batch_id: str, file_id: str, keys: set[str], answered: set[str],
        reported: set[str], report: BatchReport, failures: dict[str, _Failure],
    ) -> None:
        path = self.state_dir / f"{sid}.{file_id}.download"
        await self._download(file_id, path)
        rows: list[tuple[str, dict[str, Any], str | None]] = []
        seen = (keys, answered, reported, failures)
        try:
            with open(path, "rb") as f:  # bytes: a line that is not UTF-8 fails alone, not the file
                for n, raw in enumerate(f, 1):
                    if raw.strip():
                        self._ingest_line(n, raw, sub, batch_id, file_id, seen, rows, report)
                    if len(rows) >= 1000:
                        self._store(rows, report)
            self._store(rows, report)
        finally:
            path.unlink(missing_ok=True)

    def _ingest_line(
        self, n: int, raw: bytes, sub: dict[str, Any], batch_id: str, file_id: str, seen: tuple,
        rows: list[tuple[str, dict[str, Any], str | None]], report: BatchReport,
    ) -> None:
        """One line of a result file: an answer for the cache, or a failed request with its reason."""
        keys, answered, reported, failures = seen
        try:
            text, bad_bytes = raw.decode("utf-8"), None
        except UnicodeDecodeError as e:  # the custom_id (hex) is still readable: that request fails
            text, bad_bytes = raw.decode("utf-8", errors="replace"), f"result line {n} is not valid UTF-8 (byte {e.start})"
        try:
            entry = json.loads(text)
            cid = entry["custom_id"]
            hash(cid)
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("%s: result file %s line %d is not a batch result; skipped", self.label, file_id, n)
            return
        if cid not in keys:
            log.warning("%s: result file %s line %d: custom_id %r is not in batch %s; skipped",
                        self.label, file_id, n, cid, batch_id)
            return
        resp = entry.get("response") if isinstance(entry.get("response"), dict) else {}
        status, body = resp.get("status_code"), resp.get("body")
        if bad_bytes is None and status == 200:
            try:
                if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
                    raise InvalidAnswer("no choices")
                check_completion(body)
            except InvalidAnswer as e:
                bad_bytes = f"invalid answer: {e}"
        if bad_bytes is not None:  # a failed request, retried in the next round like a 5xx line
            report.invalid_answers += 1
            if cid not in answered:
                reported.add(cid)
                failures[cid] = _Failure(bad_bytes, True)
        elif status == 200:
            body[BATCH_FIELD] = batch_id
            rows.append((cid, body, sub["model"]))
            answered.add(cid)
            failures.pop(cid, None)
            u = self._line_usage(cid, body, sub)
            report.usage_estimated += u.estimated
            report.prompt_tokens += u.prompt_tokens
            report.completion_tokens += u.completion_tokens
            report.cost_usd += self.client.prices.cost(
                sub["model"], u.prompt_tokens, u.completion_tokens, u.cached_tokens, batch=True,
                response_model=body.get("model"),
            )
        elif cid not in answered:
            reported.add(cid)
            failures[cid] = _classify(status, entry.get("error"), body)

    def _line_usage(self, cid: str, body: dict[str, Any], sub: dict[str, Any]) -> Usage:
        """An answer's usage; without one, the request's estimate (as online), or where this call
        does not know the request (a batch of an earlier call), the submission's average prompt."""
        if has_usage(body):
            return Usage.of(body)
        known = self._requests.get(cid)
        if known is not None:
            return self.client.estimated_usage(*known)
        per_line = int(sub.get("tokens") or 0) // max(1, int(sub.get("requests") or 1))
        return Usage(per_line, 256, estimated=True)

    def _store(self, rows: list[tuple[str, dict[str, Any], str | None]], report: BatchReport) -> None:
        if not rows:
            return
        try:
            report.answered += self.cache.put_many(rows)
        except Exception as e:  # sqlite3.Error / OSError: paying for answers we cannot keep must stop
            raise InfirError(f"LLM cache {self.cache.path}: write failed: {e} (rerun to download again)") from None
        rows.clear()

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
