"""pipeline.retrieval: BM25 / dense / hybrid hard-negative mining on small collections."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline.retrieval import (  # noqa: E402
    MiningQuery,
    MiningSettings,
    RetrievalError,
    collection_fingerprint,
    mine_hard_negatives,
    neighbours,
)
from pipeline.retrieval import bm25 as bm25_mod  # noqa: E402
from pipeline.retrieval.bm25 import BM25Index  # noqa: E402
from pipeline.retrieval.dense import EmbeddingStore, text_key  # noqa: E402


POS_EIFFEL = ("The Eiffel Tower in Paris was completed in 1889 and stands 330 metres tall. It was designed by the "
              "engineering company of Gustave Eiffel as the entrance arch for the World's Fair.")
FN_EIFFEL = POS_EIFFEL.replace("stands", "rises")  # planted false negative: one word changed
HN_EIFFEL = ("The Tokyo Tower was completed in 1958 and was modelled on the Eiffel Tower in Paris, although it is "
             "painted white and international orange to comply with air safety rules.")
POS_PHOTO = ("Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to make "
             "glucose, their food, releasing oxygen as a by-product.")
POS_PHOTO2 = "Plants make their own food in the chloroplasts of leaf cells, where chlorophyll captures light energy."
EXT_POS = "List comprehensions in Python provide a concise way to create lists, for example [x*x for x in range(10)]."
EXT_COPY = EXT_POS.replace("create", "build")

FILLER = [
    ("louvre", "Paris Museums", "The Louvre in Paris is the world's most visited museum and home of the Mona Lisa."),
    ("bigben", "", "Big Ben is the nickname of the great bell of the clock tower at the Palace of Westminster in London."),
    ("cn", "", "The CN Tower in Toronto is a 553 metre tall concrete communications and observation tower."),
    ("pisa", "", "The Leaning Tower of Pisa began to tilt during construction in the 12th century due to soft ground."),
    ("paris", "", "Paris is the capital of France, with an estimated population of two million residents."),
    ("eiffel-bio", "", "Gustave Eiffel was a French civil engineer whose company built bridges and railway viaducts."),
    ("fair", "", "The 1889 World's Fair in Paris marked the centennial of the storming of the Bastille."),
    ("chloro", "", "Chlorophyll is a green pigment found in cyanobacteria and in the chloroplasts of algae and plants."),
    ("resp", "", "Cellular respiration breaks down glucose with oxygen to release energy, carbon dioxide and water."),
    ("leaf", "", "A leaf is the principal lateral appendage of the vascular plant stem, usually borne above ground."),
    ("sun", "", "Sunlight is a portion of the electromagnetic radiation given off by the Sun, in particular light."),
    ("co2", "", "Carbon dioxide is a chemical compound with the formula CO2, a trace gas in Earth's atmosphere."),
    ("pyloop", "", "A for loop in Python iterates over the items of any sequence, such as a list or a string."),
    ("pydict", "", "Dictionary comprehensions in Python build dicts from iterables, like {k: v for k, v in pairs}."),
    ("pylist", "", "Python lists are mutable sequences, typically used to store collections of homogeneous items."),
    ("bread", "", "Bread is a staple food prepared from a dough of flour and water, usually by baking."),
    ("pasta", "", "Pasta is a type of food typically made from an unleavened dough of wheat flour mixed with water."),
    ("soccer", "", "Association football is a team sport played between two teams of eleven players each."),
    ("tennis", "", "Tennis is a racket sport played either against a single opponent or between two teams of two."),
    ("river", "", "The Seine is a 777 kilometre long river in northern France that flows through Paris."),
    ("tokyo", "", "Tokyo is the capital of Japan and one of the most populous metropolitan areas in the world."),
    ("steel", "", "Wrought iron was used for the lattice of many 19th century towers, bridges and viaducts."),
]


def _write(path: Path, rows: list[tuple[str, str, str]], row_group_size: int | None = None) -> Path:
    pq.write_table(pa.table({"passage_id": [r[0] for r in rows], "title": [r[1] for r in rows],
                             "text": [r[2] for r in rows]}), path, row_group_size=row_group_size)
    return path


@pytest.fixture()
def small(tmp_path):
    rows = [("p-eiffel", "", POS_EIFFEL), ("fn-eiffel", "", FN_EIFFEL), ("hn-eiffel", "", HN_EIFFEL),
            ("p-photo", "", POS_PHOTO), ("p-photo2", "", POS_PHOTO2), ("ext-copy", "", EXT_COPY)] + FILLER
    # the collection repeats a positive's id with other text: neither row may come back
    rows.append(("p-photo", "", "Photosynthesis in plants converts light energy into chemical energy stored as food."))
    a = _write(tmp_path / "a.parquet", rows[:15])
    b = _write(tmp_path / "b.parquet", rows[15:])
    return [a, b]


def _queries():
    return [
        MiningQuery("q-eiffel", "when was the eiffel tower in paris completed 1889", ["p-eiffel"], [POS_EIFFEL]),
        MiningQuery("q-photo", "how do green plants make their food from sunlight",
                    ["p-photo", "p-photo", "p-photo2"], [POS_PHOTO, POS_PHOTO, POS_PHOTO2]),
        MiningQuery("q-ext", "python list comprehensions create lists", ["external-1"], [EXT_POS]),
    ]


def _ids(res, qid):
    return [n.passage_id for n in res[qid]]


# --------------------------------------------------------------------------- BM25


def test_bm25_scores_match_bm25s(tmp_path, monkeypatch):
    """The streaming builder writes the same index bm25s builds (multi-file, multi-batch, chunked sort)."""
    import bm25s
    from bm25s.tokenization import Tokenizer

    monkeypatch.setattr(bm25_mod, "_CHUNK", 37)  # force many counting-sort chunks
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(150)] + ["the", "of", "and"]
    texts = [" ".join(rng.choice(words, size=rng.integers(5, 30))) for _ in range(300)] + ["", "the of and"]
    rows = [(f"d{i}", "", t) for i, t in enumerate(texts)]
    paths = [_write(tmp_path / "a.parquet", rows[:120], row_group_size=50), _write(tmp_path / "b.parquet", rows[120:])]
    s = MiningSettings(margin_type="none", near_duplicate_threshold=None)
    mine_hard_negatives([MiningQuery("q", "w1 w2", [], [])], paths, s, tmp_path / "idx")
    (idx_dir,) = list((tmp_path / "idx").glob("bm25-*"))
    ours = BM25Index(idx_dir)

    ref = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    ref.index(Tokenizer(stopwords="en").tokenize(texts, return_as="tuple", show_progress=False), show_progress=False)
    loaded = ours.bm25s()  # our files open as a regular bm25s index
    for q in ["w1 w2", "w3 w3 w7", "w149 the", "w0"]:
        qt = ours.query_tokens([q])[0]
        toks = [w for w in q.split() if w in ref.vocab_dict]
        np.testing.assert_allclose(ours.scores(qt), ref.get_scores(toks), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loaded.get_scores_from_ids(qt), ref.get_scores(toks), rtol=1e-5, atol=1e-6)
        rows_, sc, _ = ours.search(qt, 10)
        assert np.all(np.diff(sc) <= 0)
        np.testing.assert_allclose(sc, np.sort(ref.get_scores(toks))[::-1][: len(sc)], rtol=1e-5)


def test_repeated_search_is_a_slice_of_the_deeper_one(tmp_path):
    """mine searches each query deep (with its positives scored), then shallower for near misses:
    the second answer comes from the first and equals a fresh search, ties included."""
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(20)]  # few words: many tied scores
    rows = [(f"d{i}", "", " ".join(rng.choice(words, size=rng.integers(3, 8)))) for i in range(400)]
    path = _write(tmp_path / "c.parquet", rows)
    neighbours([MiningQuery("q", "w1", [], [])], [path], tmp_path / "idx", k=3)
    (idx_dir,) = list((tmp_path / "idx").glob("bm25-*"))
    warm, fresh = BM25Index(idx_dir), BM25Index(idx_dir)
    for q in ["w1 w2", "w3", "w4 w5 w6", "w7 w7"]:
        qt = warm.query_tokens([q])[0]
        deep = warm.search(qt, 60, np.array([0, 5]))
        for k in (60, 17, 1):
            got, want = warm.search(qt, k), fresh._search(qt, k, np.zeros(0, np.int64))
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
        assert len(fresh.search(qt, 60, np.array([0, 5]))[2]) == 2 == len(deep[2])
    assert len(warm._recent) == 4


def test_positives_never_returned(small, tmp_path):
    s = MiningSettings(margin_type="none", near_duplicate_threshold=None, range_max=40, num_negatives=10)
    res = mine_hard_negatives(_queries(), small, s, tmp_path / "idx")
    for q in _queries():
        assert not set(_ids(res, q.qid)) & set(q.positive_ids)
        assert len(res[q.qid]) == len(set(_ids(res, q.qid)))
    assert res["q-photo"], "multi-positive query still gets negatives"
    # ranks are 1-based retrieval ranks, increasing; scores non-increasing
    for negs in res.values():
        assert [n.rank for n in negs] == sorted(n.rank for n in negs) and all(n.rank >= 1 for n in negs)
        assert all(a.score >= b.score for a, b in zip(negs, negs[1:]))
    # the same qid twice (one row per positive) is merged
    dup = [MiningQuery("q-photo", "how do green plants make their food from sunlight", ["p-photo"], [POS_PHOTO]),
           MiningQuery("q-photo", "how do green plants make their food from sunlight", ["p-photo2"], [POS_PHOTO2])]
    res2 = mine_hard_negatives(dup, small, s, tmp_path / "idx")
    assert res2["q-photo"] == res["q-photo"]
    with pytest.raises(RetrievalError, match="two different texts"):
        mine_hard_negatives(dup + [MiningQuery("q-photo", "other text", [], [])], small, s, tmp_path / "idx")


def test_planted_false_negative_dropped(small, tmp_path):
    idx = tmp_path / "idx"
    q = _queries()[:1]
    # unfiltered, the one-word paraphrase of P+ ranks right after it
    raw = mine_hard_negatives(q, small, MiningSettings(margin_type="none", near_duplicate_threshold=None), idx)
    assert _ids(raw, "q-eiffel")[0] == "fn-eiffel" and "hn-eiffel" in _ids(raw, "q-eiffel")
    # margin alone drops it; near-duplicate alone drops it; the genuine hard negative stays
    for s in (MiningSettings(near_duplicate_threshold=None),
              MiningSettings(margin_type="none"),
              MiningSettings()):
        st: dict = {}
        got = _ids(mine_hard_negatives(q, small, s, idx, stats=st), "q-eiffel")
        assert "fn-eiffel" not in got and "hn-eiffel" in got, (s, got)
    # positive not in the collection: margin from the positive's text (scored with the collection's idf)
    st = {}
    res = mine_hard_negatives(_queries()[2:], small, MiningSettings(near_duplicate_threshold=None), idx, stats=st)
    assert "ext-copy" not in _ids(res, "q-ext") and st["positives_not_in_collection"] == 1
    assert st["no_margin_reference"] == 0
    raw = mine_hard_negatives(_queries()[2:], small, MiningSettings(margin_type="none", near_duplicate_threshold=None), idx)
    assert "ext-copy" in _ids(raw, "q-ext")
    # neither positive id in the collection nor text: no margin filter, counted
    st = {}
    mine_hard_negatives([MiningQuery("q-none", "python list comprehensions", ["nope"], [])], small,
                        MiningSettings(), idx, stats=st)
    assert st["no_margin_reference"] == 1


def test_margin_semantics():
    s = MiningSettings()  # relative 0.95
    assert s.threshold(10.0) == pytest.approx(9.5)
    assert s.threshold(-1.0) == pytest.approx(-1.05)  # sign-safe, as sentence-transformers' relative_margin
    assert MiningSettings(margin_type="absolute", margin=0.1).threshold(0.8) == pytest.approx(0.7)
    assert MiningSettings(margin_type="none").threshold(0.8) is None
    with pytest.raises(ValueError):
        MiningSettings(bogus=1)
    with pytest.raises(ValueError):
        MiningSettings(range_min=50, range_max=50)
    with pytest.raises(ValueError):
        MiningSettings(num_negatives=8, range_min=45, range_max=50)
    with pytest.raises(ValueError):
        MiningSettings(margin=1.5)


@pytest.fixture()
def random_coll(tmp_path):
    rng = np.random.default_rng(1)
    words = [f"tok{i}" for i in range(120)]
    rows = [(f"r{i}", "", " ".join(rng.choice(words, size=int(rng.integers(20, 40))))) for i in range(400)]
    path = _write(tmp_path / "r.parquet", rows)
    qs = [MiningQuery(f"q{i}", " ".join(rng.choice(words, size=4)), [f"r{i}"], [rows[i][2]]) for i in range(20)]
    return [path], qs


def test_seed_determinism(random_coll, tmp_path):
    paths, qs = random_coll
    base = dict(margin_type="none", near_duplicate_threshold=None, range_max=50, num_negatives=5)
    r13 = mine_hard_negatives(qs, paths, MiningSettings(sampling="random", seed=13, **base), tmp_path / "idx")
    again = mine_hard_negatives(qs, paths, MiningSettings(sampling="random", seed=13, **base), tmp_path / "idx")
    assert r13 == again
    # per-query seeding: order of queries and batching do not matter
    rev = mine_hard_negatives(qs[::-1], paths, MiningSettings(sampling="random", seed=13, **base), tmp_path / "idx")
    assert rev == r13
    r14 = mine_hard_negatives(qs, paths, MiningSettings(sampling="random", seed=14, **base), tmp_path / "idx")
    assert r14 != r13
    assert all(len(v) == 5 for v in r14.values())
    top13 = mine_hard_negatives(qs, paths, MiningSettings(sampling="top", seed=13, **base), tmp_path / "idx")
    top14 = mine_hard_negatives(qs, paths, MiningSettings(sampling="top", seed=14, **base), tmp_path / "idx")
    assert top13 == top14
    assert all([n.rank for n in v] == sorted(n.rank for n in v) for v in r14.values())


def test_index_reuse(small, tmp_path):
    idx = tmp_path / "idx"
    st1: dict = {}
    r1 = mine_hard_negatives(_queries(), small, MiningSettings(), idx, stats=st1)
    (bdir,) = list(idx.glob("bm25-*"))
    mtime = (bdir / "meta.json").stat().st_mtime_ns
    st2: dict = {}
    r2 = mine_hard_negatives(_queries(), small, MiningSettings(), idx, stats=st2)
    assert (st1["bm25_index"], st2["bm25_index"]) == ("built", "loaded")
    assert (bdir / "meta.json").stat().st_mtime_ns == mtime and r1 == r2
    assert not list(idx.glob(".*tmp*")), "no temp dirs left behind"
    # a caller-given fingerprint keys the index; other tokenizer settings -> another index
    st3: dict = {}
    mine_hard_negatives(_queries(), small, MiningSettings(bm25_k1=1.2), idx, stats=st3)
    assert st3["bm25_index"] == "built" and len(list(idx.glob("bm25-*"))) == 2
    st4: dict = {}
    mine_hard_negatives(_queries(), small, MiningSettings(), idx, fingerprint="f" * 64, stats=st4)
    assert st4["bm25_index"] == "built"
    assert collection_fingerprint(small) == collection_fingerprint(small)
    assert collection_fingerprint(small, content=True) != collection_fingerprint(small)


def test_neighbours(small, tmp_path):
    res = neighbours(_queries(), small, tmp_path / "idx", k=4)
    assert _ids(res, "q-eiffel")[0] == "fn-eiffel"  # no filters
    assert all(len(v) == 4 for v in res.values())
    for q in _queries():
        assert not set(_ids(res, q.qid)) & set(q.positive_ids)


def test_bad_collection(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["x"]}), bad)
    with pytest.raises(RetrievalError, match="bad.parquet.*passage_id"):
        mine_hard_negatives(_queries(), [bad], MiningSettings(), tmp_path / "idx")
    with pytest.raises(RetrievalError, match="not found"):
        mine_hard_negatives(_queries(), [tmp_path / "missing.parquet"], MiningSettings(), tmp_path / "idx")


def test_embedding_store(tmp_path):
    st = EmbeddingStore(tmp_path / "emb", dim=3)
    keys = [text_key("document", t) for t in ["a", "b", "a"]]
    rows = st.append(keys, np.eye(3, dtype=np.float32))
    assert rows.tolist() == [0, 1, 0] and len(st) == 2
    with open(st.vec_path, "ab") as f:  # torn write from a crash
        f.write(b"\0\0")
    rows = st.append([text_key("document", "c")], np.ones((1, 3), np.float32))
    assert rows.tolist() == [2]
    np.testing.assert_array_equal(st.get(np.array([1, 2])), [[0, 1, 0], [1, 1, 1]])
    assert st.lookup([text_key("query", "a")]).tolist() == [-1]  # role is part of the key


# --------------------------------------------------------------------------- dense / hybrid (real MiniLM)


def test_dense_and_hybrid(small, tmp_path):
    idx = tmp_path / "idx"
    qs = _queries()
    st: dict = {}
    s = MiningSettings(method="dense", range_max=20)
    res = mine_hard_negatives(qs, small, s, idx, stats=st)
    assert st["dense_index"] == "built" and st["encoded"] > 0
    for q in qs:
        assert not set(_ids(res, q.qid)) & set(q.positive_ids)
        assert all(n.method == "dense" and -1.0 <= n.score <= 1.0 for n in res[q.qid])
    assert "fn-eiffel" not in _ids(res, "q-eiffel") and "ext-copy" not in _ids(res, "q-ext")
    st2: dict = {}
    assert mine_hard_negatives(qs, small, s, idx, stats=st2) == res
    assert st2["dense_index"] == "loaded" and st2["encoded"] == 0, "embeddings come from the cache"

    # hybrid = reciprocal-rank fusion (k=60) of the two full rankings
    free = dict(margin_type="none", near_duplicate_threshold=None, range_max=30, num_negatives=5)
    b = mine_hard_negatives(qs, small, MiningSettings(method="bm25", **free), idx)
    d = mine_hard_negatives(qs, small, MiningSettings(method="dense", **free), idx)
    deep = dict(free, num_negatives=30)
    b_all = mine_hard_negatives(qs, small, MiningSettings(method="bm25", **deep), idx)
    d_all = mine_hard_negatives(qs, small, MiningSettings(method="dense", **deep), idx)
    h = mine_hard_negatives(qs, small, MiningSettings(method="hybrid", **free), idx)
    for q in qs:
        fused: dict[tuple, float] = {}  # keyed by (id, text): the collection repeats an id
        for lst in (b_all[q.qid], d_all[q.qid]):
            for n in lst:
                fused[n.passage_id, n.text] = fused.get((n.passage_id, n.text), 0.0) + 1.0 / (60 + n.rank)
        expect = sorted(fused.values(), reverse=True)[:5]
        np.testing.assert_allclose([n.score for n in h[q.qid]], expect, err_msg=q.qid)
        for n in h[q.qid]:
            assert n.score == pytest.approx(fused[n.passage_id, n.text])
        assert all(n.method == "hybrid" for n in h[q.qid]) and b[q.qid] and d[q.qid]
    # hybrid with the default filters still drops the planted paraphrase
    hf = mine_hard_negatives(qs, small, MiningSettings(method="hybrid", near_duplicate_threshold=None), idx)
    assert "fn-eiffel" not in _ids(hf, "q-eiffel")


# --------------------------------------------------------------------------- real data (optional)


def test_msmarco_sample_bm25(tmp_path, msmarco):
    corpus = [json.loads(line) for line in open(msmarco / "corpus.jsonl", encoding="utf-8")]
    queries = {}
    for line in open(msmarco / "queries.jsonl", encoding="utf-8"):
        d = json.loads(line)
        queries[d["_id"]] = d["text"]
    qrels: dict[str, list[str]] = {}
    with open(msmarco / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, p, _ = line.rstrip("\n").split("\t")
            qrels.setdefault(q, []).append(p)
    path = _write(tmp_path / "c.parquet", [(c["_id"], c.get("title", ""), c["text"]) for c in corpus])
    text_of = {c["_id"]: c["text"] for c in corpus}
    qs = [MiningQuery(q, queries[q], ps, [text_of[p] for p in ps]) for q, ps in list(qrels.items())[:300]]
    st: dict = {}
    res = mine_hard_negatives(qs, [path], MiningSettings(), tmp_path / "idx", stats=st)
    assert len(res) == len(qs)
    assert sum(len(v) for v in res.values()) > 0.8 * 5 * len(qs)
    for q in qs:
        assert not set(_ids(res, q.qid)) & set(q.positive_ids)
    # bm25s's own tokenizer+index rank the same passages first
    import bm25s
    from bm25s.tokenization import Tokenizer

    tk = Tokenizer(stopwords="en")
    ref = bm25s.BM25(method="lucene")
    ref.index(tk.tokenize([c["text"] for c in corpus], return_as="tuple", show_progress=False), show_progress=False)
    idx = BM25Index(next((tmp_path / "idx").glob("bm25-*")))
    for q in qs[:50]:
        qt = idx.query_tokens([q.text])[0]
        rows, sc, _ = idx.search(qt, 10)
        qids = tk.tokenize([q.text], update_vocab=False, return_as="ids", show_progress=False)
        docs, scores = ref.retrieve(qids, k=10, show_progress=False)
        np.testing.assert_allclose(sc, scores[0][: len(sc)], rtol=1e-4)
