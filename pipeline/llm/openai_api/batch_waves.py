"""The Batch API runner's queue side: submitting within the enqueued-token limit, in waves (a mixin
of `BatchRunner`; docs/batch.md).

The Batch API keeps at most a model's enqueued-token limit of prompt tokens queued (batches
validating, in progress or finalizing); a batch that would pass it ends `failed` with
`token_limit_exceeded`. So a round's requests are cut into files of at most the bound's tokens
(besides the file limits) and grouped into waves, each a run of files that fits the bound
together. A file goes only when it fits beside what is queued: every unfinished batch recorded in
the state, earlier runs' included. The next file goes when an earlier batch completes.

A batch refused all the same (another process holds the queue, or the service counts more than our
estimate) goes back to the front of its model's queue; it does not use up a round:
- while batches of ours of that model are queued, nothing more of the model goes until one ends;
- a file alone over the limit the service names goes again at once, cut into files that fit;
- otherwise, with none of ours queued, it waits (exponential back-off from `poll_interval_s`, at most
  `QUEUE_BACKOFF_MAX_S`) and goes again; at the second and third such refusal in a row it goes as
  two halves (and so do the model's next files in this call), in case the service counts more than
  we do. After `queue_wait_max_s` of such waiting its requests fail ("rerun later").
The limit the service names in its message ("Limit: 2,000,000 enqueued tokens") becomes the
model's bound for this run and the next (`state.json` "queue_limits").
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pipeline.llm.openai_api.batch_remote import BatchReport, _Failure
from pipeline.llm.tokens import estimate_prompt_tokens

log = logging.getLogger("pipeline.llm.openai_api.batch")

TOKEN_LIMIT_CODE = "token_limit_exceeded"
QUEUE_BACKOFF_MAX_S = 600.0  # longest single wait for a queue another process holds
QUEUE_WAIT_MAX_S = 24 * 3600.0  # the completion window: after this, the requests fail (rerun later)
_LIMIT_RE = re.compile(r"Limit:\s*([\d,]+)\s*enqueued tokens", re.IGNORECASE)


def line_tokens(body: dict[str, Any]) -> int:
    """A request's tokens in the queue, estimated before it is sent: its prompt tokens (chars/4 +
    4 per message, as the dry run counts them; the service counts input tokens)."""
    return estimate_prompt_tokens(body.get("messages") or [])


def limit_in(message: str) -> int | None:
    """The limit a token_limit_exceeded message names, if it names one."""
    m = _LIMIT_RE.search(message or "")
    return int(m.group(1).replace(",", "")) if m else None


@dataclass
class _File:
    """One input file, planned: a model's requests, their estimated tokens, the wave it belongs to
    (0: a batch of an earlier call, resumed)."""

    model: str
    keys: list[str]
    tokens: int
    wave: int = 0


@dataclass
class _ModelQueue:
    files: deque = field(default_factory=deque)  # of _File, submitted from the left
    wait_for: set = field(default_factory=set)  # sids: nothing more goes until one of them ends
    retry_at: float = 0.0  # monotonic: nothing goes before (a queue another process holds)
    strikes: int = 0  # refusals in a row with none of ours queued
    waited_s: float = 0.0


class _Waves:
    # -- the bound and what is queued ----------------------------------------------------------
    def _bound(self, model: str) -> int | None:
        """The most estimated tokens of `model` queued at once: the setting, or the limit the
        service named, whichever is lower."""
        conf = self.queue_tokens
        if isinstance(conf, dict):
            conf = conf.get(model)
        learned = self._state.setdefault("queue_limits", {}).get(model)
        known = [int(v) for v in (conf, learned) if v]
        return min(known) if known else None

    def _cap(self, model: str) -> int | None:
        """The most estimated tokens in one file of `model`: the bound, or less after halving."""
        known = [v for v in (self._bound(model), self._halved.get(model)) if v]
        return min(known) if known else None

    def _sub_tokens(self, sid: str) -> int:
        sub = self._sub(sid)
        if sub.get("tokens") is not None:
            return int(sub["tokens"])
        return int(sub.get("bytes") or 0) // 4  # recorded before waves existed: bytes/4 over-counts, the safe side

    def _enqueued(self, model: str) -> int:
        return sum(self._sub_tokens(s) for s in self._unfinished() if self._sub(s)["model"] == model)

    def _fits(self, model: str, q: _ModelQueue, f: _File) -> bool:
        if q.wait_for and not any(self._sub(s)["done"] for s in q.wait_for):
            return False  # none of the batches it waits for has ended yet
        q.wait_for = set()
        if time.monotonic() < q.retry_at:
            return False
        bound = self._bound(model)
        queued = self._enqueued(model)
        return bound is None or queued == 0 or queued + f.tokens <= bound

    # -- planning ------------------------------------------------------------------------------
    def _meta_of(self, key: str, body: dict[str, Any]) -> tuple[int, int]:
        if key not in self._meta:
            self._meta[key] = (line_tokens(body), len(self._line(key, body)))
        return self._meta[key]

    def _cut(
        self, model: str, keys: list[str], bodies: dict[str, Any], failures: dict[str, _Failure], cap: int | None = None
    ) -> list[_File]:
        """Cut `keys` (in order) into files within the file limits and `cap` tokens each (default:
        the model's file cap). A request over the model's bound fails: it can never be queued."""
        bound = self._bound(model)
        cap = cap if cap is not None else self._cap(model)
        files: list[_File] = []
        cur: list[str] = []
        tokens = size = 0
        for key in keys:
            t, n = self._meta_of(key, bodies[key])
            if n > self.max_bytes_per_file:
                failures[key] = _Failure(
                    f"request of {n} bytes exceeds the batch file limit of {self.max_bytes_per_file} bytes", False)
                continue
            if bound is not None and t > bound:
                failures[key] = _Failure(
                    f"request of ~{t:,} prompt tokens exceeds the Batch API's enqueued-token limit of {bound:,} for "
                    f"{model} (llm.batch_queue_tokens)", False)
                continue
            if cur and (len(cur) >= self.max_requests_per_file or size + n > self.max_bytes_per_file
                        or (cap is not None and tokens + t > cap)):
                files.append(_File(model, cur, tokens))
                cur, tokens, size = [], 0, 0
            cur.append(key)
            tokens += t
            size += n
        if cur:
            files.append(_File(model, cur, tokens))
        return files

    def _plan_waves(self, todo: dict[str, dict[str, Any]], failures: dict[str, _Failure]) -> dict[str, _ModelQueue]:
        """Files per model, grouped into waves that fit the model's bound together (one wave of all
        the files when the model has no bound)."""
        by_model: dict[str, list[str]] = {}
        for key, body in todo.items():
            by_model.setdefault(str(body["model"]), []).append(key)
        queues: dict[str, _ModelQueue] = {}
        for model, keys in by_model.items():
            files = self._cut(model, keys, todo, failures)
            self._group(model, files)
            queues[model] = _ModelQueue(files=deque(files))
        return queues

    # -- waves: runs of files that fit the bound together, for the progress lines ---------------
    def _group(self, model: str, files: list[_File]) -> None:
        """Put `files` (in order) into new waves that each fit the model's bound."""
        bound = self._bound(model)
        room = -1  # no open wave yet
        for f in files:
            if room < 0 or (bound is not None and f.tokens > room):
                self._wave_seq += 1
                self._waves_total += 1
                w = self._wave_seq
                self._wave_open[w], self._wave_ended[w], self._wave_size[w] = 0, 0, [model, 0, 0]
                room = bound if bound is not None else 0
            f.wave = w
            room -= f.tokens if bound is not None else 0
            self._wave_open[w] += 1
            self._wave_size[w][1] += len(f.keys)
            self._wave_size[w][2] += f.tokens

    def _leave(self, f: _File) -> None:
        """`f` leaves its wave (it goes again, in a new one)."""
        w, f.wave = f.wave, 0
        if w not in self._wave_open:
            return
        self._wave_open[w] -= 1
        self._wave_size[w][1] -= len(f.keys)
        self._wave_size[w][2] -= f.tokens
        if self._wave_open[w] == 0:
            if self._wave_ended[w]:
                self._wave_done(w)
            else:  # nothing of it went: it was never a wave
                del self._wave_open[w], self._wave_ended[w], self._wave_size[w]
                self._waves_total -= 1

    def _file_ended(self, f: _File) -> None:
        w = f.wave
        if w not in self._wave_open:
            return
        self._wave_open[w] -= 1
        self._wave_ended[w] += 1
        if self._wave_open[w] == 0:
            self._wave_done(w)

    def _wave_done(self, w: int) -> None:
        """Every file of wave `w` has ended: one plain line (a log that is not a terminal has no bar)."""
        from pipeline.progress import console

        model, requests, tokens = self._wave_size.pop(w)
        del self._wave_open[w], self._wave_ended[w]
        self._waves_done += 1
        bound = self._bound(model)
        of = f" of {model}'s bound {bound:,}" if bound is not None else ""
        console.print(f"[{self.label}] batch waves {self._waves_done}/{self._waves_total} done: the last had "
                      f"{requests:,} {model} requests, ~{tokens:,} tokens{of}", markup=False, highlight=False,
                      soft_wrap=True)

    # -- the loop --------------------------------------------------------------------------------
    async def _run_waves(
        self, queues: dict[str, _ModelQueue], running: list[str], bodies: dict[str, dict[str, Any]], round_no: int,
        report: BatchReport, failures: dict[str, _Failure],
    ) -> None:
        """Submit the queued files as they fit, poll until they and `running` (batches of an
        earlier call) have ended; refused batches go again."""
        from pipeline.progress import progress_bar

        pending = list(dict.fromkeys(running))
        for sid in pending:  # resumed: their requests can go again if the queue refuses them
            keys = [k for k in self._sub_keys(sid) if k in bodies]
            self._sid_file.setdefault(sid, _File(self._sub(sid)["model"], keys, self._sub_tokens(sid)))
        total = sum(self._sub(s)["requests"] for s in pending) + sum(
            len(f.keys) for q in queues.values() for f in q.files)
        finished = 0
        with progress_bar(f"{self.label}: batch API", total) as (bar, task_id):
            while pending or any(q.files for q in queues.values()):
                for model, q in queues.items():
                    while q.files and self._fits(model, q, q.files[0]):
                        f = q.files.popleft()
                        sid = await self._submit_file(f, bodies, round_no, report)
                        self._sid_file[sid] = f
                        pending.append(sid)
                watched = list(dict.fromkeys(pending + self._unfinished()))  # all that holds queue tokens
                if not watched:  # every queue waits out a back-off
                    due = min(q.retry_at for q in queues.values() if q.files)
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    continue
                ended, progressed = await self._poll(watched, report, failures)
                for sid, refused in ended:
                    if sid in pending:
                        pending.remove(sid)
                        finished += self._sub(sid)["requests"]
                    self._ended(sid, refused, queues, bodies, report, failures)
                bar.update(task_id, total=max(total, finished), completed=finished + progressed,
                           info=self._wave_info(queues, pending))
                if not ended:
                    await asyncio.sleep(self.poll_interval_s)

    def _wave_info(self, queues: dict[str, _ModelQueue], pending: list[str]) -> str:
        states = sorted({self._sub(s)["status"] for s in pending})
        parts = [f"waves {self._waves_done}/{self._waves_total}",
                 f"{len(pending)} batch(es) running ({', '.join(states) or 'done'})"]
        for model in queues:
            bound = self._bound(model)
            if bound is not None:
                parts.append(f"{model} queue {self._enqueued(model):,}/{bound:,} tokens")
        return " · ".join(parts)

    def _ended(
        self, sid: str, refused: str | None, queues: dict[str, _ModelQueue], bodies: dict[str, dict[str, Any]],
        report: BatchReport, failures: dict[str, _Failure],
    ) -> None:
        f = self._sid_file.pop(sid, None)
        model = self._sub(sid)["model"]
        q = queues.get(model)
        if refused is None:
            if q is not None:
                q.strikes, q.waited_s = 0, 0.0
            if f is not None:
                self._file_ended(f)
            return
        report.queue_full += 1
        if q is None:
            q = queues[model] = _ModelQueue()
        self._requeue(sid, refused, f, q, bodies, failures)

    def _requeue(
        self, sid: str, refused: str, f: _File | None, q: _ModelQueue, bodies: dict[str, dict[str, Any]],
        failures: dict[str, _Failure],
    ) -> None:
        """A batch refused with token_limit_exceeded: its requests go back to the front of the
        model's queue, after one of our batches ends or a back-off."""
        from pipeline.progress import console

        sub = self._sub(sid)
        model, batch_id = sub["model"], sub["batch_id"]
        learned = limit_in(refused)
        old = self._bound(model)
        if learned is not None and (old is None or learned < old):
            self._state["queue_limits"][model] = learned  # kept for the next run too
            self._save()
        if f is None or not f.keys:
            return  # a batch of an earlier call holding none of these requests: a later call wants them
        ours = [s for s in self._unfinished() if self._sub(s)["model"] == model]
        cap = None
        q.wait_for = set(ours)  # nothing more of the model goes until one of these ends (if any)
        if ours:
            q.strikes = 0
            why = f"waiting for {len(ours)} of our {model} batch(es) to finish"
        elif learned is not None and f.tokens > learned:  # alone over the limit: cut to fit, no wait
            why = "the file alone is over the limit: it goes again cut into files that fit"
        else:
            q.strikes += 1
            delay = min(QUEUE_BACKOFF_MAX_S, self.poll_interval_s * 2 ** q.strikes)
            if q.waited_s + delay > self.queue_wait_max_s:
                self._give_up(model, f, q, refused, failures)
                return
            q.retry_at, q.waited_s = time.monotonic() + delay, q.waited_s + delay
            if q.strikes in (2, 3) and len(f.keys) > 1:
                # The service may count more than our estimate: this file and the model's next
                # files go in halves, twice at most. The queue's bound stays (a queue another
                # process held needs no lasting change), and files of one request each would make
                # thousands of batches.
                cap = self._halved[model] = max(1, (f.tokens + 1) // 2)
            why = f"none of ours queued (another process holds the queue?): again in {delay:.1f}s"
        # The refused file and the files still queued are cut again (a lower bound may have been
        # learned) and go in new waves, the refused one first.
        files = [f, *q.files]
        for g in files:
            self._leave(g)
        again = self._cut(model, f.keys, bodies, failures, cap)
        for g in files[1:]:
            again += self._cut(model, g.keys, bodies, failures) if g.tokens > (self._cap(model) or g.tokens) else [g]
        self._group(model, again)
        q.files = deque(again)
        console.print(f"[{self.label}] batch {batch_id} ({len(f.keys)} requests, ~{f.tokens:,} tokens) refused: "
                      f"{TOKEN_LIMIT_CODE} for {model}{f' (limit {learned:,})' if learned else ''}; {why}",
                      markup=False, highlight=False, soft_wrap=True)

    def _give_up(self, model: str, f: _File, q: _ModelQueue, refused: str, failures: dict[str, _Failure]) -> None:
        reason = (f"{TOKEN_LIMIT_CODE}: {refused} (the {model} queue stayed full for {q.waited_s:.0f}s with none of "
                  "our batches in it; rerun later)")
        for g in [f, *q.files]:
            for k in g.keys:
                failures[k] = _Failure(reason, False)
            self._file_ended(g)
        q.files.clear()
