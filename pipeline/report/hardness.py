"""Hardness of the negatives under the bundled base model (all-MiniLM-L6-v2, offline).

For each row the text (Q+ I+) is embedded, as training and evaluation join them, and compared by
cosine with P+, HN1, HN2 and the best-ranked retrieved negatives. "Easy": the base model already
ranks P+ above both HN1 and HN2, so the row teaches it little. "False-negative risk": a retrieved
negative scores above P+, so it may answer the query too (a mislabelled negative hurts training).
"""

from __future__ import annotations

import numpy as np

from pipeline.progress import progress_bar
from pipeline.report.measures import histogram, summary

ENCODE_BATCH = 64
ENCODE_CHUNK = 512  # texts per progress step


def _encode(model, texts: list[str], bar, task) -> np.ndarray:
    """Embeddings of `texts`, each distinct text encoded once (P+ recurs across a query's rows, and
    retrieved negatives across queries), longest first so batches hold similar lengths."""
    uniq = sorted(set(texts), key=len, reverse=True)
    if not uniq:
        return np.zeros((0, 384), dtype=np.float32)
    chunks = []
    for i in range(0, len(uniq), ENCODE_CHUNK):
        chunk = uniq[i:i + ENCODE_CHUNK]
        chunks.append(model.encode(chunk, batch_size=ENCODE_BATCH, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False))
        bar.advance(task, len(chunk))
    where = {t: k for k, t in enumerate(uniq)}
    return np.concatenate(chunks)[[where[t] for t in texts]]


def load_model(path: str | None = None):
    from sentence_transformers import SentenceTransformer

    from pipeline.train.settings import default_model_path

    return SentenceTransformer(path or default_model_path(), device="cpu")


def hardness(rows: list[dict], mined: dict[int, list[str]], total_rows: int, sampled: bool, model=None) -> dict:
    """`rows`: dicts with the seven fields (and `pos`, the row's position for `mined`)."""
    if not rows:
        return {"rows": 0, "total_rows": total_rows, "sampled": sampled}
    model = model or load_model()
    queries = [f"{r['query_positive']} {r['instruction_positive']}" for r in rows]
    neg_texts, neg_owner = [], []
    for k, r in enumerate(rows):
        for t in mined.get(r["pos"], []):
            neg_texts.append(t)
            neg_owner.append(k)
    texts = (queries + [r["document_positive"] for r in rows] + [r["hard_negative_document_1"] for r in rows]
             + [r["hard_negative_document_2"] for r in rows] + neg_texts)
    with progress_bar("report: embedding (hardness)", len(set(texts))) as (bar, task):
        emb = _encode(model, texts, bar, task)
    n = len(rows)
    q, p, h1, h2 = emb[:n], emb[n:2 * n], emb[2 * n:3 * n], emb[3 * n:4 * n]
    cos_p, cos_h1, cos_h2 = (q * p).sum(1), (q * h1).sum(1), (q * h2).sum(1)
    best_neg = np.full(n, -np.inf)
    if neg_texts:
        s = (q[np.asarray(neg_owner)] * emb[4 * n:]).sum(1)
        np.maximum.at(best_neg, np.asarray(neg_owner), s)
    with_negs = np.isfinite(best_neg)
    easy = (cos_p > cos_h1) & (cos_p > cos_h2)
    fn_risk = with_negs & (best_neg > cos_p)
    rng = (-0.2, 1.0)
    return {
        "rows": n,
        "total_rows": total_rows,
        "sampled": sampled,
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
