"""pipeline.train: release loading, pair construction, training, release/BEIR evaluation, compare."""

from __future__ import annotations

import json
import math
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipeline.errors import InfirError
from pipeline.train import (
    TrainSettings,
    build_training_pairs,
    compare,
    evaluate_beir,
    evaluate_release,
    load_release_split,
    train,
)
from train_fixtures import write_synthetic_release

INFIR = [
    "query_positive",
    "instruction_positive",
    "document_positive",
    "instruction_negative",
    "hard_negative_document_1",
    "query_negative",
    "hard_negative_document_2",
]


class BowModel:
    """Deterministic bag-of-words encoder over a tiny vocabulary (sentence-transformers style encode)."""

    VOCAB = ("salmon", "grill", "steam", "tofu")

    def encode(self, texts, batch_size=32, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False):
        out = np.zeros((len(texts), len(self.VOCAB)), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in re.findall(r"[a-z]+", t.lower()):
                if w in self.VOCAB:
                    out[i, self.VOCAB.index(w)] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def _row(q, ip, p, ineg, hn1, qn, hn2, i=0):
    return {
        "id": f"r{i}",
        "query_id": "q",
        "split": "test",
        "query_positive": q,
        "instruction_positive": ip,
        "document_positive": p,
        "instruction_negative": ineg,
        "hard_negative_document_1": hn1,
        "query_negative": qn,
        "hard_negative_document_2": hn2,
    }


def _write(release, split, rows, name=None):
    data = release / "data"
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), data / (name or f"{split}-00000-of-00001.parquet"))
    return release


@pytest.fixture()
def bow_release(tmp_path):
    # Two rows share Q+ "salmon" and differ by instruction: only the instruction picks P+.
    rows = [
        _row("salmon", "grill", "salmon grill", "steam", "salmon steam", "tofu", "tofu grill", 0),
        _row("salmon", "steam", "salmon steam", "grill", "salmon grill", "tofu", "tofu steam", 1),
    ]
    return _write(tmp_path / "rel", "test", rows)


# ---------------------------------------------------------------- data


def test_load_release_split_reads_all_shards_in_order(tmp_path):
    rel = write_synthetic_release(tmp_path / "rel", n_train=7, n_test=3, shards=3)
    assert len(sorted((rel / "data").glob("train-*.parquet"))) == 3
    rows = load_release_split(rel, "train")
    assert len(rows) == 7 and all(r["split"] == "train" for r in rows)
    assert isinstance(rows[0]["mined_negatives"], list) and "text" in rows[0]["mined_negatives"][0]
    assert len(load_release_split(rel, "train", max_rows=4)) == 4


def test_load_release_split_errors(tmp_path):
    with pytest.raises(InfirError, match="not a release data directory"):
        load_release_split(tmp_path, "train")
    rel = write_synthetic_release(tmp_path / "rel", n_train=2, n_test=2)
    with pytest.raises(InfirError, match="no shards for split 'validation'"):
        load_release_split(rel, "validation")
    _write(tmp_path / "bad", "train", [{"query_positive": "q"}])
    with pytest.raises(InfirError, match=r"train-00000-of-00001.parquet: missing column"):
        load_release_split(tmp_path / "bad", "train")


