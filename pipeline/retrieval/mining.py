"""Hard-negative mining: BM25 / dense / hybrid (RRF) retrieval, then false-negative filters, then sampling.

Per query:
1. Retrieve a ranked list (BM25, dense cosine, or reciprocal-rank fusion of both with k=60).
2. Drop known positives: every collection row whose ``passage_id`` is one of the query's positive ids.
   They still count in ``rank`` (rank = 1-based position in the retrieval list).
3. Window: the non-positive candidates at positions ``[range_min, range_max)``.
4. Filters, in rank order: margin vs the positive's score (NV-Retriever TopK-PercPos: relative 0.95
   drops candidates scoring > 95% of the positive), exact duplicates of a positive or of an
   already kept candidate (case/punctuation-insensitive), near-duplicates of a positive
   (rapidfuzz ``ratio`` or ``token_set_ratio`` >= threshold).
5. Sampling: the first ``num_negatives`` survivors ("top") or a seeded sample of them ("random",
   seeded per (seed, qid) so results do not depend on query order or batching).

The positive's score: BM25 -> its BM25 score for the query (from the same scoring pass when it is in
the collection, else computed from its text with the collection's idf/avgdl); dense -> cosine with the
query (its cached embedding, or its text encoded); several positives -> the lowest (as
sentence-transformers). A query with neither a positive in the collection nor a positive text gets no
margin filter (counted in ``stats["no_margin_reference"]``). Hybrid applies both margins (a candidate
too close to the positive under BM25 *or* cosine is dropped) and reports the RRF score.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from .collection import DocStore, collection_fingerprint
from .dense import embed_cached
from .errors import RetrievalError
from .indexes import Progress, _Indexes, _Lazy, _open_indexes
from .types import MinedNegative, MiningQuery, MiningSettings

QUERY_BLOCK = 1024


def _noop(stage: str, done: int, total: int | None) -> None:
    pass


# --------------------------------------------------------------------------- queries


@dataclass
class _Q:
    qid: str
    text: str
    pos_ids: list[str]
    pos_texts: list[str]
    aligned: bool
    pos_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    missing_texts: list[str] = field(default_factory=list)  # texts of positives not in the collection


def _prepare(queries: Iterable[MiningQuery]) -> list[_Q]:
    out: dict[str, _Q] = {}
    for q in queries:
        ids = [str(p) for p in (q.positive_ids or [])]
        texts = [t for t in (q.positive_texts or []) if t]
        prev = out.get(q.qid)
        if prev is None:
            out[q.qid] = _Q(q.qid, q.text or "", list(dict.fromkeys(ids)), list(dict.fromkeys(texts)),
                            aligned=len(ids) == len(q.positive_texts or []))
            if out[q.qid].aligned:
                out[q.qid].pos_texts = list(q.positive_texts)
        else:  # the same query repeated (e.g. one source row per positive): merge positives
            if (q.text or "") != prev.text:
                raise RetrievalError(f"query id {q.qid!r} appears with two different texts")
            if prev.aligned and len(ids) == len(q.positive_texts or []):
                pairs = dict(zip(prev.pos_ids, prev.pos_texts))
                for i, t in zip(ids, q.positive_texts):
                    pairs.setdefault(i, t)
                prev.pos_ids, prev.pos_texts = list(pairs), list(pairs.values())
            else:
                prev.aligned = False
                prev.pos_ids = list(dict.fromkeys(prev.pos_ids + ids))
                prev.pos_texts = list(dict.fromkeys([t for t in prev.pos_texts if t] + texts))
    return list(out.values())


def _attach_positives(qs: list[_Q], docs: DocStore) -> dict[str, list[int]]:
    by_id = docs.rows_by_id(p for q in qs for p in q.pos_ids)
    for q in qs:
        rows = sorted({r for p in q.pos_ids for r in by_id.get(p, ())})
        q.pos_rows = np.asarray(rows, dtype=np.int64)
        if q.aligned:
            q.missing_texts = [t for i, t in zip(q.pos_ids, q.pos_texts) if i not in by_id and t]
        elif not rows:
            q.missing_texts = [t for t in q.pos_texts if t]
    return by_id


def _seed_for(seed: int, qid: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{qid}".encode()).digest()[:8], "big")


# --------------------------------------------------------------------------- retrieval


@dataclass
class _Ranked:
    rows: np.ndarray  # ranked, positives included
    scores: np.ndarray  # score reported (bm25 / cosine / rrf)
    margin_ok: np.ndarray  # bool per ranked entry
    method: str


def _margin_mask(settings: MiningSettings, cand: np.ndarray, pos_scores: Sequence[float]) -> tuple[np.ndarray, bool]:
    if settings.margin_type == "none":
        return np.ones(len(cand), bool), True
    if not len(pos_scores):
        return np.ones(len(cand), bool), False
    thr = settings.threshold(float(min(pos_scores)))
    return ~(cand > thr), True


def _bm25_lists(idx: _Indexes, qs: list[_Q], depth_extra: int, settings: MiningSettings,
                extra_rows: list[np.ndarray] | None = None):
    """Per query: (rows, scores, pos_scores, extra_scores)."""
    qtoks = idx.bm25.query_tokens([q.text for q in qs])
    out = []
    for i, (q, qt) in enumerate(zip(qs, qtoks)):
        ex = q.pos_rows if extra_rows is None else np.concatenate([q.pos_rows, extra_rows[i]])
        rows, sc, exs = idx.bm25.search(qt, depth_extra + len(q.pos_rows), ex)
        pos = exs[:len(q.pos_rows)].tolist() + [idx.bm25.score_text(qt, t) for t in q.missing_texts]
        out.append((rows, sc, pos, exs[len(q.pos_rows):]))
    return out


def _dense_lists(idx: _Indexes, qs: list[_Q], qrows: np.ndarray, depth_extra: int, batch_size: int, stats: dict):
    """Per query: (rows, scores, pos_scores, qvec)."""
    qv = idx.store.get(qrows)
    k = depth_extra + max((len(q.pos_rows) for q in qs), default=0)
    rows_all, sc_all = idx.dense.search(qv, k)
    missing = [t for q in qs for t in q.missing_texts]
    miss_vec = {}
    if missing:
        mrows = embed_cached(idx.store, _Lazy(idx.model), missing, "document", batch_size, stats)
        miss_vec = dict(zip(missing, idx.store.get(mrows)))
    out = []
    for i, q in enumerate(qs):
        rows, sc = rows_all[i], sc_all[i]
        keep = rows >= 0
        rows, sc = rows[keep], sc[keep].astype(np.float64)
        pv = idx.dense.doc_vectors(q.pos_rows) if len(q.pos_rows) else np.zeros((0, qv.shape[1]), np.float32)
        pos = (pv @ qv[i]).astype(np.float64).tolist() + [float(miss_vec[t] @ qv[i]) for t in q.missing_texts]
        out.append((rows, sc, pos, qv[i]))
    return out


def _retrieve(idx: _Indexes, qs: list[_Q], qrows: np.ndarray | None, settings: MiningSettings,
              stats: dict) -> list[_Ranked]:
    m = settings.method
    res: list[_Ranked] = []
    if m == "bm25":
        for q, (rows, sc, pos, _) in zip(qs, _bm25_lists(idx, qs, settings.range_max, settings)):
            ok, ref = _margin_mask(settings, sc, pos)
            stats["no_margin_reference"] += not ref
            res.append(_Ranked(rows, sc, ok, "bm25"))
        return res
    if m == "dense":
        for q, (rows, sc, pos, _) in zip(qs, _dense_lists(idx, qs, qrows, settings.range_max, settings.batch_size, stats)):
            ok, ref = _margin_mask(settings, sc, pos)
            stats["no_margin_reference"] += not ref
            res.append(_Ranked(rows, sc, ok, "dense"))
        return res
    # hybrid: RRF over both lists, each retrieved twice as deep as the window
    depth = 2 * settings.range_max
    dl = _dense_lists(idx, qs, qrows, depth, settings.batch_size, stats)
    bl = _bm25_lists(idx, qs, depth, settings, extra_rows=[d[0] for d in dl])
    for q, (drows, dsc, dpos, qv), (brows, bsc, bpos, b_of_d) in zip(qs, dl, bl):
        fused: dict[int, float] = {}
        for r_list in (brows, drows):
            for rank, r in enumerate(r_list.tolist(), start=1):
                fused[r] = fused.get(r, 0.0) + 1.0 / (settings.rrf_k + rank)
        rows = np.fromiter(fused, dtype=np.int64, count=len(fused))
        fs = np.fromiter(fused.values(), dtype=np.float64, count=len(fused))
        order = np.lexsort((rows, -fs))
        rows, fs = rows[order], fs[order]
        # component scores of every fused candidate
        bmap = dict(zip(brows.tolist(), bsc.tolist()))
        bmap.update(zip(drows.tolist(), b_of_d.tolist()))
        bs = np.array([bmap.get(r, 0.0) for r in rows.tolist()])
        dmap = dict(zip(drows.tolist(), dsc.tolist()))
        missing = [r for r in rows.tolist() if r not in dmap]
        if missing:
            dmap.update(zip(missing, (idx.dense.doc_vectors(np.array(missing)) @ qv).tolist()))
        ds = np.array([dmap[r] for r in rows.tolist()])
        ok_b, ref_b = _margin_mask(settings, bs, bpos)
        ok_d, ref_d = _margin_mask(settings, ds, dpos)
        stats["no_margin_reference"] += not (ref_b or ref_d)
        res.append(_Ranked(rows, fs, ok_b & ok_d, "hybrid"))
    return res


# --------------------------------------------------------------------------- selection


def _select(q: _Q, ranked: _Ranked, texts: dict[int, str], pos_texts_norm: list[str], settings: MiningSettings,
            stats: dict, docs_ids: dict[int, str]) -> list[MinedNegative]:
    pos_set = set(q.pos_rows.tolist())
    window = [i for i, r in enumerate(ranked.rows.tolist()) if r not in pos_set][settings.range_min:settings.range_max]
    thr = settings.near_duplicate_threshold
    pos_norm_set = set(pos_texts_norm)
    seen: set[str] = set()
    pos_ids = set(q.pos_ids)
    want = settings.num_negatives if settings.sampling == "top" else None
    pool: list[int] = []
    for i in window:
        r = int(ranked.rows[i])
        if docs_ids[r] in pos_ids:  # belt and braces: never return a positive id
            continue
        if not ranked.margin_ok[i]:
            stats["dropped_margin"] += 1
            continue
        norm = default_process(texts[r])
        if norm in pos_norm_set or norm in seen:
            stats["dropped_duplicate"] += 1
            continue
        if thr is not None and any(
            fuzz.ratio(norm, p, score_cutoff=thr) or fuzz.token_set_ratio(norm, p, score_cutoff=thr)
            for p in pos_texts_norm
        ):
            stats["dropped_near_duplicate"] += 1
            continue
        seen.add(norm)
        pool.append(i)
        if want is not None and len(pool) >= want:
            break
    if settings.sampling == "random" and len(pool) > settings.num_negatives:
        rng = random.Random(_seed_for(settings.seed, q.qid))
        pool = sorted(rng.sample(pool, settings.num_negatives))
    if len(pool) < settings.num_negatives:
        stats["short"] += 1
    return [MinedNegative(docs_ids[int(ranked.rows[i])], texts[int(ranked.rows[i])], float(ranked.scores[i]), i + 1,
                          ranked.method) for i in pool]


def _new_stats() -> dict:
    return {"queries": 0, "positives_not_in_collection": 0, "no_margin_reference": 0, "dropped_margin": 0,
            "dropped_duplicate": 0, "dropped_near_duplicate": 0, "short": 0, "encoded": 0, "cache_hits": 0}


def _setup(queries, collection_paths, index_dir, fingerprint, settings, need_bm25, need_dense, progress, st):
    """Queries prepared and indexes opened (built on first use), positives located in the collection."""
    paths = [Path(p) for p in collection_paths]
    if not paths:
        raise RetrievalError("the collection is empty: no Parquet files given")
    fp = fingerprint or collection_fingerprint(paths)
    qs = _prepare(queries)
    idx = _open_indexes(paths, fp, Path(index_dir), settings, need_bm25, need_dense, progress, st)
    _attach_positives(qs, idx.docs)
    return qs, idx


def mine_hard_negatives(
    queries: Sequence[MiningQuery],
    collection_paths: Sequence[str | os.PathLike],
    settings: MiningSettings,
    index_dir: Path,
    fingerprint: str | None = None,
    progress: Progress | None = None,
    stats: dict | None = None,
) -> dict[str, list[MinedNegative]]:
    """Mine ``settings.num_negatives`` hard negatives per query (fewer when the window runs dry).

    Indexes live under ``index_dir`` keyed by ``fingerprint`` (default: ``collection_fingerprint(paths)``)
    and are built on first use, reused afterwards. ``progress(stage, done, total)`` is called with
    stage "index" (rows scanned) and "mine" (queries done). ``stats``, if given, is filled with
    counters (see ``_new_stats``) and ``bm25_index`` / ``dense_index``: "built" | "loaded".
    Queries sharing a qid are merged (union of positives). Returns {qid: negatives in rank order}.
    """
    t0 = time.perf_counter()
    progress = progress or _noop
    st = _new_stats()
    need_bm25 = settings.method in ("bm25", "hybrid")
    need_dense = settings.method in ("dense", "hybrid")
    qs, idx = _setup(queries, collection_paths, index_dir, fingerprint, settings, need_bm25, need_dense, progress, st)
    st["queries"] = len(qs)
    st["positives_not_in_collection"] = sum(1 for q in qs if q.pos_ids and not len(q.pos_rows))
    qrows = None
    if need_dense:
        qrows = embed_cached(idx.store, _Lazy(idx.model), [q.text for q in qs], "query", settings.batch_size, st)
    out: dict[str, list[MinedNegative]] = {}
    t1 = time.perf_counter()
    for s in range(0, len(qs), QUERY_BLOCK):
        block = qs[s:s + QUERY_BLOCK]
        ranked = _retrieve(idx, block, None if qrows is None else qrows[s:s + QUERY_BLOCK], settings, st)
        need: set[int] = set()
        for q, rk in zip(block, ranked):
            need.update(rk.rows[: settings.range_max + len(q.pos_rows)].tolist())
            need.update(q.pos_rows.tolist())
        rows = np.fromiter(need, dtype=np.int64, count=len(need))
        texts = dict(zip(rows.tolist(), idx.docs.texts(rows)))
        ids = dict(zip(rows.tolist(), idx.docs.ids(rows)))
        for q, rk in zip(block, ranked):
            pos_norm = list(dict.fromkeys(default_process(t) for t in
                                          [texts[r] for r in q.pos_rows.tolist()] + q.pos_texts if t))
            out[q.qid] = _select(q, rk, texts, pos_norm, settings, st, ids)
        progress("mine", min(s + QUERY_BLOCK, len(qs)), len(qs))
    st["mine_seconds"] = round(time.perf_counter() - t1, 3)
    st["total_seconds"] = round(time.perf_counter() - t0, 3)
    if stats is not None:
        stats.update(st)
    return out


def neighbours(
    queries: Sequence[MiningQuery],
    collection_paths: Sequence[str | os.PathLike],
    index_dir: Path,
    k: int = 10,
    fingerprint: str | None = None,
    settings: MiningSettings | None = None,
    progress: Progress | None = None,
) -> dict[str, list[MinedNegative]]:
    """Cheap BM25 top-k per query, known positives (and exact copies of them) excluded, no margin or
    near-duplicate filter. Uses ``settings``' BM25/tokenizer fields (default ``MiningSettings()``)."""
    settings = settings or MiningSettings()
    progress = progress or _noop
    st = _new_stats()
    qs, idx = _setup(queries, collection_paths, index_dir, fingerprint, settings, True, False, progress, st)
    out: dict[str, list[MinedNegative]] = {}
    for s in range(0, len(qs), QUERY_BLOCK):
        block = qs[s:s + QUERY_BLOCK]
        qtoks = idx.bm25.query_tokens([q.text for q in block])
        lists = [idx.bm25.search(qt, 2 * k + len(q.pos_rows))[:2] for q, qt in zip(block, qtoks)]
        need = {r for q, (rows, _) in zip(block, lists) for r in rows.tolist() + q.pos_rows.tolist()}
        rows_a = np.fromiter(need, dtype=np.int64, count=len(need))
        texts = dict(zip(rows_a.tolist(), idx.docs.texts(rows_a)))
        ids = dict(zip(rows_a.tolist(), idx.docs.ids(rows_a)))
        for q, (rows, sc) in zip(block, lists):
            pos_rows = set(q.pos_rows.tolist())
            pos_ids = set(q.pos_ids)
            pos_norm = {default_process(t) for t in [texts[r] for r in pos_rows] + q.pos_texts if t}
            res = []
            for i, r in enumerate(rows.tolist()):
                if r in pos_rows or ids[r] in pos_ids or default_process(texts[r]) in pos_norm:
                    continue
                res.append(MinedNegative(ids[r], texts[r], float(sc[i]), i + 1, "bm25"))
                if len(res) == k:
                    break
            out[q.qid] = res
        progress("mine", min(s + QUERY_BLOCK, len(qs)), len(qs))
    return out


__all__ = ["mine_hard_negatives", "neighbours"]
