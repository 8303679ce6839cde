"""publish_release: a verified release -> a Hugging Face dataset repo, one commit, tagged with the version."""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import InfirError
from pipeline.release.verify import verify_release

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Top-level folders a release owns in the repo; stale files there are deleted when publishing.
MANAGED_DIRS = ("data", "triplets", "st", "plots")  # "st": where releases before the triplets config kept them


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    version: str
    tag: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, bytes)
    deleted: list[str] = field(default_factory=list)  # stale files of an earlier version removed from the repo
    dry_run: bool = False
    commit_oid: str | None = None
    commit_url: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.files)


def _status_of(exc: BaseException) -> int | None:
    resp = getattr(exc, "response", None)
    code = getattr(resp, "status_code", None)
    return code if isinstance(code, int) else None


def _is_transient(exc: BaseException) -> bool:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        return _status_of(exc) in RETRY_STATUS
    try:
        import httpx2

        if isinstance(exc, httpx2.TransportError):
            return True
    except ImportError:  # pragma: no cover - older huggingface_hub uses requests/httpx
        pass
    try:
        import httpx

        if isinstance(exc, httpx.TransportError):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "hf_***") if token else text


def _call(
    what: str,
    fn: Callable[[], T],
    token: str | None,
    attempts: int,
    base_wait: float,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run fn, retrying transient failures (5xx, 408, 429, connection) with bounded exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except InfirError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below
            if _is_transient(e) and attempt < attempts:
                wait = min(base_wait * 2 ** (attempt - 1), 30.0) * (1 + random.random() * 0.1)
                log.warning("%s failed (%s), retry %d/%d in %.1fs", what, type(e).__name__, attempt, attempts - 1, wait)
                sleep(wait)
                continue
            status = _status_of(e)
            detail = _redact(str(e).splitlines()[0] if str(e) else type(e).__name__, token)
            where = f"HTTP {status}" if status else type(e).__name__
            tries = f" after {attempt} attempts" if attempt > 1 else ""
            raise InfirError(f"Hub {what} failed{tries} ({where}): {detail}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    env = os.environ.get("HF_TOKEN")
    if env:
        return env
    from huggingface_hub import get_token

    cached = get_token()
    if cached:
        return cached
    raise InfirError("no Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login`")


def publish_release(
    path: Path | str,
    repo_id: str,
    token: str | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    private: bool = False,
    *,
    attempts: int = 4,
    retry_wait: float = 1.0,
) -> PublishResult:
    """Verify `path`, then upload it at the root of dataset repo `repo_id` in one commit tagged `<version>`.

    Refuses if the tag already exists. `dry_run` verifies and lists files/sizes without any HTTP request.
    Token: `token`, else HF_TOKEN, else huggingface_hub's login cache; it is only sent as a bearer header.
    """
    release = Path(path)
    report = verify_release(release)
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise InfirError(f"invalid repo id {repo_id!r}: expected 'namespace/name'")
    version, name = report.version, report.name
    files = list(report.files)
    if dry_run:
        return PublishResult(repo_id=repo_id, version=version, tag=version, files=files, dry_run=True)

    import huggingface_hub.constants as hf_constants
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    if hf_constants.is_offline_mode():
        raise InfirError("cannot publish with HF_HUB_OFFLINE set; unset it (or use --dry-run)")
    tok = _resolve_token(token)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    import pipeline

    api = HfApi(endpoint=endpoint, token=tok, library_name="infir", library_version=pipeline.__version__)
    kw: dict[str, Any] = {"token": tok, "attempts": attempts, "base_wait": retry_wait}

    _call("create_repo", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True), **kw)
    refs = _call("list_repo_refs", lambda: api.list_repo_refs(repo_id, repo_type="dataset"), **kw)
    if any(t.name == version for t in refs.tags):
        raise InfirError(
            f"{repo_id} already has tag {version}; a published version is immutable: write a new version "
            "(`infir write --bump patch`) and publish that"
        )

    message = f"Release {name} {version}"
    per = ", ".join(f"{s}: {n} rows" for s, n in report.rows_per_split.items())
    description = f"{report.rows} rows ({per}); {report.shards} shards; manifest.json lists sha256 of every file."

    # Files of an earlier version under the folders a release owns would be picked up by the card's
    # `data/<split>-*` globs: delete those not in this release, in the same commit.
    info = _call("repo_info", lambda: api.repo_info(repo_id, repo_type="dataset", revision="main"), **kw)
    ours = {rel for rel, _ in files}
    stale = sorted(
        s.rfilename
        for s in (info.siblings or [])
        if s.rfilename.split("/", 1)[0] in MANAGED_DIRS and "/" in s.rfilename and s.rfilename not in ours
    )

    def commit() -> Any:
        ops: list[Any] = [CommitOperationDelete(path_in_repo=p) for p in stale]
        ops += [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(release / rel)) for rel, _ in files]
        return api.create_commit(
            repo_id,
            operations=ops,
            commit_message=message,
            commit_description=description,
            repo_type="dataset",
            revision="main",
        )

    info = _call("commit", commit, **kw)
    oid = info.oid
    def tag() -> None:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            api.create_tag(repo_id, tag=version, revision=oid, tag_message=message, repo_type="dataset")
        except HfHubHTTPError as e:
            if _status_of(e) != 409:
                raise
            # already there: fine if it is ours (a retried request whose first answer was lost)
            now = api.list_repo_refs(repo_id, repo_type="dataset")
            if not any(t.name == version and t.target_commit == oid for t in now.tags):
                raise InfirError(f"{repo_id}: tag {version} was created concurrently by someone else") from None

    _call("create_tag", tag, **kw)
    log.info("published %s %s to %s at %s", name, version, repo_id, oid)
    return PublishResult(
        repo_id=repo_id,
        version=version,
        tag=version,
        files=files,
        deleted=stale,
        dry_run=False,
        commit_oid=oid,
        commit_url=getattr(info, "commit_url", None),
    )
