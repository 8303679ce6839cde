"""publish_release against the local test hub (tests/hub_server.py): no network, no real token."""

from __future__ import annotations

import hashlib
import shutil
import uuid
from pathlib import Path

import pytest

try:
    from hub_lfs import pointer
    from hub_server import HubServer
except ImportError:  # tests/ imported as a package
    from tests.hub_lfs import pointer
    from tests.hub_server import HubServer
from pipeline.errors import InfirError
from pipeline.release import publish_release, write_release
from release_fixtures import synthetic_accepted_table, synthetic_stats

REPO = "infir-org/inf-ir-sample"


@pytest.fixture(autouse=True)
def _online_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    # keep any login cache out of reach, and any file huggingface_hub might write inside tmp_path
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"), raising=False)


@pytest.fixture(scope="module")
def _built_release(tmp_path_factory) -> Path:
    table = synthetic_accepted_table(rows=40, queries=30)
    root = tmp_path_factory.mktemp("built") / "releases"
    return write_release(table, synthetic_stats(40), root, "inf-ir", st_export=True).path


@pytest.fixture()
def release(_built_release, tmp_path) -> Path:
    """A fresh copy per test (tests may tamper with it) under tmp_path/releases/."""
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    dest = tmp_path / "releases" / "inf-ir" / "1.0.0"
    shutil.copytree(_built_release, dest)
    return dest


@pytest.fixture()
def token() -> str:
    return f"hf_test_{uuid.uuid4().hex}"


