"""Hugging Face Hub dataset names as a source (`source.format = "hf"`): a pinned revision reads that
revision's rows, not the main branch's; rows are streamed (no Arrow copy of the dataset in the
datasets cache) unless `streaming = false`; an unpinned name is read with a warning; the summary
records name, config, split and revision. Through the real `datasets` / `huggingface_hub` clients
and the real CLI against the local test Hub (tests/hub_server.py, `HF_ENDPOINT`): no network.

The test Hub serves what publishing needs; dataset loading also lists a revision's files
(`GET /api/datasets/{repo}/tree/{rev}/{path}`) and reads them by byte range: `DatasetHub` adds both."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from conftest import run_infir
from hub_lfs import git_blob_oid
from hub_server import HubServer
from test_formats import SAMPLE_ROWS, sample_tables

REPO_ID = "org/sample-ir"
_TREE_RE = re.compile(r"^/api/(datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
# One repo, three configs (README front matter), each a folder of JSON lines; split "train".
CARD = """---
configs:
- config_name: corpus
  data_files: corpus/*.jsonl
- config_name: queries
  data_files: queries/*.jsonl
- config_name: qrels
  data_files: qrels/*.jsonl
---
The bundled sample, as a Hub dataset.
"""


class DatasetHub(HubServer):
    """The test Hub plus what `load_dataset` asks of it: the file tree of a revision and ranged reads."""

    def _dispatch(self, req):
        m = _TREE_RE.match(req.path)
        if m and req.method == "GET":
            return self._tree(req, *m.groups())
        status, payload, headers = super()._dispatch(req)
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("range", ""))
        if status == 200 and ranged and isinstance(payload, bytes) and req.method == "GET":
            a = int(ranged.group(1))
            b = int(ranged.group(2)) if ranged.group(2) else len(payload) - 1
            part = payload[a : b + 1]
            return 206, part, {**headers, "Content-Range": f"bytes {a}-{a + len(part) - 1}/{len(payload)}"}
        return status, payload, headers

    def _tree(self, req, type_s: str, repo_id: str, rev: str, path: str | None):
        repo = self._find(type_s + "/", repo_id)
        files = repo.tree(unquote(rev)) if repo is not None else None
        if files is None:
            return 404, {"error": f"{repo_id}@{rev} not found"}, {"X-Error-Code": "RevisionNotFound"}
        prefix = (path or "").strip("/")
        recursive = req.query.get("recursive", ["false"])[0] == "true"
        entries, dirs = [], set()
        for p, content in sorted(files.items()):
            if prefix and not p.startswith(prefix + "/"):
                continue
            parts = (p[len(prefix) + 1 :] if prefix else p).split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                d = "/".join(([prefix] if prefix else []) + parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": d})
            if recursive or len(parts) == 1:
                entries.append({"type": "file", "oid": git_blob_oid(content), "size": len(content), "path": p})
        if prefix and not entries:
            return 404, {"error": f"{prefix} not found"}, {"X-Error-Code": "EntryNotFound"}
        return 200, entries, {}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def publish_sample(hub: DatasetHub) -> tuple[str, int]:
    """v1 (tagged): the sample. Then main: the same with every second query only. (v1's sha, main's queries.)"""
    from huggingface_hub import CommitOperationAdd, HfApi

    corpus, queries, qrels = sample_tables()
    qrels_rows = [{"query-id": q, "corpus-id": p, "score": int(s)} for q, p, s in qrels]
    api = HfApi(endpoint=hub.endpoint, token="hf_test_hub_sources")
    api.create_repo(REPO_ID, repo_type="dataset")

    def commit(qs: list[dict], message: str) -> str:
        ops = [CommitOperationAdd("README.md", CARD.encode()),
               CommitOperationAdd("corpus/part-0.jsonl", jsonl(corpus)),
               CommitOperationAdd("queries/part-0.jsonl", jsonl(qs)),
               CommitOperationAdd("qrels/part-0.jsonl", jsonl(qrels_rows))]
        return api.create_commit(REPO_ID, ops, commit_message=message, repo_type="dataset").oid

    v1 = commit(queries, "the sample")
    api.create_tag(REPO_ID, tag="v1", revision=v1, repo_type="dataset")
    commit(queries[::2], "half the queries")
    return v1, len(queries[::2])


def source(hub: DatasetHub, tmp_path: Path, run: str, revision: str | None, *extra: str):
    pin = f', revision="{revision}"' if revision else ""
    specs = []
    for part in ("corpus", "queries", "qrels"):
        specs += ["--set", f'source.hf_{part}={{name="{REPO_ID}", config="{part}"{pin}}}']
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    return run_infir("source", "--run", run, "--set", 'source.format="hf"', "--set", 'source.name="sample-hub"',
                     "--set", "source.min_passage_words=20", *specs, *extra, env=env)


def success(tmp_path: Path, run: str) -> dict:
    return json.loads((tmp_path / "runs" / run / "source/_SUCCESS.json").read_text())


def arrow_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "hf-home").rglob("*.arrow"))


@pytest.fixture(autouse=True)
def _hub_reachable(monkeypatch):
    """The tests run offline (conftest); publishing to the local test Hub from this process is the
    one exception (the CLI's processes get `HF_HUB_OFFLINE=0` and the local `HF_ENDPOINT`)."""
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def test_a_pinned_hub_revision_is_streamed_and_recorded(tmp_path):
    with DatasetHub() as hub:
        v1, _ = publish_sample(hub)
        code, _, err = source(hub, tmp_path, "pinned", "v1")
        assert code == 0, err[-2000:]
        read = [r.path for r in hub.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith(".jsonl")]
    assert "without a revision" not in err
    s = success(tmp_path, "pinned")
    assert s["rows"] == SAMPLE_ROWS  # v1's queries, not main's half
    assert s["summary"]["hf queries"] == f"{REPO_ID} (hub; config queries, split train, revision v1)"
    # The tag was resolved once to its commit, and every file read at that commit.
    assert read and all(f"/resolve/{v1}/" in p for p in read), read
    # Streamed: rows read from the Hub as they come, no Arrow copy prepared in the datasets cache.
    assert arrow_files(tmp_path) == []


def test_unpinned_reads_main_with_a_warning_and_streaming_off_prepares_a_copy(tmp_path):
    with DatasetHub() as hub:
        _, main_queries = publish_sample(hub)
        code, _, err = source(hub, tmp_path, "unpinned", None)
        assert code == 0, err[-2000:]
        assert "Hub dataset 'org/sample-ir' without a revision: set source.hf_corpus.revision" in " ".join(err.split())
        # main's queries (one row each, less the sample's one near-duplicate pair if both are kept)
        assert main_queries - 1 <= success(tmp_path, "unpinned")["rows"] <= main_queries < SAMPLE_ROWS
        assert success(tmp_path, "unpinned")["summary"]["hf corpus"].endswith("revision unpinned)")
        assert arrow_files(tmp_path) == []
        # streaming = false: the dataset is downloaded and prepared as Arrow first (what streaming spares).
        off = [a for part in ("corpus", "queries", "qrels") for a in
               ("--set", f'source.hf_{part}={{name="{REPO_ID}", config="{part}", revision="v1", streaming=false}}')]
        code, _, err = source(hub, tmp_path, "downloaded", None, *off)
        assert code == 0, err[-2000:]
    assert success(tmp_path, "downloaded")["rows"] == SAMPLE_ROWS
    assert arrow_files(tmp_path)


def test_an_unknown_revision_is_one_line_naming_the_key(tmp_path):
    with DatasetHub() as hub:
        publish_sample(hub)
        code, out, err = source(hub, tmp_path, "missing", "v9")
    assert code == 2, err[-2000:]
    assert "Traceback" not in out + err
    line = [x for x in err.splitlines() if x.strip()][-1]
    assert line.startswith("error: source.hf_") and "Revision 'v9' doesn't exist" in line, err[-2000:]

