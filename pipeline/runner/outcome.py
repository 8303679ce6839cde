"""What a finished command tells a script: its exit status (README, "Exit status").

`infir build` and `infir <stage>` that finish with rows failed in a stage (an answer that never
came, a request the server refused: a rerun sends them again) exit with FAILED_ROWS, distinct from
success and from an error, so a scheduler does not take a partial corpus for a finished one.
"""

from __future__ import annotations

OK = 0
INTERNAL_ERROR = 1  # a bug: one line, the traceback behind --debug
ERROR = 2  # an InfirError (config, input, a stopped stage) or the machine's OSError
FAILED_ROWS = 3  # finished, but some rows failed in a stage: rerun the same command to retry them
INTERRUPTED = 130  # Ctrl-C / SIGINT (128 + 2, the shell's convention)

INTERRUPTED_LINE = "interrupted; rerun the same command to resume (finished shards and paid answers are kept)"


def failed_by_stage(results: list) -> dict[str, int]:
    """{stage: rows failed in it} of the stages run (or skipped as finished) that hold any."""
    from pipeline.store.shards import failed_rows  # here: `infir --version` must not load pyarrow

    out = {}
    for r in results:
        n = failed_rows(r.success or {})
        if n:
            out[r.stage] = n
    return out


def finished(results: list, what: str) -> tuple[int, str | None]:
    """(exit status, the line to print or None) for `what` ("build", a stage name) that finished
    with `results` (`StageResult`s)."""
    failed = failed_by_stage(results)
    if not failed:
        return OK, None
    total = sum(failed.values())
    where = ", ".join(f"{stage} {n:,}" for stage, n in failed.items())
    return FAILED_ROWS, (f"{what}: finished with {total:,} failed row(s) ({where}); "
                         f"rerun the same command to retry them (exit status {FAILED_ROWS})")
