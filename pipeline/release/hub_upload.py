"""Talking to the Hub for publish: bounded retries of transient failures (tenacity), and uploading a
release's files one by one (each retried on its own, with progress) before the single commit.

How a file travels: huggingface_hub asks the Hub's preupload endpoint for each file's mode. "regular"
files (README, manifest) go inline in the commit. "lfs" files (Parquet shards, plots: the repo's
.gitattributes marks them; anything over 10 MB too) are uploaded first, by Xet when `hf_xet` is
importable and the Hub offers it, otherwise by the LFS batch API (basic transfer: PUT to a presigned
URL, then verify); the commit then only carries their sha256 pointers.

Resume: the Hub keeps an uploaded object whether or not a commit followed, and its LFS batch API answers
"already present" for an object it has (Xet likewise deduplicates by content), so a publish that died
half way re-hashes the files and sends only what is missing.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from pipeline.errors import InfirError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_WAIT_S = 30.0


def status_of(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and what it wraps: huggingface_hub re-raises a failed LFS upload as RuntimeError(...) from the cause."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):  # huggingface_hub 2.x uses httpx2, 1.x httpx
        try:
            out.append(__import__(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(out)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: 408/429/5xx answers and connection-level failures (anywhere in the cause chain)."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    transport = _transport_errors()
    for e in _causes(exc):
        if isinstance(e, (InfirError, OfflineModeIsEnabled)):
            return False
        if isinstance(e, HfHubHTTPError):
            return status_of(e) in RETRY_STATUS
        if isinstance(e, transport):
            return True
    return False


def redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def _first_line(exc: BaseException, token: str | None) -> str:
    """The most specific message in the chain (the HTTP error, not huggingface_hub's wrapper), one line."""
    chain = list(_causes(exc))
    pick = next((e for e in chain if status_of(e) is not None), chain[-1])
    text = str(pick).strip().splitlines()[0] if str(pick).strip() else type(pick).__name__
    return redact(text, token)


def hub_call(
    what: str,
    fn: Callable[[], T],
    token: str | None,
    attempts: int,
    base_wait: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run fn, retrying transient failures with bounded exponential backoff (tenacity); any failure
    left becomes one InfirError line naming the step, the HTTP status and the attempts (token redacted)."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait_s = state.next_action.sleep if state.next_action else 0.0
        log.warning("%s failed (%s), retry %d/%d in %.1fs", what, type(exc).__name__, state.attempt_number,
                    attempts - 1, wait_s)

    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=base_wait, max=MAX_WAIT_S) + wait_random(0, base_wait * 0.1),
        retry=retry_if_exception(is_transient),
        sleep=sleep,
        reraise=True,
        before_sleep=before_sleep,
    )
    try:
        return retrying(fn)
    except InfirError:
        raise
    except Exception as e:  # noqa: BLE001 - reported as one line below
        tries = retrying.statistics.get("attempt_number", 1)
        status = next((status_of(c) for c in _causes(e) if status_of(c) is not None), None)
        where = f"HTTP {status}" if status else type(e).__name__
        after = f" after {tries} attempts" if tries > 1 else ""
        raise InfirError(f"Hub {what} failed{after} ({where}): {_first_line(e, token)}") from None


def xet_offered(endpoint: str, repo_id: str, headers: dict[str, str]) -> bool:
    """Does the Hub hand out Xet write tokens for this repo? huggingface_hub 2.x picks Xet by itself
    whenever hf_xet is importable and, if the server has no Xet, fails instead of falling back to LFS;
    asking the very endpoint hf_xet would call first lets a Hub without Xet get plain LFS uploads."""
    from huggingface_hub.utils import get_session

    try:
        resp = get_session().get(f"{endpoint}/api/datasets/{repo_id}/xet-write-token/main", headers=headers)
    except Exception as e:  # noqa: BLE001 - a probe: no answer means no Xet
        log.info("Xet probe failed (%s): uploading through LFS", type(e).__name__)
        return False
    return resp.status_code == 200 and "X-Xet-Cas-Url" in resp.headers


@contextlib.contextmanager
def transport_for(endpoint: str, repo_id: str, headers: dict[str, str]) -> Iterator[str]:
    """Yields "xet" or "lfs": the way large files will go. Where hf_xet is installed but the Hub offers no
    Xet, huggingface_hub's own switch (constants.HF_HUB_DISABLE_XET, read at each upload) is set for the
    duration, and restored after."""
    import importlib.util

    import huggingface_hub.constants as hf_constants

    # huggingface_hub's own test (utils._runtime.is_xet_available, not exported): hf_xet importable and
    # HF_HUB_DISABLE_XET unset
    if getattr(hf_constants, "HF_HUB_DISABLE_XET", False) or importlib.util.find_spec("hf_xet") is None:
        yield "lfs"
        return
    if xet_offered(endpoint, repo_id, headers):
        yield "xet"
        return
    before = hf_constants.HF_HUB_DISABLE_XET
    hf_constants.HF_HUB_DISABLE_XET = True
    try:
        yield "lfs"
    finally:
        hf_constants.HF_HUB_DISABLE_XET = before


@contextlib.contextmanager
def _hf_bars_off() -> Iterator[None]:
    """huggingface_hub's tqdm bars off while ours runs (one display, on stderr, only on a terminal)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def upload_files(
    api: Any,
    repo_id: str,
    additions: list[Any],
    *,
    token: str | None,
    attempts: int,
    base_wait: float,
    workers: int = 4,
    on_done: Callable[[Any], None] = lambda op: None,
) -> None:
    """Preupload every CommitOperationAdd (LFS/Xet files are sent, regular ones get their mode), each in
    its own retried call on a small thread pool. The first file that fails for good stops the rest."""

    def one(op: Any) -> None:
        hub_call(
            f"upload of {op.path_in_repo}",
            lambda: api.preupload_lfs_files(
                repo_id, additions=[op], repo_type="dataset", revision="main", num_threads=1
            ),
            token=token,
            attempts=attempts,
            base_wait=base_wait,
        )
        on_done(op)

    with _hf_bars_off(), ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="hub-upload") as pool:
        futures = [pool.submit(one, op) for op in additions]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            raise failed.exception()  # type: ignore[misc]