def _scan_for(root: Path, needle: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def test_publish_delivers_release_commit_and_tag(release, token, tmp_path):
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        res = publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        assert hub.unhandled == []
        repo = hub.repo(REPO)
        local = {p.relative_to(release).as_posix(): p.read_bytes() for p in release.rglob("*") if p.is_file()}
        assert {"README.md", "manifest.json", "plots/lengths.png", "plots/rejections.png"} <= set(local)
        assert sum(k.startswith("data/") for k in local) == 3
        for rel, data in local.items():
            assert hub.read(REPO, rel) == data, f"{rel} not delivered intact"
        commit = repo.commits[-1]
        assert commit.message == "Release inf-ir 1.0.0"
        assert set(commit.added) == set(local)  # one commit with every file
        assert res.commit_oid == commit.oid and res.tag == "1.0.0" and not res.dry_run
        assert repo.tags["1.0.0"][0] == commit.oid
        assert hub.validated_yaml and hub.validated_yaml[0] == local["README.md"].decode()
        assert not repo.private

        # Parquet and PNG files (the repo's .gitattributes) went through LFS: the commit holds their pointers,
        # the store the objects; README and manifest went inline, as regular files
        big = {rel for rel in local if rel.endswith((".parquet", ".png"))}
        assert res.transport == "lfs" and big and set(commit.lfs) == big
        for rel in big:
            oid = hashlib.sha256(local[rel]).hexdigest()
            assert commit.lfs[rel] == (oid, len(local[rel]))
            assert commit.added[rel] == pointer(oid, len(local[rel]))
        assert sorted(oid for _, oid, _ in hub.lfs_uploads) == sorted(hashlib.sha256(local[r]).hexdigest() for r in big)
        assert commit.added["README.md"] == local["README.md"] and commit.added["manifest.json"] == local["manifest.json"]

        # the token travels only as a bearer header to the Hub API; never to the storage host
        storage = [r for r in hub.requests if r.storage]
        assert len(storage) == len(big) and all(r.method == "PUT" and r.status == 200 for r in storage)
        for req in hub.requests:
            if req.storage:
                assert "authorization" not in req.headers
            else:
                assert req.headers.get("authorization") == f"Bearer {token}"
            others = {k: v for k, v in req.headers.items() if k != "authorization"}
            assert token not in str(others) and token not in req.path and token not in str(req.query)
            assert token.encode() not in req.body

        # a published version is immutable
        n = len(hub.requests)
        with pytest.raises(InfirError, match="already has tag 1.0.0"):
            publish_release(release, REPO, token=token, endpoint=hub.endpoint)
        assert not any(r.path.endswith("/commit/main") for r in hub.requests[n:])
        assert len(repo.commits) == 2  # initial + release

    assert _scan_for(tmp_path, token) == []


def test_token_from_env_and_private(release, token, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", token)
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # endpoint from the environment too
        publish_release(release, REPO, private=True, retry_wait=0.01)
        assert hub.repo(REPO).private
        assert all(r.headers.get("authorization") == f"Bearer {token}" for r in hub.requests if not r.storage)
    assert _scan_for(tmp_path, token) == []


def test_no_token_refuses(release):
    with HubServer() as hub:
        with pytest.raises(InfirError, match="no Hugging Face token"):
            publish_release(release, REPO, endpoint=hub.endpoint)
        assert hub.requests == []


def test_dry_run_makes_no_request(release, token):
    with HubServer() as hub:
        res = publish_release(release, REPO, token=token, endpoint=hub.endpoint, dry_run=True)
        assert hub.requests == []
    assert res.dry_run and res.commit_oid is None and res.tag == "1.0.0"
    on_disk = {p.relative_to(release).as_posix(): p.stat().st_size for p in release.rglob("*") if p.is_file()}
    assert dict(res.files) == on_disk
    assert res.total_bytes == sum(on_disk.values())
    # no endpoint reachable at all: still fine
    publish_release(release, REPO, token=token, endpoint="http://127.0.0.1:9", dry_run=True)


def test_transient_errors_are_retried(release, token):
    with HubServer() as hub:
        hub.fail("POST", r"/api/repos/create$", 503, times=1)
        hub.fail("POST", r"/commit/main$", 502, times=2)
        hub.fail("POST", r"/tag/", 500, times=1)
        res = publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        assert hub.repo(REPO).tags["1.0.0"][0] == res.commit_oid
        assert len(hub.repo(REPO).commits) == 2


def test_retries_are_bounded_and_errors_clean(release, token):
    with HubServer() as hub:
        hub.fail("POST", r"/api/repos/create$", 503, times=100)
        with pytest.raises(InfirError, match=r"create_repo failed after 3 attempts \(HTTP 503\)") as ei:
            publish_release(release, REPO, token=token, endpoint=hub.endpoint, attempts=3, retry_wait=0.01)
        assert token not in str(ei.value)
        assert sum(r.path == "/api/repos/create" for r in hub.requests) == 3


def test_non_transient_error_is_not_retried(release, token):
    with HubServer() as hub:
        hub.fail("GET", r"/refs$", 403, times=100)
        with pytest.raises(InfirError, match="list_repo_refs failed \\(HTTP 403\\)"):
            publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        assert sum(r.path.endswith("/refs") for r in hub.requests) == 1


def test_connection_error_is_retried_then_reported(release, token):
    # nothing listens on port 9: connection refused on every attempt
    with pytest.raises(InfirError, match="create_repo failed after 2 attempts"):
        publish_release(release, REPO, token=token, endpoint="http://127.0.0.1:9", attempts=2, retry_wait=0.01)


def test_bad_release_is_not_published(release, token):
    shard = next((release / "data").glob("train-*.parquet"))
    shard.write_bytes(shard.read_bytes() + b"x")
    with HubServer() as hub:
        with pytest.raises(InfirError, match=shard.name):
            publish_release(release, REPO, token=token, endpoint=hub.endpoint)
        assert hub.requests == []


def test_offline_mode_refuses(release, token, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with HubServer() as hub:
        with pytest.raises(InfirError, match="HF_HUB_OFFLINE"):
            publish_release(release, REPO, token=token, endpoint=hub.endpoint)
        assert hub.requests == []


def test_next_version_replaces_stale_shards(tmp_path, token):
    table = synthetic_accepted_table(rows=40, queries=30)
    root = tmp_path / "releases"
    v1 = write_release(table, synthetic_stats(40), root, "inf-ir", max_rows_per_shard=10).path
    v2 = write_release(table, synthetic_stats(40), root, "inf-ir", bump="minor").path  # one shard per split
    with HubServer() as hub:
        publish_release(v1, REPO, token=token, endpoint=hub.endpoint)
        assert sum(p.startswith("data/train-") for p in hub.repo(REPO).files) > 1
        res = publish_release(v2, REPO, token=token, endpoint=hub.endpoint)
        repo = hub.repo(REPO)
        data_files = sorted(p for p in repo.files if p.startswith("data/"))
        assert data_files == sorted(p.relative_to(v2).as_posix() for p in (v2 / "data").iterdir())
        assert res.deleted and all(p.startswith("data/") for p in res.deleted)
        assert set(repo.tags) == {"1.0.0", "1.1.0"}
        assert repo.commits[-1].message == "Release inf-ir 1.1.0"
        assert hub.unhandled == []


@pytest.fixture()
def hf_single_try(monkeypatch):
    """huggingface_hub retries each request itself (5 times, 1-8 s apart) before infir sees a failure;
    turn that off so these tests observe infir's own per-file retries, in milliseconds."""
    from huggingface_hub.utils import http_backoff

    monkeypatch.setitem(http_backoff.__kwdefaults__, "max_retries", 0)


def test_a_failed_file_upload_is_retried_alone(release, token, tmp_path, hf_single_try):
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        hub.fail("PUT", r"^/upload/", 503, times=2)  # the storage host drops two object uploads
        res = publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        puts = [r for r in hub.requests if r.storage and r.method == "PUT"]
        lfs = hub.repo(REPO).commits[-1].lfs
        assert [r.status for r in puts].count(503) == 2 and [r.status for r in puts].count(200) == len(lfs)
        # each failed file was asked for again (preupload + batch) on its own; the others went once
        batches = [o for b in hub.lfs_batches for o in b["asked"]]
        assert len(batches) == len(lfs) + 2 and len(set(batches)) == len(lfs)
        assert sorted(o for _, o, _ in hub.lfs_uploads) == sorted(oid for oid, _ in lfs.values())
        assert hub.repo(REPO).tags["1.0.0"][0] == res.commit_oid and len(hub.repo(REPO).commits) == 2


def test_a_file_that_keeps_failing_stops_the_publish_cleanly(release, token, tmp_path, hf_single_try):
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        hub.fail("PUT", r"^/upload/", 503, times=1000)
        with pytest.raises(InfirError, match=r"Hub upload of \S+ failed after 3 attempts \(HTTP 503\)") as ei:
            publish_release(release, REPO, token=token, endpoint=hub.endpoint, attempts=3, retry_wait=0.01)
        assert token not in str(ei.value)
        assert len(hub.repo(REPO).commits) == 1 and not hub.repo(REPO).tags  # nothing half-committed


def test_a_corrupt_upload_is_refused_by_the_hub_and_not_committed(release, token, tmp_path, monkeypatch):
    # the store checks each object against the sha256 and size it was announced with: other bytes get 400
    from huggingface_hub import lfs
    from huggingface_hub.utils import get_session, hf_raise_for_status

    def corrupting(operation, upload_url):
        hf_raise_for_status(get_session().put(upload_url, content=b"not the shard"))

    monkeypatch.setattr(lfs, "_upload_single_part", corrupting)
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        with pytest.raises(InfirError, match=r"Hub upload of \S+ failed \(HTTP 400\)"):
            publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        assert hub.lfs_uploads == [] and len(hub.repo(REPO).commits) == 1


def test_xet_only_where_the_hub_offers_it(httpserver, tmp_path):
    import huggingface_hub.constants as hf_constants

    from pipeline.release.hub_upload import transport_for, xet_offered

    repo_path = "/api/datasets/o/n/xet-write-token/main"
    httpserver.expect_request(repo_path).respond_with_data(
        "", headers={"X-Xet-Cas-Url": "https://cas.example", "X-Xet-Access-Token": "t", "X-Xet-Token-Expiration": "9999999999"}
    )
    assert xet_offered(httpserver.url_for("").rstrip("/"), "o/n", {})
    with HubServer() as hub:
        assert not xet_offered(hub.endpoint, "o/n", {})  # the test hub: 404, Xet not offered
        before = hf_constants.HF_HUB_DISABLE_XET
        with transport_for(hub.endpoint, "o/n", {}) as transport:
            assert transport == "lfs"
            assert hf_constants.HF_HUB_DISABLE_XET  # huggingface_hub will not try Xet for this upload
        assert hf_constants.HF_HUB_DISABLE_XET == before
    assert not xet_offered("http://127.0.0.1:9", "o/n", {})  # unreachable: no Xet (the upload then reports)


def test_upload_progress_on_a_terminal(release, token, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import pipeline.progress

    out = io.StringIO()
    monkeypatch.setattr(pipeline.progress, "console", Console(file=out, force_terminal=True, width=160))
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        res = publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
    text = out.getvalue()
    n = len(res.files)
    assert "upload 1.0.0" in text and f"{n}/{n} files" in text
    assert token not in text


def test_rerun_after_a_failure_between_commit_and_tag_tags_the_same_commit(release, token, tmp_path):
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        hub.fail("POST", r"/tag/", 403, times=1)  # not transient: the first publish stops after its commit
        with pytest.raises(InfirError, match=r"create_tag failed \(HTTP 403\)"):
            publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        repo = hub.repo(REPO)
        assert len(repo.commits) == 2 and not repo.tags
        uploaded = len(hub.lfs_uploads)
        res = publish_release(release, REPO, token=token, endpoint=hub.endpoint, retry_wait=0.01)
        # every file is already there (LFS ones compared by sha256): no upload, no second commit, just the tag
        assert len(hub.lfs_uploads) == uploaded and len(repo.commits) == 2
        assert repo.tags["1.0.0"][0] == repo.head == res.commit_oid