def test_build_training_pairs_layout():
    rows = [
        _row("q1", "i1", "P", "j1", "H1", "qn1", "H2", 0)
        | {"mined_negatives": [{"text": "P"}, {"text": "M1"}, {"text": "M2"}]},
        _row("q2", "i2", "P2", "j2", "G1", "qn2", "G2", 1) | {"mined_negatives": [{"text": "N1"}]},
        _row("q3", "i3", "same", "j3", "same", "qn3", "x", 2),  # duplicate passages -> skipped
        _row("q4", "", "a", "b", "c", "d", "e", 3),  # empty instruction -> skipped
    ]
    pairs = build_training_pairs(rows, "{query} {instruction}")
    assert list(pairs.columns) == ["anchor", "positive", "negative_1", "negative_2"]
    assert len(pairs) == 6 and pairs.rows_used == 2 and pairs.rows_skipped == 2
    c = pairs.columns
    assert c["anchor"][:3] == ["q1 i1", "q1 j1", "qn1 i1"]
    assert c["positive"][:3] == ["P", "H1", "H2"]
    assert c["negative_1"][:3] == ["H1", "P", "P"]
    assert c["negative_2"][:3] == ["H2", "H2", "H1"]
    mined = build_training_pairs(rows, use_mined_negatives=True, num_mined_negatives=1)
    # "P" (the row's own P+) is excluded: row 1's first mined negative is M1
    assert list(mined.columns)[-1] == "negative_3"
    assert mined.columns["negative_3"] == ["M1"] * 3 + ["N1"] * 3
    two = build_training_pairs(rows, use_mined_negatives=True, num_mined_negatives=2)
    # Row 2 has one mined negative: it is skipped and counted, and every kept pair gets two (a
    # poorer row never lowers the count for the rest, as it did when one row without mined
    # negatives turned them off for a whole MS MARCO training).
    assert list(two.columns)[-2:] == ["negative_3", "negative_4"] and two.rows_used == 1
    assert two.columns["negative_4"] == ["M2"] * 3
    assert two.skip_reasons == {"duplicate_passages": 1, "empty_field": 1, "too_few_mined_negatives": 1}
    none = build_training_pairs([rows[0], rows[1] | {"mined_negatives": []}], use_mined_negatives=True)
    assert none.rows_used == 1 and none.skip_reasons == {"too_few_mined_negatives": 1}
    assert none.columns["negative_3"] == ["M1"] * 3


def test_settings_validation():
    s = TrainSettings()
    assert s.epochs == 1 and s.batch_size == 32 and s.learning_rate == 2e-5 and s.seed == 13
    assert s.template == "{query} {instruction}" and s.loss == "mnrl" and s.max_seq_length == 256
    with pytest.raises(ValidationError):
        TrainSettings(bogus=1)
    with pytest.raises(ValidationError):
        TrainSettings(template="{query}")
    with pytest.raises(ValidationError):
        TrainSettings(loss="triplet")
    with pytest.raises(ValidationError):
        TrainSettings(loss="cached_mnrl", batch_size=4, mini_batch_size=8)


# ---------------------------------------------------------------- evaluation (exact, fake encoder)


