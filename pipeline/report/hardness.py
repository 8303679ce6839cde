"""Hardness of the negatives under the bundled base model (all-MiniLM-L6-v2, offline).

For each row the text (Q+ I+) is embedded, as training and evaluation join them, and compared by
cosine with P+, HN1, HN2 and the best-ranked retrieved negatives. "Easy": the base model already
ranks P+ above both HN1 and HN2, so the row teaches it little. "False-negative risk": a retrieved
negative scores above P+, so it may answer the query too (a mislabelled negative hurts training).
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.progress import progress_bar
from pipeline.report.measures import histogram, summary

ENCODE_BATCH = 64
CHUNK_ROWS = 50  # rows embedded between time-budget checks and progress steps


def _encode(model, texts: list[str]) -> np.ndarray:
    """Embeddings of `texts`, each distinct text encoded once (P+ recurs across a query's rows)."""
    uniq = list(dict.fromkeys(texts))
    emb = model.encode(uniq, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=False)
    where = {t: k for k, t in enumerate(uniq)}
    return emb[[where[t] for t in texts]]


def load_model(path: str | None = None):
    from sentence_transformers import SentenceTransformer

    from pipeline.train.settings import default_model_path

    return SentenceTransformer(path or default_model_path(), device="cpu")


def _score(model, rows: list[dict], mined: dict[int, list[str]]) -> tuple[np.ndarray, ...]:
    """Cosines of (Q+ I+) to P+, HN1, HN2 and to the best retrieved negative (-inf: none) per row."""
    queries = [f"{r['query_positive']} {r['instruction_positive']}" for r in rows]
    neg_texts, neg_owner = [], []
    for k, r in enumerate(rows):
        for t in mined.get(r["pos"], []):
            neg_texts.append(t)
            neg_owner.append(k)
    texts = (queries + [r["document_positive"] for r in rows] + [r["hard_negative_document_1"] for r in rows]
             + [r["hard_negative_document_2"] for r in rows] + neg_texts)
    emb = _encode(model, texts)
    n = len(rows)
    q, p, h1, h2 = emb[:n], emb[n:2 * n], emb[2 * n:3 * n], emb[3 * n:4 * n]
    best_neg = np.full(n, -np.inf)
    if neg_texts:
        s = (q[np.asarray(neg_owner)] * emb[4 * n:]).sum(1)
        np.maximum.at(best_neg, np.asarray(neg_owner), s)
    return (q * p).sum(1), (q * h1).sum(1), (q * h2).sum(1), best_neg


def hardness(rows: list[dict], mined: dict[int, list[str]], total_rows: int, model=None,
             budget_s: float | None = None) -> dict:
    """`rows`: dicts with the fields and `pos` (the row's position, for `mined`), in a seeded random
    order. Rows are embedded CHUNK_ROWS at a time until `budget_s` seconds have passed (at least one
    chunk): a prefix of a seeded random order is itself a seeded random sample, and the report's
    time stays bounded however loaded the machine is. The page says how many rows it covers."""
    if not rows:
        return {"rows": 0, "eligible_rows": 0, "total_rows": total_rows, "sampled": False}
    model = model or load_model()
    t0 = time.perf_counter()
    parts = []
    with progress_bar("report: embedding (hardness)", len(rows)) as (bar, task):
        for start in range(0, len(rows), CHUNK_ROWS):
            if parts and budget_s and time.perf_counter() - t0 > budget_s:
                break
            parts.append(_score(model, rows[start:start + CHUNK_ROWS], mined))
            bar.advance(task, len(parts[-1][0]))
    cos_p, cos_h1, cos_h2, best_neg = (np.concatenate(x) for x in zip(*parts))
    n = len(cos_p)
    with_negs = np.isfinite(best_neg)
    easy = (cos_p > cos_h1) & (cos_p > cos_h2)
    fn_risk = with_negs & (best_neg > cos_p)
    rng = (-0.2, 1.0)
    return {
        "rows": n,
        "eligible_rows": len(rows),
        "total_rows": total_rows,
        "sampled": n < total_rows,
        "stopped_by_time_budget": n < len(rows),
        "budget_s": budget_s,
        "model": "all-MiniLM-L6-v2 (bundled)",
        "cos_positive": summary(cos_p.tolist()),
        "cos_hn1": summary(cos_h1.tolist()),
        "cos_hn2": summary(cos_h2.tolist()),
        "cos_best_mined": summary(best_neg[with_negs].tolist()),
        "hist_positive": histogram(cos_p.tolist(), 24, *rng),
        "hist_hn1": histogram(cos_h1.tolist(), 24, *rng),
        "hist_hn2": histogram(cos_h2.tolist(), 24, *rng),
        "easy_share": round(float(easy.mean()), 4),
        "hn1_outscores_positive_share": round(float((cos_h1 > cos_p).mean()), 4),
        "hn2_outscores_positive_share": round(float((cos_h2 > cos_p).mean()), 4),
        "rows_with_mined_negatives": int(with_negs.sum()),
        "false_negative_risk_share": round(float(fn_risk.sum() / with_negs.sum()), 4) if with_negs.any() else None,
        "per_row": {"cos_positive": cos_p.round(4).tolist(), "cos_hn1": cos_h1.round(4).tolist(),
                    "cos_hn2": cos_h2.round(4).tolist()},
    }
