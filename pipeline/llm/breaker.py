"""The breaker: a client whose first answers are all the same error stops sending.

A server that refuses every request the same way (llama-cpp-python's server answers our
`json_schema` response_format with HTTP 500, an unknown parameter gets HTTP 400 on every row) would
otherwise take every row of a stage, with every retry, into the same wall and end with every row
failed and no line saying why. The rule, `llm.stop_after_same_errors = N` (0: off):

- it counts HTTP ANSWERS (attempts that got a status back), not tasks: 5 rows x 6 attempts of the
  same 500 are 30 answers, so with N = 20 the 20th stops the stage, where counting finished tasks
  would never reach 20 on 5 rows and would wait for every retry of 20 rows first;
- the first N answers must ALL be the same: the same non-retryable error, or the same 5xx (status
  and message). One success or one different answer among them disarms it for the client's life
  (a later run of errors is a server having a bad minute: retries and failed rows handle that);
- not answers, so neither counted nor disarming: timeouts and dropped connections (no answer),
  429s (pacing, not the request), fatal errors (they stop the client on their own);
- when it trips it sets `client.stop_reason` to one line quoting the server's message and, where
  known, the setting to try; the runner turns that into "stopped: ...; rerun to resume".
A client serves one stage (verify's two judges share one), so this is "the first N answers of a
stage"; with the Ray executor each worker's client counts its own answers.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pipeline.llm.types import BackendError

log = logging.getLogger(__name__)

_FORM_WORDS = re.compile(r"response_format|json_schema|json_object|\bschema\b", re.IGNORECASE)
_MAX_QUOTE = 300


_SDK_PREFIX = re.compile(r"^Error code: \d+ - ")


def _quote(message: str) -> str:
    """The server's message on one line: its first paragraph (llama-cpp-python appends where in its
    code the error came from), without the SDK's "Error code: 500 - " (the status is said before
    it), cut to a readable length."""
    first = str(message).strip().split("\n\n", 1)[0]
    one = _SDK_PREFIX.sub("", " ".join(first.split()))
    return one if len(one) <= _MAX_QUOTE else one[: _MAX_QUOTE - 3] + "..."


def setting_hint(status: int | None, message: str, structured_output: str) -> str:
    """The setting to try for a wall, or "" when we do not know one. A message naming the
    response format points at `llm.structured_output`; so does a uniform 5xx while the default
    `json_schema` form is sent (the form a server most often cannot take: llama-cpp-python answers
    it with a 500 that may not say so). A 4xx that names something else is another problem."""
    other = "json_object" if structured_output == "json_schema" else "json_schema"
    if _FORM_WORDS.search(message or ""):
        return f'try llm.structured_output = "{other}"'
    if structured_output == "json_schema" and status is not None and status >= 500:
        return f'if the server does not take the json_schema response_format, try llm.structured_output = "{other}"'
    return ""


class Breaker:
    """Watches a client's HTTP answers; `answer(client, err)` after each attempt (err None: a
    success). Event-loop code only: the client calls it from its one loop."""

    def __init__(self, limit: int, structured_output: str = "json_schema"):
        self.limit = max(0, int(limit))
        self.structured_output = structured_output
        self.armed = self.limit > 0
        self.first: tuple[int | None, str] | None = None
        self.count = 0

    @classmethod
    def of(cls, settings: Any) -> Breaker:
        return cls(getattr(settings, "stop_after_same_errors", 20), getattr(settings, "structured_output", "json_schema"))

    def answer(self, client: Any, err: BackendError | None) -> None:
        """Record one attempt's outcome; trips by setting `client.stop_reason`."""
        if not self.armed:
            return
        if err is None:
            self.armed = False  # a success among the first N: this server is not a wall
            return
        if not self._is_wall_answer(err):
            if err.kind == "status" and err.status != 429 and not err.fatal:
                self.armed = False  # a different kind of HTTP answer (e.g. a retryable 408)
            return
        sig = (err.status, err.message)
        if self.first is None:
            self.first = sig
        elif sig != self.first:
            self.armed = False
            return
        self.count += 1
        if self.count >= self.limit:
            self.armed = False
            reason = self.reason(err)
            if getattr(client, "stop_reason", None) is None:
                client.stop_reason = reason
                # info, not error: the runner prints the reason as the stage's one error line
                log.info("LLM client: %s; no further requests are sent", reason)

    @staticmethod
    def _is_wall_answer(err: BackendError) -> bool:
        """An HTTP answer that is the same for every request: a non-retryable error or a 5xx."""
        if err.kind != "status" or err.fatal or err.status == 429:
            return False
        return not err.retryable or (err.status is not None and err.status >= 500)

    def reason(self, err: BackendError) -> str:
        status = f"HTTP {err.status}" if err.status else "error"
        hint = setting_hint(err.status, err.message, self.structured_output)
        return (f"the server's first {self.count} answers were all the same error, {status}: "
                f"{_quote(err.message)}" + (f"; {hint}" if hint else "")
                + " (llm.stop_after_same_errors)")
