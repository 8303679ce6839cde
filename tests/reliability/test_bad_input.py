"""Bad input across the stages, through the real CLI: each case ends in one clear error line (exit
2, never an internal error or a traceback) or in a quarantine row naming file, line and reason;
and whatever a failed command leaves behind never looks like a complete stage or release."""

from __future__ import annotations

import gzip
import json
import os
import re
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE
from pipeline.cli import main
from pipeline.errors import InfirError
from pipeline.release import verify_release
from pipeline.store.ids import sha256_file
from pipeline.store.verify_input import verify_upstream
from stage_helpers import names_between
from reliability_helpers import child_env, infir_cmd

SMALL = ("--set", "source.sample_queries=10")


def cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


def assert_clean_error(rc: int, output: str, pattern: str) -> None:
    assert rc == 2, output[-2000:]
    assert "Traceback" not in output and "internal error" not in output, output[-2000:]
    assert re.search(pattern, output), output[-2000:]


def assert_nothing_looks_complete(root: Path = Path(".")) -> None:
    """A success marker lists exactly the shards beside it, each with its recorded sha256; a release
    version folder verifies; temp files are hidden names that no reader globs."""
    for success in root.glob("runs/*/*/_SUCCESS.json"):
        d = success.parent
        record = json.loads(success.read_text())
        if "shards" not in record:
            continue
        listed = {s["name"]: s["sha256"] for s in record["shards"]}
        assert listed == {p.relative_to(d).as_posix(): sha256_file(p) for p in d.rglob("*.parquet")}, d
    for version in root.glob("releases/*/[0-9]*"):
        verify_release(version)
    for p in root.rglob("*"):
        if ".tmp" in p.name:
            assert p.name.startswith("."), p


def sample_copy(dst: Path = Path("in")) -> Path:
    shutil.copytree(SAMPLE, dst)
    return dst


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def quarantined(reason: str) -> list[dict]:
    rows = pq.read_table("runs/sample/source/quarantine.parquet").to_pylist()
    return [r for r in rows if reason in r["reason"]]


# -- source inputs that end in a quarantine row (file, line, reason) ----------------------------------


