import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SAMPLE, make_config, run_infir
from pipeline.errors import InfirError
from stage_helpers import run_source

WORDS = "the quick brown fox jumps over a lazy dog near the quiet river bank at dawn today"
TOPICS = ["foxes", "rivers", "bread", "planets", "tides", "violins", "taxes", "lungs"]


def passage(i: int) -> str:
    return f"passage {i} " + WORDS


def write_beir(root: Path, corpus_lines=None, query_lines=None, qrels_lines=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    if corpus_lines is None:
        corpus_lines = [json.dumps({"_id": f"p{i}", "title": "", "text": passage(i)}) for i in range(6)]
    if query_lines is None:
        query_lines = [json.dumps({"_id": f"q{i}", "text": f"question number {i} about foxes {i}"}) for i in range(6)]
    if qrels_lines is None:
        qrels_lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\tp{i}\t1" for i in range(6)]
    for name, lines in (("corpus.jsonl", corpus_lines), ("queries.jsonl", query_lines), ("qrels/test.tsv", qrels_lines)):
        data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
        (root / name).write_bytes(data)
    return root


def run(tmp_path, path, **over):
    cfg = make_config(**{"source.path": str(path), "source.min_passage_words": 1, **over})
    return run_source(cfg)


def quarantine(tmp_path, run_name="sample"):
    return pq.read_table(tmp_path / "runs" / run_name / "source" / "quarantine.parquet").to_pylist()


def test_sample_source_writes_success_and_second_run_does_nothing(tmp_path):
    code, out, err = run_infir("source", "--config", str(REPO / "configs/sample.toml"), "--input", str(SAMPLE))
    assert code == 0, err
    success = json.loads((tmp_path / "runs/sample/source/_SUCCESS.json").read_text())
    assert success["rows"] >= 120
    assert success["input_fingerprint"] and success["config_hash"] and success["code_version"]
    assert (tmp_path / "runs/sample/config.toml").is_file()
    code, out, err = run_infir("source", "--config", str(REPO / "configs/sample.toml"), "--input", str(SAMPLE))
    assert code == 0
    assert "already complete" in err
    # A changed config refuses to mix old and new output.
    code, out, err = run_infir("source", "--config", str(REPO / "configs/sample.toml"), "--input", str(SAMPLE), "--sample", "10")
    assert code == 2 and "finished earlier with other config" in err and "Traceback" not in err


def test_collection_keeps_every_passage(tmp_path):
    res = run(tmp_path, SAMPLE)
    files = sorted((tmp_path / "runs/sample/source/collection").glob("part-*.parquet"))
    n = sum(pq.read_metadata(f).num_rows for f in files)
    assert n == 462 and res.success["summary"]["collection passages"] == 462


def test_malformed_json_non_utf8_empty_and_duplicates_are_quarantined(tmp_path):
    corpus = [json.dumps({"_id": f"p{i}", "text": passage(i)}) for i in range(5)]
    corpus += ['{"_id": "p9", "text": "broken', b'{"_id": "p7", "text": "caf\xe9 bad bytes"}',
               json.dumps({"_id": "p8", "text": "   "}), json.dumps({"_id": "p1", "text": "dup " + WORDS})]
    queries = [json.dumps({"_id": f"q{i}", "text": f"question number {i} about foxes {i}"}) for i in range(5)]
    queries += [json.dumps({"_id": "q1", "text": "duplicate id query text"}), json.dumps({"_id": "q6", "text": ""})]
    qrels = ["qid\tpid\tscore"] + [f"q{i}\tp{i}\t1" for i in range(5)] + ["q3\tp404\t1", "q404\tp2\t1", "q2 p2"  ,
             "q1\tp1\tx\ty\tz"]
    root = write_beir(tmp_path / "in", corpus, queries, qrels)
    res = run(tmp_path, root)
    q = quarantine(tmp_path)
    reasons = [r["reason"] for r in q]

    def has(prefix, file, line):
        return any(r["reason"].startswith(prefix) and r["file"] == file and r["line"] == line for r in q)

    assert has("malformed JSON", "corpus.jsonl", 6)
    assert has("not UTF-8", "corpus.jsonl", 7)
    assert has("empty text", "corpus.jsonl", 8)
    assert has("duplicate id", "corpus.jsonl", 9)
    assert has("duplicate id", "queries.jsonl", 6)
    assert has("empty text", "queries.jsonl", 7)
    assert has("dangling qrel", "qrels/test.tsv", 7)  # passage p404 missing
    assert has("dangling qrel", "qrels/test.tsv", 8)  # query q404 missing
    assert has("wrong column count", "qrels/test.tsv", 10)
    assert res.success["rows"] == 5
    summary = res.success["summary"]["quarantined"]
    assert summary["malformed JSON"] == 1 and summary["dangling qrel"] == 2 and summary["duplicate id"] == 2
    assert len(reasons) == sum(summary.values())  # every drop is counted


def test_missing_file_is_one_clear_line(tmp_path):
    root = write_beir(tmp_path / "in")
    (root / "queries.jsonl").unlink()
    code, out, err = run_infir("source", "--input", str(root))
    assert code == 2
    assert err.strip().splitlines()[-1].endswith(
        "queries.jsonl: queries file not found; set source.queries_file if it has another name")
    assert "Traceback" not in err


def test_missing_directory_and_corrupt_parquet(tmp_path):
    with pytest.raises(InfirError, match="source directory not found"):
        run(tmp_path, tmp_path / "nope")
    d = tmp_path / "pq"
    d.mkdir()
    (d / "corpus.parquet").write_bytes(b"PAR1 this is not parquet")
    pq.write_table(pa.table({"_id": ["q1"], "text": ["hello there"]}), d / "queries.parquet")
    pq.write_table(pa.table({"query-id": ["q1"], "corpus-id": ["p1"], "score": [1]}), d / "qrels.parquet")
    with pytest.raises(InfirError, match=r"corpus.parquet: not a readable Parquet file"):
        run(tmp_path, d, **{"source.format": "parquet"})


def test_msmarco_tsv_with_trec_qrels_and_wrong_column_count(tmp_path):
    d = tmp_path / "mm"
    d.mkdir()
    (d / "collection.tsv").write_text("".join(f"{i}\t{passage(i)}\n" for i in range(4)) + "7\ttoo\tmany\n")
    (d / "queries.tsv").write_text("".join(f"{100 + i}\twhat about {TOPICS[i]}\n" for i in range(4)))
    (d / "qrels.tsv").write_text("".join(f"{100 + i} 0 {i} 1\n" for i in range(4)))
    res = run(tmp_path, d, **{"source.format": "msmarco"})
    assert res.success["rows"] == 4
    q = quarantine(tmp_path)
    assert [(r["file"], r["line"]) for r in q if r["reason"].startswith("wrong column count")] == [("collection.tsv", 5)]


def test_parquet_and_jsonl_with_column_map(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"doc": [f"d{i}" for i in range(3)], "body": [passage(i) for i in range(3)]}), d / "corpus.parquet")
    pq.write_table(pa.table({"doc": [f"x{i}" for i in range(3)], "body": [f"what about item {i}" for i in range(3)]}), d / "queries.parquet")
    pq.write_table(pa.table({"q": [f"x{i}" for i in range(3)], "p": [f"d{i}" for i in range(3)], "rel": [1, 1, 0]}), d / "qrels.parquet")
    cols = {"source.columns.id": "doc", "source.columns.text": "body", "source.columns.title": "",
            "source.columns.qrel_query_id": "q", "source.columns.qrel_passage_id": "p", "source.columns.qrel_score": "rel"}
    res = run(tmp_path, d, **{"source.format": "parquet", **cols})
    assert res.success["rows"] == 2  # the rel=0 qrel is not a positive
    rows = pq.read_table(tmp_path / "runs/sample/source/part-00000.parquet").to_pylist()
    assert {r["query_id"] for r in rows} == {"x0", "x1"}

    j = tmp_path / "js"
    j.mkdir()
    (j / "corpus.jsonl").write_text("".join(json.dumps({"doc": f"d{i}", "body": passage(i)}) + "\n" for i in range(3)))
    (j / "queries.jsonl").write_text("".join(json.dumps({"doc": f"x{i}", "body": f"what about item {i}"}) + "\n" for i in range(3)))
    (j / "qrels.tsv").write_text("x0\td0\t1\nx2\td2\t1\n")
    res = run(tmp_path, j, **{"source.format": "jsonl", "run.name": "js", **cols})
    assert res.success["rows"] == 2


