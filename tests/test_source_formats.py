"""Sources as users have them: per-file column maps, Parquet folders, `save_to_disk` datasets,
MS MARCO's official file names, and a source that ends empty failing with its main reason."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE, make_config, run_infir
from pipeline.errors import InfirError
from stage_helpers import run_source

SAMPLE_ROWS = 146  # data/sample as BEIR: 147 queries, one a near-duplicate of another


def sample_tables():
    corpus = [json.loads(x) for x in (SAMPLE / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(x) for x in (SAMPLE / "queries.jsonl").read_text().splitlines()]
    qrels = [x.split("\t") for x in (SAMPLE / "qrels/test.tsv").read_text().splitlines()[1:]]
    return corpus, queries, qrels


def renamed_jsonl(root: Path) -> Path:
    """The sample with a corpus of `doc_id, body` and queries of `query_id, question`."""
    corpus, queries, qrels = sample_tables()
    root.mkdir(parents=True)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"doc_id": r["_id"], "body": r["text"]}) + "\n" for r in corpus))
    (root / "queries.jsonl").write_text("".join(json.dumps({"query_id": r["_id"], "question": r["text"]}) + "\n" for r in queries))
    (root / "qrels.tsv").write_text("".join(f"{q}\t{p}\t{s}\n" for q, p, s in qrels))
    return root


PER_FILE = ["--set", 'source.columns.corpus={id="doc_id", text="body"}',
            "--set", 'source.columns.queries={id="query_id", text="question"}']


def test_per_file_column_maps_read_mismatched_names(tmp_path):
    root = renamed_jsonl(tmp_path / "in")
    code, _, err = run_infir("source", "--input", str(root), "--format", "jsonl", *PER_FILE, cwd=tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "runs/sample/source/_SUCCESS.json").read_text())["rows"] == SAMPLE_ROWS


def test_one_column_map_for_both_files_fails_naming_the_key(tmp_path):
    root = renamed_jsonl(tmp_path / "in")
    # The old single map: right for the corpus, wrong for the queries, so every query is quarantined.
    code, _, err = run_infir("source", "--input", str(root), "--format", "jsonl", "--set", 'source.columns.id="doc_id"',
                             "--set", 'source.columns.text="body"', cwd=tmp_path)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "0 usable" in line and "main reason: missing id (147 lines" in line, line
    assert "source.columns.queries.id" in line, line


def test_parquet_folder_and_missing_column_named_by_key(tmp_path):
    corpus, queries, qrels = sample_tables()
    root = tmp_path / "pq"
    (root / "corpus").mkdir(parents=True)
    for i in range(3):  # a sharded export: a folder of Parquet files
        part = corpus[i::3]
        pq.write_table(pa.table({"doc_id": [r["_id"] for r in part], "body": [r["text"] for r in part]}),
                       root / "corpus" / f"part-{i}.parquet")
    pq.write_table(pa.table({"qid": [r["_id"] for r in queries], "text": [r["text"] for r in queries]}), root / "queries.parquet")
    pq.write_table(pa.table({"query-id": [q for q, _, _ in qrels], "corpus-id": [p for _, p, _ in qrels],
                             "score": [int(s) for _, _, s in qrels]}), root / "qrels.parquet")
    over = {"source.path": str(root), "source.format": "parquet", "source.min_passage_words": 20,
            "source.columns.corpus": {"id": "doc_id", "text": "body", "title": None},
            "source.columns.queries": {"id": "qid"}, "run.runs_dir": str(tmp_path / "runs")}
    assert run_source(make_config(**over)).success["rows"] == SAMPLE_ROWS
    over["source.columns.queries"] = {"id": "query_id"}
    over["run.name"] = "wrong"
    with pytest.raises(InfirError, match=r"queries.parquet: missing column\(s\) query_id \(source.columns.queries.id\)"):
        run_source(make_config(**over))


def test_save_to_disk_datasets_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    corpus, queries, qrels = sample_tables()
    datasets.Dataset.from_list(corpus).save_to_disk(str(tmp_path / "corpus"))
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(queries)}).save_to_disk(str(tmp_path / "queries"))
    datasets.Dataset.from_list([{"query-id": q, "corpus-id": p, "score": int(s)} for q, p, s in qrels]).save_to_disk(
        str(tmp_path / "qrels"))
    over = {
        "source.format": "hf", "source.name": "sample-hf", "run.runs_dir": str(tmp_path / "runs"),
        "source.hf_corpus": {"name": str(tmp_path / "corpus")},
        "source.hf_queries": {"name": str(tmp_path / "queries"), "split": "dev"},
        "source.hf_qrels": {"name": str(tmp_path / "qrels")},
        "source.min_passage_words": 20,
    }
    cfg = make_config(**over)
    cfg.source.path = None
    res = run_source(cfg)
    assert res.success["rows"] == SAMPLE_ROWS
    summary = res.success["summary"]
    assert summary["hf corpus"] == "corpus (save_to_disk; config None, split train, revision unpinned)"
    # A split the DatasetDict lacks is named with the key to set.
    cfg.source.hf_queries = {"name": str(tmp_path / "queries"), "split": "test"}
    with pytest.raises(InfirError, match=r"split 'test' not in .* \(has: dev\); set source.hf_queries.split"):
        run_source(cfg, force=True)


def msmarco_official(root: Path, splits=("dev",)) -> Path:
    corpus, queries, qrels = sample_tables()
    root.mkdir(parents=True)
    (root / "collection.tsv").write_text("".join(f"{r['_id']}\t{r['text']}\n" for r in corpus))
    for sp in splits:
        (root / f"queries.{sp}.tsv").write_text("".join(f"{r['_id']}\t{r['text']}\n" for r in queries))
        (root / f"qrels.{sp}.tsv").write_text("".join(f"{q}\t0\t{p}\t{s}\n" for q, p, s in qrels))  # TREC style
    return root


def test_msmarco_official_file_names_need_no_settings(tmp_path):
    root = msmarco_official(tmp_path / "mm")
    code, _, err = run_infir("source", "--input", str(root), "--format", "msmarco", cwd=tmp_path)
    assert code == 0, err
    assert json.loads((tmp_path / "runs/sample/source/_SUCCESS.json").read_text())["rows"] == SAMPLE_ROWS


def test_msmarco_with_two_splits_asks_for_the_key(tmp_path):
    root = msmarco_official(tmp_path / "mm", splits=("dev", "train"))
    code, _, err = run_infir("source", "--input", str(root), "--format", "msmarco", cwd=tmp_path)
    assert code == 2
    assert "set source.qrels_split to one of dev, train" in err.strip().splitlines()[-1]
    code, _, err = run_infir("source", "--input", str(root), "--format", "msmarco", "--set", "source.qrels_split=train",
                             cwd=tmp_path)
    assert code == 0, err
    (root / "qrels.train.tsv").unlink()
    code, _, err = run_infir("source", "--input", str(root), "--format", "msmarco", "--set", "source.qrels_split=train",
                             "--run", "again", cwd=tmp_path)
    assert code == 2 and "qrels.train.tsv: qrels file not found; set source.qrels_file" in err, err