def _corpus_truncated_json(d):
    ls = lines(d / "corpus.jsonl")
    ls[4] = ls[4][: len(ls[4]) // 2]
    (d / "corpus.jsonl").write_text("\n".join(ls) + "\n")
    return "corpus.jsonl", 5, "malformed JSON"


def _query_is_an_array(d):
    with open(d / "queries.jsonl", "a") as f:
        f.write('["x-q99", "a query in a list"]\n')
    return "queries.jsonl", 148, "malformed JSON: not an object"


def _null_and_bool_ids(d):
    with open(d / "corpus.jsonl", "a") as f:
        f.write('{"_id": null, "text": "no id here"}\n{"_id": true, "text": "a boolean id"}\n')
    return "corpus.jsonl", 463, "missing id"


def _non_utf8_query(d):
    raw = (d / "queries.jsonl").read_bytes().split(b"\n")
    raw[2] = raw[2].replace(b"steak", b"st\xe9ak")
    (d / "queries.jsonl").write_bytes(b"\n".join(raw))
    return "queries.jsonl", 3, "not UTF-8"


def _lone_surrogate_in_a_passage(d):
    # json accepts the escape; no UTF-8 writer can encode the string it decodes to
    ls = lines(d / "corpus.jsonl")
    ls[2] = ls[2].replace('"text": "', '"text": "\\ud800', 1)
    (d / "corpus.jsonl").write_text("\n".join(ls) + "\n")
    return "corpus.jsonl", 3, "not UTF-8: a JSON string holds the lone surrogate \\ud800"


def _lone_surrogate_in_a_query(d):
    ls = lines(d / "queries.jsonl")
    ls[1] = ls[1].replace('"text": "', '"text": "\\uDFFF ', 1)
    (d / "queries.jsonl").write_text("\n".join(ls) + "\n")
    return "queries.jsonl", 2, "lone surrogate \\udfff"


def _empty_query_text(d):
    ls = lines(d / "queries.jsonl")
    obj = json.loads(ls[0])
    obj["text"] = "   "
    ls[0] = json.dumps(obj)
    (d / "queries.jsonl").write_text("\n".join(ls) + "\n")
    return "queries.jsonl", 1, "empty text"


def _huge_query(d):
    ls = lines(d / "queries.jsonl")
    obj = json.loads(ls[0])
    obj["text"] = "bread " * 50_000
    ls[0] = json.dumps(obj)
    (d / "queries.jsonl").write_text("\n".join(ls) + "\n")
    return "queries.jsonl", 1, "query length"


def _huge_passage(d):
    ls = lines(d / "corpus.jsonl")
    obj = json.loads(ls[0])
    obj["text"] = "yeast " * 200_000  # 1.2 MB in one field
    ls[0] = json.dumps(obj)
    (d / "corpus.jsonl").write_text("\n".join(ls) + "\n")
    return "qrels/test.tsv", 2, "passage length"


def _duplicate_passage_id(d):
    first = lines(d / "corpus.jsonl")[0]
    with open(d / "corpus.jsonl", "a") as f:
        f.write(first.replace("Why Didn", "Why Did") + "\n")
    return "corpus.jsonl", 463, "duplicate id: passage"


def _duplicate_query_id(d):
    with open(d / "queries.jsonl", "a") as f:
        f.write('{"_id": "cook-q01", "text": "another text under a taken id"}\n')
    return "queries.jsonl", 148, "duplicate id: query"


def _dangling_qrels(d):
    with open(d / "qrels/test.tsv", "a") as f:
        f.write("nobody-q1\tcook-p01\t1\ncook-q01\tnowhere-p1\t1\n")
    return "qrels/test.tsv", 150, "dangling qrel: passage 'nowhere-p1'"


def _bad_relevance_score(d):
    with open(d / "qrels/test.tsv", "a") as f:
        f.write("cook-q01\tcook-p02\thigh\n")
    return "qrels/test.tsv", 149, "bad relevance score"


def _qrels_wrong_column_count(d):
    with open(d / "qrels/test.tsv", "a") as f:
        f.write("cook-q01\tcook-p02\t1\tQ0\textra\n")
    return "qrels/test.tsv", 149, "wrong column count"


def _deeply_nested_corpus_line(d):
    with open(d / "corpus.jsonl", "a") as f:
        f.write("[" * 1500 + "\n")  # json recurses per level: a RecursionError, not a JSONDecodeError
    return "corpus.jsonl", 463, "malformed JSON: nested too deeply"


def _deeply_nested_field_in_a_query(d):
    with open(d / "queries.jsonl", "a") as f:
        f.write('{"_id": "x-q99", "text": "bread", "meta": ' + "[" * 5000 + "]" * 5000 + "}\n")
    return "queries.jsonl", 148, "malformed JSON: nested too deeply"


def _invisible_only_query(d):
    ls = lines(d / "queries.jsonl")
    ls[0] = json.dumps({**json.loads(ls[0]), "text": "\u200b\u2060\ufeff \u200d"})
    (d / "queries.jsonl").write_text("\n".join(ls) + "\n")
    return "queries.jsonl", 1, "empty after cleaning"


def _invisible_only_passage(d):
    ls = lines(d / "corpus.jsonl")
    ls[0] = json.dumps({**json.loads(ls[0]), "text": "\u200b\u00ad\u2060\u200c"})
    (d / "corpus.jsonl").write_text("\n".join(ls) + "\n")
    return "corpus.jsonl", 1, "empty after cleaning"


QUARANTINE_CASES = [
    _corpus_truncated_json, _query_is_an_array, _null_and_bool_ids, _non_utf8_query, _empty_query_text,
    _huge_query, _huge_passage, _duplicate_passage_id, _duplicate_query_id, _dangling_qrels,
    _bad_relevance_score, _qrels_wrong_column_count, _deeply_nested_corpus_line, _deeply_nested_field_in_a_query,
    _invisible_only_query, _invisible_only_passage, _lone_surrogate_in_a_passage, _lone_surrogate_in_a_query,
]


@pytest.mark.parametrize("case", QUARANTINE_CASES, ids=lambda f: f.__name__.strip("_"))
def test_bad_source_rows_are_quarantined_with_file_line_and_reason(capsys, case):
    d = sample_copy()
    file, line, reason = case(d)
    rc, output = cli(capsys, "source", "--input", str(d))
    assert rc == 0, output[-2000:]
    hits = quarantined(reason)
    assert any(h["file"] == file and h["line"] == line for h in hits), (file, line, hits[:3])
    assert_nothing_looks_complete()


def test_msmarco_tsv_line_with_three_columns_is_quarantined(capsys):
    d = Path("in")
    d.mkdir()
    (d / "collection.tsv").write_text("p1\tA passage about bread and yeast that is long enough.\np2\tbad\textra\n")
    (d / "queries.tsv").write_text("q1\tbread yeast\n")
    (d / "qrels.tsv").write_text("q1 0 p1 1\n")
    rc, output = cli(capsys, "source", "--input", str(d), "--format", "msmarco", "--set", "source.min_passage_words=1")
    assert rc == 0, output
    assert [(h["file"], h["line"]) for h in quarantined("wrong column count")] == [("collection.tsv", 2)]


def test_an_escaped_surrogate_pair_is_one_character_not_a_bad_line(capsys):
    d = sample_copy()
    ls = lines(d / "corpus.jsonl")
    pid = json.loads(ls[4])["_id"]
    ls[4] = ls[4].replace('"text": "', '"text": "\\ud83d\\ude00 ', 1)  # an emoji, as ensure_ascii JSON writes it
    (d / "corpus.jsonl").write_text("\n".join(ls) + "\n")
    rc, output = cli(capsys, "source", "--input", str(d))
    assert rc == 0, output[-2000:]
    assert not quarantined("surrogate") and not quarantined("not UTF-8")
    collection = pq.read_table("runs/sample/source/collection").to_pylist()
    assert next(r["text"] for r in collection if r["passage_id"] == pid).startswith("\U0001f600")


def test_utf8_byte_order_mark_is_not_a_bad_line(capsys):
    d = sample_copy()
    (d / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + (d / "corpus.jsonl").read_bytes())
    rc, output = cli(capsys, "source", "--input", str(d))
    assert rc == 0, output
    assert not quarantined("malformed JSON") and not quarantined("dangling qrel")


def test_parquet_text_column_of_the_wrong_type_is_quarantined(capsys):
    d = Path("in")
    d.mkdir()
    pq.write_table(pa.table({"_id": ["p1", "p2"], "text": ["A passage about bread, yeast and proofing dough.", None]}),
                   d / "corpus.parquet")
    pq.write_table(pa.table({"_id": ["q1"], "text": ["bread yeast"]}), d / "queries.parquet")
    pq.write_table(pa.table({"query-id": ["q1"], "corpus-id": ["p1"], "score": [1]}), d / "qrels.parquet")
    rc, output = cli(capsys, "source", "--input", str(d), "--format", "parquet", "--set", "source.min_passage_words=1")
    assert rc == 0, output
    assert [(h["file"], h["line"]) for h in quarantined("missing text")] == [("corpus.parquet", 2)]


# -- inputs that end in one clear error line --------------------------------------------------------


def _utf16_corpus(d):
    text = (d / "corpus.jsonl").read_text(encoding="utf-8")
    (d / "corpus.jsonl").write_bytes(text.encode("utf-16"))
    return ["source", "--input", str(d)], r"corpus.jsonl: encoded as UTF-16 .*convert it to UTF-8"


def _truncated_gzip(d):
    data = gzip.compress((d / "corpus.jsonl").read_bytes())
    (d / "corpus.jsonl.gz").write_bytes(data[: len(data) // 2])
    return ["source", "--input", str(d), "--set", 'source.corpus_file="corpus.jsonl.gz"'], r"corpus.jsonl.gz: cannot read"


def _truncated_gzip_topic_file(d):
    data = gzip.compress(b"1\tbread yeast proofing\n2\tbaking soda vs baking powder\n" * 50)
    Path("topics.tsv.gz").write_bytes(data[: len(data) // 2])
    return ["source", "--input", str(d), "--decontaminate", "topics.tsv.gz"], (
        r"topics.tsv.gz: cannot read: Compressed file ended before the end-of-stream marker")


def _non_utf8_followir_corpus(d):
    from test_eval_followir import write_fixture

    root = write_fixture(Path("followir"))
    raw = (root / "corpus.jsonl").read_bytes().split(b"\n")
    raw[1] = raw[1].replace(b"steam", b"st\xe9am")
    (root / "corpus.jsonl").write_bytes(b"\n".join(raw))
    return ["eval", "--followir", str(root), "--out", "rep"], r"followir/corpus.jsonl:2: not UTF-8 \(invalid byte at column \d+\)"


def _non_utf8_followir_qrels(d):
    from test_eval_followir import write_fixture

    root = write_fixture(Path("followir"), "tsv")
    (root / "qrels_og/test.tsv").write_bytes((root / "qrels_og/test.tsv").read_bytes() + b"q2\td\xff1\t1\n")
    return ["eval", "--followir", str(root)], r"followir/qrels_og/test.tsv:6: not UTF-8"


def _corrupt_parquet(d):
    pq.write_table(pa.table({"_id": ["q1"], "text": ["bread"]}), d / "queries.parquet")
    pq.write_table(pa.table({"query-id": ["q1"], "corpus-id": ["p1"]}), d / "qrels.parquet")
    (d / "corpus.parquet").write_bytes(b"PAR1" + os.urandom(300))
    return ["source", "--input", str(d), "--format", "parquet"], r"corpus.parquet: not a readable Parquet file"


def _missing_qrels(d):
    (d / "qrels/test.tsv").unlink()
    return ["source", "--input", str(d)], r"qrels/test.tsv: qrels file not found"


def _missing_input_dir(d):
    return ["source", "--input", "no/such/dir"], r"no/such/dir: source directory not found"


def _unknown_config_key(d):
    Path("run.toml").write_text('[source]\npath = "in"\nsampel_queries = 3\n')
    return ["source", "--config", "run.toml"], r"run.toml: invalid config: unknown key 'source.sampel_queries'"


def _wrong_type_override(d):
    return ["source", "--input", str(d), "--set", "source.shard_rows=many"], r"'source.shard_rows': Input should be a valid integer"


def _config_not_utf8(d):
    Path("run.toml").write_bytes(b'[source]\npath = "caf\xe9"\n')
    return ["source", "--config", "run.toml"], r"run.toml: not UTF-8 text"


def _unknown_cli_option(d):
    return ["source", "--inptu", str(d)], r"No such option: --inptu"


def _unwritable_runs_dir(d):
    Path("blocker").write_text("a file where the runs folder should be")
    return ["source", "--input", str(d), "--set", 'run.runs_dir="blocker/runs"'], r"blocker/runs/sample(/source)?: Not a directory"


ERROR_CASES = [
    _utf16_corpus, _truncated_gzip, _corrupt_parquet, _missing_qrels, _missing_input_dir, _unknown_config_key,
    _wrong_type_override, _config_not_utf8, _unknown_cli_option, _unwritable_runs_dir, _truncated_gzip_topic_file,
    _non_utf8_followir_corpus, _non_utf8_followir_qrels,
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_is_one_clear_error_line(capsys, case):
    d = sample_copy()
    args, pattern = case(d)
    rc, output = cli(capsys, *args)
    assert_clean_error(rc, output, pattern)
    assert not Path("runs/sample/source/_SUCCESS.json").exists()
    assert_nothing_looks_complete()


@pytest.mark.timeout(20)  # reading a FIFO waits for a writer that never comes: a hang fails here
@pytest.mark.parametrize("key", ["source.corpus_file", "source.queries_file", "source.decontaminate"])
def test_an_input_that_is_not_a_regular_file_is_refused_not_waited_on(capsys, key):
    d = sample_copy()
    os.mkfifo(d / "fifo.jsonl")
    value = f'["{d}/fifo.jsonl"]' if key == "source.decontaminate" else '"fifo.jsonl"'
    rc, output = cli(capsys, "source", "--input", str(d), "--set", f"{key}={value}")
    assert_clean_error(rc, output, rf"in/fifo.jsonl: not a regular file \({key}\)")
    assert not Path("runs/sample/source/_SUCCESS.json").exists()


# -- settings refused when the config is loaded: before the first (paid) stage of a build ---------

BAD_SETTINGS = [  # (--set or --run arguments, the error that names the key)
    (["--run", "../../escaped"], r"'run.name': '../../escaped' is not a safe name"),
    (["--run", "{cwd}/abs-run"], r"'run.name': '/\S+/abs-run' is not a safe name"),
    (["--run", "a b"], r"'run.name': 'a b' is not a safe name"),
    (["--set", 'run.name=""'], r"'run.name': '' is not a safe name"),
    (["--set", "write.name=rel-ü"], r"'write.name': 'rel-ü' is not a safe name"),
    (["--set", 'write.name=".."'], r"'write.name': '..' is not a safe name"),
    (["--set", 'write.version="../1.0.0"'], r"'write.version': '../1.0.0' is not a release version"),
    (["--set", 'write.version="1.0"'], r"'write.version': '1.0' is not a release version"),
    (["--set", "write.split_ratios=[0,0,0]"], r"'write.split_ratios': split ratios must be non-negative with a positive sum"),
    (["--set", "write.split_ratios=[-1,1,1]"], r"'write.split_ratios': split ratios must be non-negative"),
    (["--set", "write.max_rows_per_shard=0"], r"'write.max_rows_per_shard': Input should be greater than or equal to 1"),
    (["--set", "source.min_passage_words=300", "--set", "source.max_passage_words=10"],
     r"'source': min_passage_words \(300\) must be <= max_passage_words \(10\)"),
    (["--set", "source.min_query_words=9", "--set", "source.max_query_words=3"], r"min_query_words \(9\) must be <= max_query_words"),
    (["--set", "write.split_ratios=[inf, 1, 1]"], r"'write.split_ratios.0': Input should be a finite number"),
    (["--set", "generate.temperature=nan"], r"'generate.temperature': Input should be a finite number"),
    (["--set", "llm.max_cost_usd=inf"], r"'llm.max_cost_usd': Input should be a finite number"),
    (["--set", "llm.deadline_s=-inf"], r"'llm.deadline_s': Input should be a finite number"),
    (["--set", "mine.retrieval.margin=nan"], r"'mine.retrieval.margin': Input should be a finite number"),
    (["--set", "train.learning_rate=inf"], r"'train.learning_rate': Input should be a finite number"),
    (["--set", "generate.temperature=5"], r"'generate.temperature': Input should be less than or equal to 2"),
    (["--set", "filter.near_copy_threshold=150"], r"'filter.near_copy_threshold': Input should be less than or equal to 100"),
    (["--set", "a.b=1\nc.d=2"], r"--set 'a.b=1\\nc.d=2': a value cannot span lines"),
    (["--set", 'generate.prompt="../../etc/passwd"'], r"'generate.prompt': '../../etc/passwd' is not a safe name"),
    (["--set", 'source.qrels_file="/etc/passwd"'], r"'source.qrels_file': '/etc/passwd' must be a relative path inside"),
    (["--set", 'source.corpus_file="../outside.jsonl"'], r"'source.corpus_file': '../outside.jsonl' must be a relative path"),
    (["--set", 'source.qrels_split="../../x"'], r"'source.qrels_split': '../../x' is not a safe name"),
    (["--mode", "batch"], r"llm.mode = 'batch' needs llm.backend = 'openai' .*not 'offline'"),
]


@pytest.mark.parametrize("args,pattern", BAD_SETTINGS, ids=lambda v: v if isinstance(v, str) and v[0] == "'" else None)
def test_bad_setting_is_refused_before_the_first_stage(capsys, args, pattern):
    d = sample_copy()
    args = [a.replace("{cwd}", str(Path.cwd())) for a in args]
    rc, output = cli(capsys, "build", "--until", "write", "--set", f'source.path="{d}"', *args)
    assert_clean_error(rc, output, pattern)
    assert not Path("runs").exists() and not Path("releases").exists() and not Path("abs-run").exists()


def test_run_name_from_a_config_file_cannot_escape_runs_dir(capsys):
    Path("run.toml").write_text('[run]\nname = "../x"\n[source]\npath = "in"\n')
    sample_copy()
    rc, output = cli(capsys, "build", "--config", "run.toml", "--until", "source")
    assert_clean_error(rc, output, r"run.toml: invalid config: 'run.name': '../x' is not a safe name")
    assert not Path("x").exists() and not Path("runs").exists()


# -- passages that may enter a prompt are bounded ------------------------------------------------


@pytest.mark.parametrize("mode", ["truncate", "quarantine"])
def test_overlong_passage_is_cut_or_quarantined_before_any_prompt(capsys, mode):
    d = sample_copy()
    ls = lines(d / "corpus.jsonl")
    ls[3] = json.dumps({**json.loads(ls[3]), "text": "crumb " * 3000})  # a collection passage (a prompt candidate)
    (d / "corpus.jsonl").write_text("\n".join(ls) + "\n")
    rc, output = cli(capsys, "source", "--input", str(d), "--set", f'source.long_passages="{mode}"')
    assert rc == 0, output
    texts = pq.read_table("runs/sample/source/collection").column("text").to_pylist()
    assert max(len(t.split()) for t in texts) <= 2000
    hits = [(h["file"], h["line"]) for h in quarantined("passage too long")]
    if mode == "quarantine":
        assert hits == [("corpus.jsonl", 4)] and len(texts) == len(ls) - 1
    else:
        assert not hits and len(texts) == len(ls) and "crumb " * 1999 + "crumb" in texts


# -- bad state and bad output places in later stages ----------------------------------------------------


@pytest.fixture
def sourced(capsys):
    d = sample_copy()
    rc, output = cli(capsys, "source", "--input", str(d), *SMALL)
    assert rc == 0, output
    return d


def test_corrupt_upstream_shard_is_named(capsys, sourced):
    Path("runs/sample/source/part-00000.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    rc, output = cli(capsys, "generate", "--set", f'source.path="{sourced}"', *SMALL)
    # The checksum recorded by source catches it before anything reads the bytes.
    assert_clean_error(rc, output, r"runs/sample/source/part-00000.parquet: checksum mismatch .*rerun the stage with --force")
    assert not Path("runs/sample/generate/_SUCCESS.json").exists()


def test_corrupt_success_marker_and_state_file(capsys, sourced):
    Path("runs/sample/source/_SUCCESS.json").write_text('{"stage": "sou')
    rc, output = cli(capsys, "source", "--input", str(sourced), *SMALL)
    assert_clean_error(rc, output, r"_SUCCESS.json: corrupt success marker \(not JSON\); rerun `infir source --force`")
    rc, output = cli(capsys, "source", "--input", str(sourced), *SMALL, "--force")
    assert rc == 0, output
    gen = Path("runs/sample/generate")
    gen.mkdir()
    (gen / "_STATE.json").write_bytes(b"\x00\x01garbage")
    rc, output = cli(capsys, "generate", "--set", f'source.path="{sourced}"', *SMALL)
    assert_clean_error(rc, output, r"generate/_STATE.json: corrupt state file")


@pytest.mark.parametrize("content,why", [
    ("[1, 2]", "the file"),
    ('{"stage": "source", "rows": 3, "summary": null}', "summary"),
    ('{"stage": "source", "rows": 3, "shards": "none"}', "shards"),
    ('{"stage": "source", "rows": -4}', "rows"),
])
def test_wrongly_shaped_success_marker_is_one_clear_line_everywhere(capsys, sourced, content, why):
    rc, output = cli(capsys, "source", "--input", str(sourced), *SMALL)
    assert rc == 0, output
    Path("runs/sample/source/_SUCCESS.json").write_text(content)
    for args in (("status", "runs/sample"), ("build", "--set", f'source.path="{sourced}"', *SMALL, "--until", "write"),
                 ("generate", "--set", f'source.path="{sourced}"', *SMALL)):
        rc, output = cli(capsys, *args)
        assert_clean_error(rc, output, rf"source/_SUCCESS.json: malformed success marker \({why}.*rerun `infir source --force`")


def test_unreadable_llm_cache_and_missing_prompts(capsys, sourced):
    Path("junk.sqlite3").write_bytes(os.urandom(4096))
    rc, output = cli(capsys, "generate", "--set", f'source.path="{sourced}"', *SMALL, "--set", 'llm.cache_path="junk.sqlite3"')
    assert_clean_error(rc, output, r"LLM cache junk.sqlite3: cannot open: file is not a database")
    # The attempt kept nothing, so fixing the setting is enough (no --force needed).
    rc, output = cli(capsys, "generate", "--set", f'source.path="{sourced}"', *SMALL, "--set", 'run.prompts_dir="nowhere"')
    assert_clean_error(rc, output, r"prompt nowhere/generate_instruction.md: file not found")
    assert not Path("runs/sample/generate/_SUCCESS.json").exists()


def test_disk_full_mid_stage_leaves_no_shard_or_marker_and_resumes(capsys, sourced, monkeypatch):
    real = pq.write_table
    calls = {"n": 0}

    def write_until_full(table, where, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard: the first one is complete and kept
            with open(where, "wb") as f:
                f.write(b"PAR1 half a shard")
            raise OSError(28, "No space left on device")
        return real(table, where, *a, **k)

    monkeypatch.setattr(pq, "write_table", write_until_full)
    over = ("--set", f'source.path="{sourced}"', *SMALL, "--set", "generate.shard_rows=4")
    rc, output = cli(capsys, "generate", *over)
    assert_clean_error(rc, output, r"generate/part-00001.parquet: cannot write shard: No space left on device")
    gen = Path("runs/sample/generate")
    assert not (gen / "_SUCCESS.json").exists()
    assert [p.name for p in gen.glob("*.parquet")] == ["part-00000.parquet"]
    assert not [p for p in gen.iterdir() if ".tmp" in p.name]
    assert_nothing_looks_complete()
    monkeypatch.setattr(pq, "write_table", real)  # space freed: a plain rerun finishes
    rc, output = cli(capsys, "generate", *over)
    assert rc == 0, output
    assert json.loads((gen / "_SUCCESS.json").read_text())["summary"]["shards resumed"] == 1


def test_upstream_shard_changed_after_its_stage_finished_is_one_clear_error(capsys, sourced):
    stage = Path("runs/sample/source")
    record = json.loads((stage / "_SUCCESS.json").read_text())
    assert verify_upstream(stage, record) == len(record["shards"])
    shard = stage / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).slice(1), shard)  # a valid Parquet file, one row short
    with pytest.raises(InfirError, match=r"source/part-00000.parquet: checksum mismatch \(recorded sha256 .*rerun the stage"):
        verify_upstream(stage, record)
    shard.unlink()
    with pytest.raises(InfirError, match=r"part-00000.parquet: listed in .*_SUCCESS.json but missing"):
        verify_upstream(stage, record)
    for bad in ({"shards": [{"name": "../../etc/passwd", "sha256": "0"}]}, {"shards": "x"}, {"shards": [{"name": 1}]}):
        with pytest.raises(InfirError, match=r"_SUCCESS.json: corrupt success marker"):
            verify_upstream(stage, bad)


@pytest.mark.parametrize("limit_kib,where", [(16, r"\(writing the temporary file \S+-spill/bucket-\d+\.parquet\)"),
                                             (40, r"1\.0\.0/plots/lengths\.png: cannot write release")])
def test_disk_full_while_writing_a_release_names_the_file(capsys, sourced, limit_kib, where):
    over = ("--set", f'source.path="{sourced}"', *SMALL)
    rc, output = cli(capsys, "build", *over, "--until", "verify")
    assert rc == 0, output

    def tiny_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    proc = subprocess.run(infir_cmd("write", *over), env=child_env(), capture_output=True, text=True,
                          preexec_fn=tiny_disk, timeout=300)
    output = proc.stdout + proc.stderr
    assert_clean_error(proc.returncode, output, r"releases/inf-ir-sample/1\.0\.0\S*: cannot write release: File too large")
    assert re.search(where, output), output[-2000:]
    assert not Path("releases/inf-ir-sample/1.0.0").exists()
    assert_nothing_looks_complete()


def test_nothing_accepted_and_unwritable_releases_dir(capsys, sourced):
    over = ("--set", f'source.path="{sourced}"', *SMALL)
    for stage in names_between("generate", "verify"):
        rc, output = cli(capsys, stage, *over)
        assert rc == 0, output
    Path("blocker").write_text("")
    rc, output = cli(capsys, "write", *over, "--set", 'write.releases_dir="blocker/releases"')
    assert_clean_error(rc, output, r"blocker/releases/inf-ir-sample: Not a directory")
    assert not Path("runs/sample/write/_SUCCESS.json").exists()
    # Every row rejected: a clear refusal, not an empty release.
    success = Path("runs/sample/verify/_SUCCESS.json")
    record = json.loads(success.read_text())
    record["summary"]["accepted"] = 0
    success.write_text(json.dumps(record))
    rc, output = cli(capsys, "write", *over)
    assert_clean_error(rc, output, r"no accepted rows \(\d+ candidate\(s\)\); nothing to release")
    assert not Path("releases").exists()


@pytest.mark.slow
@pytest.mark.parametrize("limit_kib,where", [(64, "source"), (200, "retrieval index"), (500, "LLM cache")])
def test_tiny_disk_build_fails_cleanly_then_resumes(limit_kib, where):
    """A real out-of-space condition: the process may write no file larger than the limit
    (RLIMIT_FSIZE, as on a nearly full filesystem). The sample build then runs out of room in
    `where`; it fails with one error line and a clean store, and a rerun with room finishes."""
    d = sample_copy()
    cmd = infir_cmd("build", "--set", f'source.path="{d}"', "--until", "verify")

    def tiny_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_kib * 1024, limit_kib * 1024))

    env = child_env()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, preexec_fn=tiny_disk, timeout=300)
    output = proc.stdout + proc.stderr
    expected = {
        "source": r"source/collection/part-00000.parquet: cannot write shard: .*File too large",
        "retrieval index": r"runs/sample/index: cannot write or read the retrieval index: .*File too large",
        # The answers' store runs out first: the LLM cache, or the run's spend ledger (naming its file).
        "LLM cache": r"runs/sample/generate: stopped: (cache write failed|spend ledger failed: runs/sample/spend.sqlite3: "
                     r"spend ledger): (disk I/O error|database or disk is full)",
    }[where]
    assert_clean_error(proc.returncode, output, expected)
    assert not Path("runs/sample/verify/_SUCCESS.json").exists()
    assert_nothing_looks_complete()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_nothing_looks_complete()
