"""The README's training claims, on the sample release built by the real pipeline (offline).

- the plain sentence-transformers snippet trains on the `triplets` config as written;
- the default config holds every column InF-IR's training code reads, and its pairs are the triplets;
- `infir eval --release` reports the pool and writes JSON and Markdown.
"""

from __future__ import annotations

import json
import math
import re
import runpy

import pytest

from conftest import REPO, SAMPLE, run_infir

INFIR_COLUMNS = ["query_positive", "instruction_positive", "document_positive", "instruction_negative",
                 "hard_negative_document_1", "query_negative", "hard_negative_document_2"]


def readme_snippet() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- snippet: train-triplets -->\n```python\n(.*?)```", text, re.S)
    assert m, "README lost its training snippet"
    return m.group(1)


@pytest.fixture(scope="module")
def sample_release(tmp_path_factory):
    """`make build-corpus` up to the release: the real CLI, offline, in a fresh folder. 50 of the
    sample's 147 queries, so the README's one-epoch training is a few steps (~35 train rows, 4 steps)."""
    root = tmp_path_factory.mktemp("fresh")
    code, _, err = run_infir("build", "--until", "write", "--set", f"source.path={SAMPLE}",
                             "--set", "source.sample_queries=50",
                             "--config", str(REPO / "configs" / "sample.toml"), cwd=root)
    assert code == 0, err[-2000:]
    assert (root / "releases" / "inf-ir-sample" / "1.0.0" / "triplets" / "train.parquet").is_file()
    return root


@pytest.mark.slow
@pytest.mark.timeout(1800)  # builds the release (module fixture) and trains MiniLM on CPU
def test_readme_snippet_trains_on_triplets_as_published(sample_release, monkeypatch):
    monkeypatch.chdir(sample_release)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(sample_release / ".hf-datasets"))
    script = sample_release / "train_snippet.py"
    script.write_text(readme_snippet())  # no edits
    g = runpy.run_path(str(script), run_name="__main__")
    assert g["train"].column_names == ["anchor", "positive", "negative_1", "negative_2"]
    losses = [h["loss"] for h in g["trainer"].state.log_history if "loss" in h]
    assert len(losses) >= 3 and all(math.isfinite(x) for x in losses)
    assert min(losses[1:]) < losses[0]
    assert (sample_release / "st-out" / "model" / "modules.json").is_file()


def test_default_config_serves_infir_training_code(sample_release):
    """What InF_Embed reads (README's column mapping), and the pairs it builds, from the default config."""
    from datasets import load_dataset

    rel = str(sample_release / "releases" / "inf-ir-sample" / "1.0.0")
    cache = str(sample_release / ".hf-datasets")
    full = load_dataset(rel, cache_dir=cache)["train"]
    assert full.column_names[:7] == INFIR_COLUMNS
    trip = load_dataset(rel, "triplets", cache_dir=cache)["train"]
    pairs = []
    for r in full:  # InF_Embed's documented pairing: "{query} {instruction}" -> passage
        pairs += [(f"{r['query_positive']} {r['instruction_positive']}".strip(), r["document_positive"]),
                  (f"{r['query_positive']} {r['instruction_negative']}".strip(), r["hard_negative_document_1"]),
                  (f"{r['query_negative']} {r['instruction_positive']}".strip(), r["hard_negative_document_2"])]
    assert pairs == list(zip(trip["anchor"], trip["positive"], strict=True))
    card = (sample_release / "releases" / "inf-ir-sample" / "1.0.0" / "README.md").read_text()
    assert 'load_dataset("<this repo or directory>", "triplets")' in card and "unchanged" not in card


def test_eval_cli_release_reports_pool_json_and_markdown(sample_release):
    rel = sample_release / "releases" / "inf-ir-sample" / "1.0.0"
    out = sample_release / "rep"
    code, stdout, err = run_infir("eval", "--release", str(rel), "--pool-sample", "50", "--out", str(out),
                                  cwd=sample_release)
    assert code == 0, err[-2000:]
    r = json.loads((out / "eval-release.json").read_text())
    assert r == json.loads(stdout)
    assert r["pool"]["sampled"] == 50 and r["pool_size"] == r["pool"]["split_passages"] + r["pool"]["mined_negatives"] + 50
    assert 0 <= r["ndcg_at_10"] <= 1 and -1 <= r["pmrr"] <= 1
    md = (out / "eval-release.md").read_text()
    assert f"| ndcg_at_10 | {r['ndcg_at_10']:.4f} |" in md and "Pool: split_passages" in md
