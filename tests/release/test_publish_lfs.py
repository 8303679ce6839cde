"""Publishing through the Hub's real upload path (LFS batch API, presigned PUT, verify, pointers), against
the local test hub (tests/hub_server.py): a shard over 20 MB goes by LFS and comes back intact; a publish
killed after its first object resumes without re-sending it; a new version keeps the old one by its tag."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

try:
    from hub_lfs import pointer
    from hub_server import HubServer
except ImportError:  # tests/ imported as a package
    from tests.hub_lfs import pointer
    from tests.hub_server import HubServer
from pipeline.release import publish_release, write_release
from release_fixtures import synthetic_accepted_table, synthetic_stats

REPO = "infir-org/inf-ir-lfs"
TOKEN = "hf_test_lfs_0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _online_hub(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"), raising=False)


def _files(release: Path) -> dict[str, bytes]:
    return {p.relative_to(release).as_posix(): p.read_bytes() for p in release.rglob("*") if p.is_file()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download(hub: HubServer, repo_id: str, filename: str, revision: str, cache: Path) -> bytes:
    """Through huggingface_hub, as a user would: HEAD + GET on resolve/, LFS files redirected to storage."""
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision, endpoint=hub.endpoint,
                           token=TOKEN, cache_dir=str(cache))
    return Path(path).read_bytes()


def test_shard_over_20mb_goes_by_lfs_and_comes_back_intact(tmp_path):
    # 40 rows whose passages are ~1.2 MB of random base64 (incompressible: Parquet's zstd cannot shrink it
    # below 6 bits a character), so the train shard is well over 20 MB; generated here, never committed
    table = synthetic_accepted_table(rows=40, queries=30)
    docs = [base64.b64encode(os.urandom(900_000)).decode() for _ in range(table.num_rows)]
    i = table.schema.get_field_index("document_positive")
    table = table.set_column(i, "document_positive", pa.array(docs, pa.string()))
    release = write_release(table, synthetic_stats(40), tmp_path / "releases", "inf-ir").path
    big = max((release / "data").glob("*.parquet"), key=lambda p: p.stat().st_size)
    data = big.read_bytes()
    rel = big.relative_to(release).as_posix()
    assert len(data) > 20 * 1024 * 1024

    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        res = publish_release(release, REPO, token=TOKEN, endpoint=hub.endpoint, retry_wait=0.01)
        assert res.transport == "lfs" and hub.unhandled == []
        # the LFS path: announced to the batch API, PUT to storage (sha256 and size checked there), verified,
        # and the commit carries the pointer, not the bytes
        assert (REPO, _sha(data), len(data)) in hub.lfs_uploads
        assert any(_sha(data) in b["upload"] for b in hub.lfs_batches)
        assert any(r.path.endswith(".git/info/lfs/objects/verify") and r.status == 200 for r in hub.requests)
        commit = hub.repo(REPO).commits[-1]
        assert commit.lfs[rel] == (_sha(data), len(data))
        assert commit.added[rel] == pointer(_sha(data), len(data))
        stored = tmp_path / "hub-lfs" / "dataset" / REPO / _sha(data)
        assert stored.stat().st_size == len(data)  # the object store is on disk, under this test's tmp dir

        n = len(hub.requests)
        back = _download(hub, REPO, rel, res.tag, tmp_path / "dl")
        assert _sha(back) == _sha(data)
        assert any(r.storage and r.method == "GET" for r in hub.requests[n:])  # served from storage via 302
    assert pq.read_table(pa.BufferReader(back)).num_rows == pq.read_metadata(big).num_rows


def _publish_cmd(release: Path, endpoint: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "publish", str(release), "--repo", REPO, "--endpoint", endpoint]


def _child_env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf-home")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env.pop("HF_ENDPOINT", None)
    return env


def test_publish_killed_after_first_object_resumes_without_resending(tmp_path):
    table = synthetic_accepted_table(rows=40, queries=30)
    release = write_release(table, synthetic_stats(40), tmp_path / "releases", "inf-ir", st_export=True).path
    local = _files(release)
    lfs_oids = {_sha(b) for rel, b in local.items() if rel.endswith((".parquet", ".png"))}
    assert len(lfs_oids) >= 4
    env = _child_env(tmp_path)

    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        stored_one = hub.lfs.hold_after(1)  # the first object is stored, the uploads after it wait
        proc = subprocess.Popen(_publish_cmd(release, hub.endpoint), cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert stored_one.wait(timeout=120), "the publish never uploaded an LFS object"
        finally:
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
        hub.lfs.release()
        (_, first, _), = hub.lfs_uploads
        repo = hub.repo(REPO)
        assert len(repo.commits) == 1 and not repo.tags  # killed before any commit

        n_req, n_batch = len(hub.requests), len(hub.lfs_batches)
        rerun = subprocess.run(_publish_cmd(release, hub.endpoint), cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
        # only the missing objects were uploaded: the stored one was asked about, answered "present", not re-sent
        resent = [oid for _, oid, _ in hub.lfs_uploads[1:]]
        assert sorted(resent) == sorted(lfs_oids - {first})
        batches = hub.lfs_batches[n_batch:]
        assert first in {o for b in batches for o in b["asked"]}
        assert first not in {o for b in batches for o in b["upload"]}
        puts = [r for r in hub.requests[n_req:] if r.storage and r.method == "PUT"]
        assert len(puts) == len(lfs_oids) - 1

        # the same commit content and tag as a publish that was never interrupted
        publish_release(release, REPO + "-ref", token=TOKEN, endpoint=hub.endpoint, retry_wait=0.01)
        ref = hub.repo(REPO + "-ref")
        assert set(repo.tags) == set(ref.tags) == {"1.0.0"}
        assert repo.tree("1.0.0") == ref.tree("1.0.0")
        assert len(repo.commits) == 2
        for rel, data in local.items():
            assert hub.read(REPO, rel, "1.0.0") == data
    assert TOKEN not in out.decode() + err.decode() + rerun.stdout + rerun.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()] == []


def test_new_version_replaces_files_and_old_version_stays_loadable_by_tag(tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError

    root = tmp_path / "releases"
    v1 = write_release(synthetic_accepted_table(40, 30, seed=1), synthetic_stats(40), root, "inf-ir",
                       max_rows_per_shard=10).path
    v2 = write_release(synthetic_accepted_table(40, 30, seed=2), synthetic_stats(40), root, "inf-ir", bump="patch").path
    assert (v1.name, v2.name) == ("1.0.0", "1.0.1")
    with HubServer(lfs_dir=tmp_path / "hub-lfs") as hub:
        publish_release(v1, REPO, token=TOKEN, endpoint=hub.endpoint, retry_wait=0.01)
        res = publish_release(v2, REPO, token=TOKEN, endpoint=hub.endpoint, retry_wait=0.01)
        repo = hub.repo(REPO)
        assert len(repo.commits) == 3 and repo.commits[-1].oid == res.commit_oid  # 1.0.1 is one commit
        assert set(repo.tags) == {"1.0.0", "1.0.1"} and repo.tags["1.0.1"][0] == repo.head
        only_v1 = sorted(set(_files(v1)) - set(_files(v2)))
        assert only_v1 and set(res.deleted) == set(only_v1)

        api = HfApi(endpoint=hub.endpoint, token=TOKEN)
        for version, release in (("1.0.0", v1), ("1.0.1", v2), ("main", v2)):
            local = _files(release)
            listed = {s.rfilename for s in api.dataset_info(REPO, revision=version).siblings} - {".gitattributes"}
            assert listed == set(local), version
            for rel in sorted(local):
                back = _download(hub, REPO, rel, version, tmp_path / "dl")
                assert back == local[rel], f"{rel} at {version}"
            shards = sorted(rel for rel in local if rel.startswith("data/train-"))
            rows = sum(pq.read_table(release / rel).num_rows for rel in shards)
            assert rows > 0
        with pytest.raises(EntryNotFoundError):  # gone from main, still there at 1.0.0 (above)
            _download(hub, REPO, only_v1[0], "main", tmp_path / "dl")
