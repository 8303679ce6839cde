"""Release writer + verifier: layout, determinism, immutability, card, datasets loading."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.errors import InfirError
from pipeline.release import (
    INFIR_COLUMNS,
    RELEASE_SCHEMA,
    ST_SCHEMA,
    assign_splits,
    bump_version,
    verify_release,
    write_release,
)
from pipeline.release.card import linked_files, parse_front_matter
from release_fixtures import synthetic_accepted_table, synthetic_stats

NAME = "inf-ir"


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return synthetic_accepted_table(rows=40, queries=30, seed=0)


def _write(table, root: Path, **kw):
    return write_release(table, synthetic_stats(table.num_rows), root, NAME, **kw)


def _modified(table: pa.Table) -> pa.Table:
    col = table.column("query_positive").to_pylist()
    col[0] = col[0] + " (edited)"
    return table.set_column(table.column_names.index("query_positive"), "query_positive", pa.array(col))


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _release_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_write_verify_and_load_offline(table, tmp_path, monkeypatch):
    res = _write(table, tmp_path / "releases")
    assert res.created and res.version == "1.0.0"
    assert res.path == tmp_path / "releases" / NAME / "1.0.0"
    report = verify_release(res.path)
    assert report.rows == 40 and sum(report.rows_per_split.values()) == 40
    assert all(report.rows_per_split[s] > 0 for s in ("train", "validation", "test"))
    assert "OK" in report.summary()

    shards = sorted(p.name for p in (res.path / "data").iterdir())
    assert shards == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
        "validation-00000-of-00001.parquet",
    ]
    for name in shards:
        pf = pq.ParquetFile(res.path / "data" / name)
        assert pf.schema_arrow.equals(RELEASE_SCHEMA, check_metadata=False)
        assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
        ids = pf.read(columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)

    # datasets reads the card's front matter offline
    import datasets
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    ds = datasets.load_dataset(str(res.path), cache_dir=str(tmp_path / "hf-cache"))
    assert set(ds) == {"train", "validation", "test"}
    for split, d in ds.items():
        assert set(INFIR_COLUMNS) <= set(d.column_names)
        assert d.num_rows == report.rows_per_split[split]
        assert set(d["split"]) == {split}
    seen: dict[str, str] = {}
    for split, d in ds.items():
        for q in d["query_id"]:
            assert seen.setdefault(q, split) == split, f"query {q} in {seen[q]} and {split}"
    # loading left nothing behind in the release
    verify_release(res.path)


def test_same_input_is_byte_identical_and_noop(table, tmp_path):
    a = _write(table, tmp_path / "a")
    b = _write(table, tmp_path / "b")
    fa, fb = _release_files(a.path), _release_files(b.path)
    assert set(fa) == set(fb)
    for rel in fa:
        if rel != "manifest.json":
            assert fa[rel] == fb[rel], f"{rel} differs between two identical writes"
    ma, mb = _manifest(a.path), _manifest(b.path)
    ma.pop("created_at"), mb.pop("created_at")
    assert ma == mb

    before = _release_files(a.path)
    again = _write(table, tmp_path / "a")
    assert again.created is False and again.version == "1.0.0" and again.path == a.path
    assert _release_files(a.path) == before  # untouched, created_at included
    assert not [p for p in (tmp_path / "a" / NAME).iterdir() if p.name.startswith(".")]


def test_different_content_same_version_refuses(table, tmp_path):
    root = tmp_path / "releases"
    _write(table, root, version="1.0.0")
    with pytest.raises(InfirError, match=r"already exists with different content.*--bump"):
        _write(_modified(table), root, version="1.0.0")
    # no flags: compares with the latest version, refuses too
    with pytest.raises(InfirError, match="--bump"):
        _write(_modified(table), root)
    assert sorted(p.name for p in (root / NAME).iterdir()) == ["1.0.0"]  # no temp dir left
    verify_release(root / NAME / "1.0.0")


def test_bump(table, tmp_path):
    root = tmp_path / "releases"
    assert _write(table, root, bump="minor").version == "1.0.0"  # nothing yet: start at 1.0.0
    t2 = _modified(table)
    r = _write(t2, root, bump="minor")
    assert (r.version, r.created) == ("1.1.0", True)
    # identical content to the latest: a bump is a no-op returning the latest
    r = _write(t2, root, bump="patch")
    assert (r.version, r.created) == ("1.1.0", False)
    t3 = _modified(t2)
    assert _write(t3, root, bump="patch").version == "1.1.1"
    assert _write(_modified(t3), root, bump="major").version == "2.0.0"
    assert bump_version("1.9.9", "minor") == "1.10.0"
    with pytest.raises(InfirError):
        bump_version("1.0", "patch")
    with pytest.raises(InfirError):
        _write(table, root, version="3.0.0", bump="patch")
    with pytest.raises(InfirError, match="invalid release version"):
        _write(table, root, version="v1")


def test_tampering_is_detected(table, tmp_path):
    res = _write(table, tmp_path / "r")
    shard = res.path / "data" / "train-00000-of-00001.parquet"
    original = shard.read_bytes()
    shard.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    with pytest.raises(InfirError, match=r"train-00000-of-00001\.parquet.*sha256 mismatch"):
        verify_release(res.path)
    shard.write_bytes(original)
    verify_release(res.path)

    plot = res.path / "plots" / "lengths.png"
    saved = plot.read_bytes()
    plot.unlink()
    with pytest.raises(InfirError, match=r"plots/lengths\.png"):
        verify_release(res.path)
    plot.write_bytes(saved)

    stray = res.path / "data" / "train-00001-of-00001.parquet"
    shutil.copy(shard, stray)
    with pytest.raises(InfirError, match=r"train-00001-of-00001\.parquet.*not listed"):
        verify_release(res.path)
    stray.unlink()

    m = _manifest(res.path)
    m["shards"][0]["rows"] += 1
    (res.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InfirError, match=r"rows, manifest says"):
        verify_release(res.path)


def test_card_front_matter_and_plots(table, tmp_path):
    res = _write(table, tmp_path / "r")
    text = (res.path / "README.md").read_text()
    meta = parse_front_matter(text)
    yaml.safe_dump(meta)  # round-trips
    assert meta["task_categories"] == ["text-retrieval"]
    assert meta["language"] == ["en"]
    assert meta["size_categories"] == ["n<1K"]
    assert meta["license"] and meta["pretty_name"] and meta["tags"]
    default = next(c for c in meta["configs"] if c["config_name"] == "default")
    assert default["data_files"] == [
        {"split": "train", "path": "data/train-*"},
        {"split": "validation", "path": "data/validation-*"},
        {"split": "test", "path": "data/test-*"},
    ]
    links = linked_files(text)
    assert {"plots/lengths.png", "plots/rejections.png"} <= set(links)
    for rel in links:
        assert (res.path / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2505.21439" in text and "@misc{" in text
    assert "Towards Better Instruction Following Retrieval Models" in text
    for col in INFIR_COLUMNS:
        assert f"`{col}`" in text
    assert text.count("### Example ") == 3
    m = _manifest(res.path)
    assert m["counts"]["candidates"] == 52 and m["counts"]["rejected"] == 12
    assert m["tokens"] == {"prompt": 123456, "completion": 7890}
    assert m["models"]["judge"] == "offline-judge"
    assert m["prompt_hashes"]["generate"] == "aaaaaaaaaaaa"
    assert all(len(s["sha256"]) == 64 for s in m["shards"])
    assert list(m) == sorted(m)  # sorted keys
    assert set(m["lengths"]) == set(INFIR_COLUMNS)


def test_no_local_paths_in_release(table, tmp_path):
    home = str(Path.home())
    stats = synthetic_stats(table.num_rows, config={
        "run": {"dir": str(tmp_path / "runs" / "x"), "name": "x"},
        "source": {"path": os.path.join(home, "corpora", "msmarco.tsv")},
        "prompts_dir": str(Path.cwd() / "prompts"),
        "note": f"built from {home}/corpora",
        "llm": {"api_key": "sk-do-not-publish", "max_tokens": 512},
    })
    res = write_release(table, stats, tmp_path / "releases", NAME)
    needles = [str(tmp_path).encode(), (home.rstrip("/") + "/").encode(), str(Path.cwd()).encode(),
               b"sk-do-not-publish"]
    for rel, data in _release_files(res.path).items():
        for n in needles:
            assert n not in data, f"{rel} contains {n!r}"
    cfg = _manifest(res.path)["config"]
    assert cfg["prompts_dir"] == "prompts"
    assert cfg["source"]["path"].endswith("msmarco.tsv")
    assert cfg["llm"] == {"api_key": "<redacted>", "max_tokens": 512}


def test_splits_stable_and_balanced():
    ids = [f"q{i}" for i in range(10_000)]
    full = assign_splits(ids, 13, (0.8, 0.1, 0.1))
    part = assign_splits(ids[:1234], 13, (0.8, 0.1, 0.1))
    assert part == full[:1234]  # a query keeps its split as the corpus grows
    share = {s: full.count(s) / len(ids) for s in ("train", "validation", "test")}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["test"] - 0.1) < 0.02
    assert assign_splits(ids[:50], 14, (0.8, 0.1, 0.1)) != full[:50]  # the seed matters
    assert set(assign_splits(ids[:100], 13, (1, 0, 0))) == {"train"}
    with pytest.raises(InfirError):
        assign_splits(ids, 13, (0.5, 0.5))


def test_shard_size_bound(table, tmp_path):
    res = _write(table, tmp_path / "r", max_rows_per_shard=7)
    m = _manifest(res.path)
    train = [s for s in m["shards"] if s["split"] == "train"]
    n = len(train)
    assert n == -(-m["splits"]["train"]["rows"] // 7) and n > 1
    assert [s["path"] for s in train] == [f"data/train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert all(s["rows"] <= 7 for s in m["shards"])
    ids = []
    for s in train:
        ids += pq.read_table(res.path / s["path"], columns=["id"]).column("id").to_pylist()
    assert ids == sorted(ids)
    verify_release(res.path)


def test_triplets_config(table, tmp_path):
    res = _write(table, tmp_path / "r", st_template="query: {query} instruction: {instruction}")  # on by default
    m = _manifest(res.path)
    assert m["st_export"]["template"] == "query: {query} instruction: {instruction}"
    train = pq.read_table(res.path / "data" / "train-00000-of-00001.parquet")
    assert train.column_names[:7] == list(INFIR_COLUMNS)  # the default config leads with the InF-IR columns
    st = pq.read_table(res.path / "triplets" / "train.parquet")
    assert st.column_names == ["anchor", "positive", "negative_1", "negative_2"]
    assert st.num_rows == 3 * train.num_rows
    r = train.slice(0, 1).to_pylist()[0]
    rows = st.slice(0, 3).to_pylist()
    qp, ip, ineg, qn = r["query_positive"], r["instruction_positive"], r["instruction_negative"], r["query_negative"]
    p, hn1, hn2 = r["document_positive"], r["hard_negative_document_1"], r["hard_negative_document_2"]
    assert rows[0] == {"anchor": f"query: {qp} instruction: {ip}", "positive": p, "negative_1": hn1, "negative_2": hn2}
    assert rows[1] == {"anchor": f"query: {qp} instruction: {ineg}", "positive": hn1, "negative_1": p, "negative_2": hn2}
    assert rows[2] == {"anchor": f"query: {qn} instruction: {ip}", "positive": hn2, "negative_1": p, "negative_2": hn1}
    meta = parse_front_matter((res.path / "README.md").read_text())
    trip = next(c for c in meta["configs"] if c["config_name"] == "triplets")
    assert {f["path"] for f in trip["data_files"]} == {f"triplets/{s}.parquet" for s in ("train", "validation", "test")}
    verify_release(res.path)
    with pytest.raises(InfirError, match="template"):
        _write(table, tmp_path / "r2", st_template="{query} {passage}")
    off = _write(table, tmp_path / "r3", st_export=False)
    assert not (off.path / "triplets").exists() and _manifest(off.path)["st_export"] is None


def test_triplets_match_infir_train_pairs(table, tmp_path):
    """The published triplets are exactly the pairs `infir train` builds from the full table."""
    from pipeline.train.data import build_training_pairs, load_release_split

    res = _write(table, tmp_path / "r")
    pairs = build_training_pairs(load_release_split(res.path, "train"))
    st = pq.read_table(res.path / "triplets" / "train.parquet").to_pydict()
    assert pairs.rows_skipped == 0 and st == pairs.columns


def test_input_validation(table, tmp_path):
    with pytest.raises(InfirError, match="lacks release column.*query_negative"):
        _write(table.drop_columns(["query_negative"]), tmp_path / "r")
    vals = table.column("instruction_negative").to_pylist()
    vals[3] = ""
    bad = table.set_column(table.column_names.index("instruction_negative"), "instruction_negative", pa.array(vals))
    with pytest.raises(InfirError, match="empty 'instruction_negative'"):
        _write(bad, tmp_path / "r")
    dup = pa.concat_tables([table, table.slice(0, 1)])
    with pytest.raises(InfirError, match="duplicate row id"):
        _write(dup, tmp_path / "r")
    with pytest.raises(InfirError, match="invalid release name"):
        write_release(table, {}, tmp_path / "r", "../evil")
    assert not (tmp_path / "r" / NAME).exists() or not any((tmp_path / "r" / NAME).iterdir())


def test_crash_leaves_no_partial_release(table, tmp_path, monkeypatch):
    from pipeline.release import plots

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_rejections", boom)
    with pytest.raises(RuntimeError):
        _write(table, tmp_path / "r")
    assert list((tmp_path / "r" / NAME).iterdir()) == []


def _shard_input(table: pa.Table, d: Path, sizes: list[int]) -> list[Path]:
    """`table` cut into Parquet shards of the given sizes (the last takes the rest), as verify writes them."""
    d.mkdir(parents=True)
    paths, start = [], 0
    for i, n in enumerate(sizes + [table.num_rows]):
        part = table.slice(start, n)
        if not part.num_rows:
            break
        paths.append(d / f"part-{i:05d}.parquet")
        pq.write_table(part, paths[-1], row_group_size=17)
        start += part.num_rows
    return paths


def test_sharded_input_gives_byte_identical_release(tmp_path, monkeypatch):
    """The writer streams its input (keys first, then rows bucketed per output row group): how the
    accepted rows are cut into shards, batches and spill pieces must not change a single byte."""
    from pipeline.release import rows as rows_mod
    from pipeline.release import stream

    # Small row groups, batches and spill pieces, so 1,500 rows cross every boundary many times.
    monkeypatch.setattr(stream, "ROW_GROUP_SIZE", 64)
    monkeypatch.setattr(stream, "SPILL_BYTES", 50_000)
    monkeypatch.setattr(rows_mod, "BATCH_ROWS", 45)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # created_at, the manifest's only clock
    table = synthetic_accepted_table(rows=1500, queries=600, seed=3)
    single = _shard_input(table, tmp_path / "one", [])
    many = _shard_input(table, tmp_path / "many", [1, 90, 7, 33, 2] * 9)
    assert len(single) == 1 and len(many) > 40
    kw = dict(max_rows_per_shard=150)
    releases = {
        "table": _write(table, tmp_path / "t", **kw).path,
        "one": write_release(single, synthetic_stats(1500), tmp_path / "o", NAME, **kw).path,
        "many": write_release(many, synthetic_stats(1500), tmp_path / "m", NAME, **kw).path,
    }
    files = {k: _release_files(p) for k, p in releases.items()}
    assert files["many"] == files["one"] == files["table"]
    data = sorted(f for f in files["one"] if f.startswith(("data/", "triplets/")))
    assert len([f for f in data if f.startswith("data/train-")]) > 5 and "triplets/test.parquet" in data

    # Each file equals one pq.write_table of its whole content (the pre-streaming writer's output),
    # so the row groups are cut as before: 64-row groups within 150-row shards.
    from pipeline.release import writer

    for rel in data:
        # (read back, list items are named "element"; the release schema names them "item")
        whole = pq.read_table(releases["one"] / rel).cast(RELEASE_SCHEMA if rel.startswith("data/") else ST_SCHEMA)
        again = tmp_path / "again.parquet"
        pq.write_table(whole, again, row_group_size=64, **writer._PARQUET_OPTIONS)
        assert again.read_bytes() == files["one"][rel], rel
    md = pq.ParquetFile(releases["one"] / "data" / "train-00000-of-00009.parquet").metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [64, 64, 22]
    ids = [i for f in data if f.startswith("data/train-") for i in pq.read_table(releases["one"] / f)["id"].to_pylist()]
    assert ids == sorted(ids) and len(ids) == _manifest(releases["one"])["splits"]["train"]["rows"]
    assert not list((tmp_path / "o" / NAME).glob(".*")), "spill and temp dirs are removed"


def test_unreadable_input_shard_is_named(table, tmp_path):
    paths = _shard_input(table, tmp_path / "in", [10, 10])
    paths[1].write_bytes(b"PAR1 not parquet")
    with pytest.raises(InfirError, match=r"part-00001\.parquet: unreadable Parquet shard"):
        write_release(paths, synthetic_stats(40), tmp_path / "r", NAME)
    assert not (tmp_path / "r" / NAME).exists()


# ---- SOURCE_DATE_EPOCH (issue #30, point 8) ------------------------------------------------------


@pytest.mark.parametrize("value", ["99999999999999999999", "9" * 5000, "253402300800", "-1", "soon", "1.7e9",
                                   " 1700000000"])
def test_source_date_epoch_out_of_range_is_one_line(table, tmp_path, monkeypatch, value):
    """Huge, past the year 9999, negative or not a whole number: refused naming the variable, before
    the writer reads a row (before: a traceback from datetime, or a silent fall back to the clock)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    with pytest.raises(InfirError, match=r"^SOURCE_DATE_EPOCH='.*': expected a whole number of seconds") as e:
        _write(table, tmp_path / "r")
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value, created", [("0", "1970-01-01T00:00:00+00:00"),
                                            ("253402300799", "9999-12-31T23:59:59+00:00")])
def test_source_date_epoch_bounds_are_kept(table, tmp_path, monkeypatch, value, created):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert _manifest(_write(table, tmp_path / "r").path)["created_at"] == created


@pytest.mark.parametrize("value", ["99999999999999999999", "soon", "-1"])
def test_source_date_epoch_out_of_range_stops_infir_before_any_stage(tmp_path, value):
    """Checked when `infir` starts: numpy's f2py (imported with scipy by the mine stage) converts
    the variable at import, so a build reached the write stage only to die there in a traceback."""
    from conftest import SAMPLE, run_infir

    code, out, err = run_infir("build", "--set", f'source.path="{SAMPLE}"', "--until", "write",
                               env={"SOURCE_DATE_EPOCH": value})
    assert code == 2 and "Traceback" not in out + err and "internal error" not in out + err, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: SOURCE_DATE_EPOCH='{value}'"), err[-2000:]
    assert not (tmp_path / "releases").exists() and not (tmp_path / "runs").exists()