def test_evaluate_release_exact_values_with_ties(bow_release):
    r = evaluate_release(BowModel(), bow_release, "test")
    assert r["rows"] == 2 and r["pool_size"] == 4  # salmon grill, salmon steam, tofu grill, tofu steam
    assert r["ndcg_at_10"] == 1.0 and r["mrr_at_10"] == 1.0
    # query only: "salmon" ties both salmon passages; pool order puts row 0's P+ first
    assert r["mrr_at_10_query_only"] == pytest.approx((1 + 0.5) / 2)
    assert r["ndcg_at_10_query_only"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    # changed instruction / query: P+ falls from rank 1 to rank 2 in both rows -> 1 - (1/2)/(1/1) = 0.5
    assert r["pmrr_instruction"] == pytest.approx(0.5)
    assert r["pmrr_query"] == pytest.approx(0.5)
    assert r["pmrr"] == pytest.approx(0.5)


def test_evaluate_release_pmrr_negative_when_model_ignores_instruction(tmp_path):
    # A model that reads the instruction backwards: the negative instruction pulls P+ up.
    rows = [
        _row("salmon", "steam", "salmon grill", "grill", "salmon steam", "salmon", "tofu steam", 0),
    ]
    rel = _write(tmp_path / "rel", "test", rows)
    r = evaluate_release(BowModel(), rel, "test")
    # og "salmon steam": salmon steam 1.0 > salmon grill 0.5 = tofu steam 0.5 -> P+ rank 2
    # changed "salmon grill": P+ rank 1 -> (1/2)/(1/1) - 1 = -0.5
    assert r["pmrr_instruction"] == pytest.approx(-0.5)
    # Q- identical to Q+: no change -> 0
    assert r["pmrr_query"] == 0.0


def test_build_pool_parts_order_and_seed():
    from pipeline.train.pool import build_pool

    rows = [
        {"document_positive": "p0", "hard_negative_document_1": "h0", "hard_negative_document_2": "g0",
         "mined_negatives": [{"text": "m0"}, {"text": "p0"}, {"text": "m1"}]},
        {"document_positive": "p1", "hard_negative_document_1": "h1", "hard_negative_document_2": "g1",
         "mined_negatives": [{"text": "m1"}, {"text": " "}]},
    ]
    collection = [f"c{i}" for i in range(50)] + ["p0", "m0", "c3"]
    pool = build_pool(rows, collection, sample_size=10, seed=1)
    assert pool.docs[:8] == ["p0", "h0", "g0", "p1", "h1", "g1", "m0", "m1"]
    assert (pool.split_passages, pool.mined, pool.sampled, pool.collection_rest) == (6, 2, 10, 50)
    assert len(set(pool.docs)) == len(pool.docs) and set(pool.docs[8:]) <= {f"c{i}" for i in range(50)}
    assert build_pool(rows, collection, 10, seed=1).docs == pool.docs  # seeded: same pool
    assert build_pool(rows, collection, 10, seed=2).docs != pool.docs
    everything = build_pool(rows, collection, sample_size=10_000)  # the whole rest when it is smaller
    assert everything.sampled == 50 and len(everything.docs) == 58
    assert build_pool(rows, collection, sample_size=0).docs == pool.docs[:8]


def test_evaluate_release_pool_holds_mined_negatives_and_collection(tmp_path):
    from train_fixtures import MINED_TYPE

    rel = tmp_path / "rel"
    test_row = _row("salmon", "grill", "salmon grill", "steam", "salmon steam", "tofu", "tofu grill", 0)
    test_row["mined_negatives"] = [{"passage_id": "m", "text": "salmon grill grill", "score": 1.0, "rank": 1,
                                    "method": "bm25"}]
    train_row = _row("tofu", "steam", "tofu steam", "grill", "tofu grill", "salmon", "salmon steam", 1)
    train_row["mined_negatives"] = []
    for split, row in (("test", test_row), ("train", train_row)):
        row["split"] = split
        data = rel / "data"
        data.mkdir(parents=True, exist_ok=True)
        t = pa.Table.from_pylist([row])
        t = t.set_column(t.column_names.index("mined_negatives"), "mined_negatives",
                         pa.array([row["mined_negatives"]], type=MINED_TYPE))
        pq.write_table(t, data / f"{split}-00000-of-00001.parquet")
    r = evaluate_release(BowModel(), rel, "test")
    # split passages 3, its mined negative 1, rest of the release: "tofu steam" only
    assert r["pool_size"] == 5 and r["pool"]["mined_negatives"] == 1 and r["pool"]["sampled"] == 1
    # the mined "salmon grill grill" is close to the query (cosine 0.95) but below P+ (1.0)
    assert r["mrr_at_10"] == 1.0
    # query only: "salmon" ties salmon grill, salmon steam, salmon grill grill -> P+ first (pool order)
    assert r["mrr_at_10_query_only"] == 1.0
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": str(i), "text": f"tofu {i}"}) + "\n" for i in range(30)))
    r = evaluate_release(BowModel(), rel, "test", pool_sample=7, collection=corpus)
    assert r["pool_size"] == 4 + 7 and r["pool"]["collection"] == str(corpus)


def test_evaluate_beir_with_and_without_instruction(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    docs = [("d0", "", "salmon grill"), ("d1", "", "salmon steam"), ("d2", "Tofu", "grill")]
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    queries = [
        {"_id": "a", "text": "salmon", "instruction": "grill"},
        {"_id": "b", "text": "salmon", "metadata": {"instruction": "steam"}},
        {"_id": "c", "text": "tofu"},
    ]
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\na\td0\t1\nb\td1\t1\nc\td2\t1\nc\td0\t0\n")
    r = evaluate_beir(BowModel(), root)
    assert r["queries"] == 3 and r["queries_with_instruction"] == 2 and r["corpus_size"] == 3
    assert r["ndcg_at_10"] == 1.0 and r["mrr_at_10"] == 1.0
    assert r["mrr_at_10_query_only"] == pytest.approx((1 + 0.5 + 1) / 3)
    (root / "queries.jsonl").write_text('{"_id": "a", "text": "x"}\nnot json\n')
    with pytest.raises(InfirError, match=r"queries.jsonl:2: invalid JSON"):
        evaluate_beir(BowModel(), root)


# ---------------------------------------------------------------- training (real MiniLM)


@pytest.fixture(scope="module")
def synth_release(tmp_path_factory):
    return write_synthetic_release(tmp_path_factory.mktemp("synth") / "rel", n_train=12, n_test=24, seed=1)


@pytest.fixture(scope="module")
def trained_twice(synth_release, tmp_path_factory):
    settings = TrainSettings(batch_size=4, epochs=1, max_rows=8)  # 24 pairs -> 6 steps per run
    events: list[dict] = []
    out = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"run{i}")
        res = train(synth_release, d, settings, progress=events.append if i == 0 else None)
        out.append(res)
    return out, events


def test_train_writes_model_log_settings(trained_twice):
    (res, _), events = trained_twice[0], trained_twice[1]
    assert res.rows_used == 8 and res.train_pairs == 24 and res.num_negatives == 2
    assert res.steps >= 6 and res.final_loss is not None and math.isfinite(res.final_loss)
    assert (res.model_dir / "modules.json").is_file()
    assert not [p for p in res.out_dir.iterdir() if p.name.startswith(".")]  # no temp/checkpoint leftovers
    assert not list(res.out_dir.rglob("checkpoint-*"))
    log = json.loads(res.log_path.read_text())
    assert [s["step"] for s in log["steps"]] == list(range(1, res.steps + 1))
    eff = json.loads(res.settings_path.read_text())
    assert eff["settings"]["seed"] == 13 and eff["settings"]["batch_size"] == 4
    assert eff["settings"]["output_dir"] == str(res.out_dir) and eff["train_pairs"] == 24
    assert [e["step"] for e in events] == list(range(1, res.steps + 1))
    from sentence_transformers import SentenceTransformer

    emb = SentenceTransformer(str(res.model_dir), device="cpu").encode(["hello"])
    assert emb.shape == (1, 384)


def test_train_same_seed_same_metrics(trained_twice, synth_release):
    (a, b), _ = trained_twice
    assert [s["loss"] for s in json.loads(a.log_path.read_text())["steps"]] == pytest.approx(
        [s["loss"] for s in json.loads(b.log_path.read_text())["steps"]], abs=1e-4
    )
    ra = evaluate_release(a.model_dir, synth_release, "test")
    rb = evaluate_release(b.model_dir, synth_release, "test")
    for key in ("ndcg_at_10", "mrr_at_10", "ndcg_at_10_query_only", "pmrr_instruction", "pmrr_query", "pmrr"):
        assert round(ra[key], 3) == round(rb[key], 3), key


def test_train_refuses_existing_model_dir(trained_twice, synth_release):
    (a, _), _ = trained_twice
    with pytest.raises(InfirError, match="already exists"):
        train(synth_release, a.out_dir, TrainSettings(batch_size=4))


def test_no_duplicates_batches(synth_release, tmp_path):
    from pipeline.train.trainer import build_trainer, load_model

    settings = TrainSettings(batch_size=8)
    pairs = build_training_pairs(load_release_split(synth_release, "train"), settings.template)
    trainer = build_trainer(load_model(None), pairs.columns, settings, str(tmp_path))
    sampler = trainer.get_train_dataloader().batch_sampler
    seen = 0
    cols = pairs.columns
    for batch in sampler:
        texts = [cols[c][i] for i in batch for c in cols]
        assert len(texts) == len(set(texts))  # no text twice in a batch, across all columns
        seen += len(batch)
    assert seen == len(pairs)


def test_evaluate_release_real_model_ranges_and_ablation(synth_release, trained_twice, tmp_path):
    r = evaluate_release(None, synth_release, "test")
    for key in ("ndcg_at_10", "mrr_at_10", "ndcg_at_10_query_only", "mrr_at_10_query_only"):
        assert 0.0 <= r[key] <= 1.0
    for key in ("pmrr_instruction", "pmrr_query", "pmrr"):
        assert -1.0 <= r[key] <= 1.0
    # rows share Q+ and differ only by I+: dropping the instruction must hurt
    assert r["ndcg_at_10_query_only"] < r["ndcg_at_10"]
    assert r["mrr_at_10_query_only"] < r["mrr_at_10"]

    (a, _), _ = trained_twice
    rep = compare(None, a.model_dir, synth_release, out_dir=tmp_path / "cmp")
    assert set(rep["models"]) == {"base", "finetuned"}
    assert rep["models"]["base"]["ndcg_at_10"] == pytest.approx(r["ndcg_at_10"], abs=1e-6)
    assert re.search(r"^\| pmrr \| -?\d\.\d{4} \| -?\d\.\d{4} \|$", rep["markdown"], re.M)
    assert rep["delta"]["pmrr"] == pytest.approx(rep["models"]["finetuned"]["pmrr"] - rep["models"]["base"]["pmrr"])
    for f in ("compare.json", "compare.md", "compare.png"):
        assert (tmp_path / "cmp" / f).stat().st_size > 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["delta"]["finetuned"].keys() == rep["delta"].keys()


def test_train_cached_mnrl_with_mined_negatives(synth_release, tmp_path):
    s = TrainSettings(batch_size=4, loss="cached_mnrl", mini_batch_size=2, use_mined_negatives=True, max_rows=4)
    res = train(synth_release, tmp_path / "out", s)
    assert res.rows_used == 4 and res.train_pairs == 12 and res.num_negatives == 3
    cols = json.loads(res.settings_path.read_text())["columns"]
    assert cols == ["anchor", "positive", "negative_1", "negative_2", "negative_3"]
    assert (res.model_dir / "model.safetensors").is_file()


def test_training_check_with_and_without_mined_negatives(synth_release, tmp_path):
    from pipeline.train.check import training_check

    s = TrainSettings(batch_size=4, max_rows=4, max_seq_length=32, eval_pool_sample=20)
    events: list[tuple[str, dict]] = []
    rep = training_check(synth_release, tmp_path / "out", s, progress=lambda label, e: events.append((label, e)))
    assert list(rep["models"]) == ["base", "finetuned", "finetuned_mined"] and rep["primary"] == "finetuned"
    assert rep["training"]["finetuned"]["negatives_per_pair"] == 2
    assert rep["training"]["finetuned_mined"]["negatives_per_pair"] == 3
    assert (tmp_path / "out" / "model").is_dir() and (tmp_path / "out" / "ablation" / "model").is_dir()
    assert {label for label, _ in events} == {"finetuned", "finetuned_mined"}
    for name in ("finetuned", "finetuned_mined"):
        for m in ("ndcg_at_10", "pmrr"):
            assert rep["delta"][name][m] == pytest.approx(rep["models"][name][m] - rep["models"]["base"][m])
    md = (tmp_path / "out" / "eval" / "compare.md").read_text()
    assert "| metric | base | finetuned | finetuned_mined |" in md and md.startswith("Pool: ")
    assert rep["pool_size"] == rep["models"]["finetuned_mined"]["pool_size"]  # one pool for all models


def test_unloadable_model_is_infir_error(tmp_path):
    from pipeline.train.trainer import load_model

    with pytest.raises(InfirError, match="cannot load sentence-transformers model"):
        load_model(str(tmp_path / "no-such-model"))