def test_missing_column_is_fatal_and_named(tmp_path):
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"_id": ["d1"], "content": ["x y z"]}), d / "corpus.parquet")
    pq.write_table(pa.table({"_id": ["q1"], "text": ["hello"]}), d / "queries.parquet")
    pq.write_table(pa.table({"query-id": ["q1"], "corpus-id": ["d1"], "score": [1]}), d / "qrels.parquet")
    with pytest.raises(InfirError, match=r"corpus.parquet: missing column\(s\) text"):
        run(tmp_path, d, **{"source.format": "parquet"})


def test_hugging_face_dataset_from_local_directory(tmp_path):
    for name, rows in {
        "corpus": [{"_id": f"p{i}", "title": "", "text": passage(i)} for i in range(4)],
        "queries": [{"_id": f"q{i}", "text": f"what about {TOPICS[i]}"} for i in range(4)],
        "qrels": [{"query-id": f"q{i}", "corpus-id": f"p{i}", "score": 1} for i in range(4)],
    }.items():
        d = tmp_path / "hf" / name
        d.mkdir(parents=True)
        (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    over = {
        "source.format": "hf",
        "source.path": "",
        "source.hf_corpus": {"name": str(tmp_path / "hf/corpus")},
        "source.hf_queries": {"name": str(tmp_path / "hf/queries")},
        "source.hf_qrels": {"name": str(tmp_path / "hf/qrels")},
    }
    cfg = make_config(**over, **{"source.min_passage_words": 1})
    cfg.source.path = None
    res = run_source(cfg)
    assert res.success["rows"] == 4


def test_near_duplicate_queries_are_removed(tmp_path):
    queries = [json.dumps({"_id": "q0", "text": "how long to boil an egg"}),
               json.dumps({"_id": "q1", "text": "How long to boil an egg?"}),
               json.dumps({"_id": "q2", "text": "how long to boil an eggs"}),
               json.dumps({"_id": "q3", "text": "what is a fox"})]
    qrels = [f"q{i}\tp{i}\t1" for i in range(4)]
    root = write_beir(tmp_path / "in", query_lines=queries, qrels_lines=qrels)
    res = run(tmp_path, root, **{"source.dedup_threshold": 90})
    assert res.success["rows"] == 2
    assert sum(r["reason"].startswith("duplicate query") for r in quarantine(tmp_path)) == 2


def test_decontamination_against_trec_and_gzip_tsv_topics(tmp_path):
    topics = tmp_path / "topics.trec.txt"
    topics.write_text("<top>\n<num> Number: 301\n<title> Question number 1 about foxes 1\n\n"
                      "<desc> Description:\nsomething else entirely\n<narr> Narrative:\nx\n</top>\n")
    tsv = tmp_path / "topics.tsv.gz"
    with gzip.open(tsv, "wt") as f:
        f.write("77\tquestion number 2 about foxes 2\n")
    root = write_beir(tmp_path / "in")
    res = run(tmp_path, root, **{"source.decontaminate": [str(topics), str(tsv)]})
    assert res.success["rows"] == 4
    assert res.success["summary"]["decontaminated"] == 2
    reasons = [r["reason"] for r in quarantine(tmp_path) if r["reason"].startswith("decontaminated")]
    assert any("topics.trec.txt#301/title" in r for r in reasons)
    assert any("topics.tsv.gz#77/query" in r for r in reasons)


# ---- on the real MS MARCO sample (../shared/data) ----------------------------------------------


def _msmarco_run(tmp_path, msmarco, name, seed, extra=()):
    return run_infir("source", "--input", str(msmarco), "--run", name, "--sample", "500", "--seed", str(seed), *extra)


def test_msmarco_sampling_is_byte_identical_per_seed(tmp_path, msmarco):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, err = _msmarco_run(tmp_path, msmarco, name, seed)
        assert code == 0, err
    a, b, c = (sorted((tmp_path / "runs" / n / "source").glob("part-*.parquet")) for n in "abc")
    assert a and [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    qa = set(pq.read_table(a[0]).column("query_id").to_pylist())
    qc = set(pq.read_table(c[0]).column("query_id").to_pylist())
    assert len(qa) == 500 and len(qc) == 500 and qa != qc


def test_msmarco_decontamination_against_dev_subset(tmp_path, msmarco, eval_topics):
    topics = eval_topics / "topics.msmarco-passage.dev-subset.txt"
    code, _, err = run_infir("source", "--input", str(msmarco), "--decontaminate", str(topics))
    # Every query goes (below), so the stage ends with no rows: an error naming the main reason.
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "0 usable" in line and "main reason: decontaminated" in line, line
    assert not (tmp_path / "runs/sample/source/_SUCCESS.json").exists()
    dropped = sum(r["reason"].startswith("decontaminated") for r in quarantine(tmp_path))
    # Ground truth computed independently: queries whose text equals a dev-subset topic.
    def key(t):
        return " ".join("".join(ch if ch.isalnum() else " " for ch in t.lower()).split())
    topic_keys = {key(line.split("\t", 1)[1]) for line in topics.read_text().splitlines() if "\t" in line}
    qs = [json.loads(line) for line in (msmarco / "queries.jsonl").read_text().splitlines()]
    exact = sum(1 for q in qs if key(q["text"]) in topic_keys)
    assert exact > 0
    assert dropped >= exact  # near-exact matches may add a few
    assert f"decontaminated ({dropped:,} lines" in line
    # Every query of this sample is in MS MARCO dev (see shared/data/README.md): all must go.
    assert dropped == exact == 1743
