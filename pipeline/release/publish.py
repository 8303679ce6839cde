"""publish_release: a verified release -> a Hugging Face dataset repo, one commit, tagged with the version."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InfirError
from pipeline.release.hub_upload import hub_call, status_of, transport_for, upload_files
from pipeline.release.verify import verify_release

log = logging.getLogger(__name__)

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
    transport: str | None = None  # how large files went: "lfs" or "xet"

    @property
    def total_bytes(self) -> int:
        return sum(b for _, b in self.files)


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
    raise InfirError("no Hugging Face token: set HF_TOKEN (a token with write access) or run `hf auth login`")


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
    upload_workers: int = 4,
) -> PublishResult:
    """Verify `path`, then upload it at the root of dataset repo `repo_id` in one commit tagged `<version>`.

    Files are uploaded one by one first (large ones by LFS or Xet, see hub_upload), each retried on its
    own, with a progress bar; then one commit holds them all, plus the deletion of an earlier version's
    files that this one does not have; then the tag. A rerun after a crash resends only what the Hub lacks.
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
    from huggingface_hub.utils import build_hf_headers

    if hf_constants.is_offline_mode():
        raise InfirError("cannot publish with HF_HUB_OFFLINE set; unset it (or use --dry-run)")
    tok = _resolve_token(token)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    import pipeline

    ident = {"library_name": "infir", "library_version": pipeline.__version__}
    api = HfApi(endpoint=endpoint, token=tok, **ident)
    kw: dict[str, Any] = {"token": tok, "attempts": attempts, "base_wait": retry_wait}

    _check_new_version(api, repo_id, version, private, kw)
    stale = _stale_files(api, repo_id, {rel for rel, _ in files}, kw)
    adds = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(release / rel)) for rel, _ in files]
    with transport_for(endpoint, repo_id, build_hf_headers(token=tok, **ident)) as transport:
        _upload_with_progress(api, repo_id, version, adds, transport, upload_workers, kw)
        message = f"Release {name} {version}"
        per = ", ".join(f"{s}: {n} rows" for s, n in report.rows_per_split.items())
        info = hub_call(
            "commit",
            lambda: api.create_commit(
                repo_id,
                operations=[*(CommitOperationDelete(path_in_repo=p) for p in stale), *adds],
                commit_message=message,
                commit_description=f"{report.rows} rows ({per}); {report.shards} shards; "
                "manifest.json lists sha256 of every file.",
                repo_type="dataset",
                revision="main",
            ),
            **kw,
        )
    oid = info.oid
    hub_call("create_tag", lambda: _tag(api, repo_id, version, oid, message), **kw)
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
        transport=transport,
    )


def _check_new_version(api: Any, repo_id: str, version: str, private: bool, kw: dict[str, Any]) -> None:
    """Create the repo if needed; refuse a version whose tag exists (a published version is immutable)."""
    hub_call("create_repo", lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True), **kw)
    refs = hub_call("list_repo_refs", lambda: api.list_repo_refs(repo_id, repo_type="dataset"), **kw)
    if any(t.name == version for t in refs.tags):
        raise InfirError(
            f"{repo_id} already has tag {version}; a published version is immutable: write a new version "
            "(`infir write --bump patch`) and publish that"
        )


def _stale_files(api: Any, repo_id: str, ours: set[str], kw: dict[str, Any]) -> list[str]:
    """Files of an earlier version under the folders a release owns, not in this one: the card's
    `data/<split>-*` globs would pick them up, so the commit deletes them (older tags keep them)."""
    info = hub_call("repo_info", lambda: api.repo_info(repo_id, repo_type="dataset", revision="main"), **kw)
    return sorted(
        s.rfilename
        for s in (info.siblings or [])
        if s.rfilename.split("/", 1)[0] in MANAGED_DIRS and "/" in s.rfilename and s.rfilename not in ours
    )


def _upload_with_progress(
    api: Any, repo_id: str, version: str, adds: list[Any], transport: str, workers: int, kw: dict[str, Any]
) -> None:
    from pipeline.progress import transfer_bar

    total = sum(op.upload_info.size for op in adds)
    log.info("uploading %d files (%d bytes) to %s through %s", len(adds), total, repo_id, transport)
    lock = threading.Lock()
    done = [0]
    with transfer_bar(f"upload {version}", total) as (bar, task):

        def on_done(op: Any) -> None:
            with lock:
                done[0] += 1
                bar.update(task, advance=op.upload_info.size, info=f"{done[0]}/{len(adds)} files")

        upload_files(api, repo_id, adds, workers=workers, on_done=on_done, **kw)


def _tag(api: Any, repo_id: str, version: str, oid: str, message: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo_id, tag=version, revision=oid, tag_message=message, repo_type="dataset")
    except HfHubHTTPError as e:
        if status_of(e) != 409:
            raise
        # already there: fine if it is ours (a retried request whose first answer was lost)
        now = api.list_repo_refs(repo_id, repo_type="dataset")
        if not any(t.name == version and t.target_commit == oid for t in now.tags):
            raise InfirError(f"{repo_id}: tag {version} was created concurrently by someone else") from None
