"""Instruction-following evaluation: on a release split (nDCG/MRR, p-MRR) and on BEIR-layout data.

Scores are cosine similarities of normalised embeddings. Ranks use the tie rule of
:mod:`pipeline.train.metrics` (MTEB's: stable sort, earlier pool position wins ties).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InfirError
from pipeline.train.data import DEFAULT_TEMPLATE, check_template, format_query, load_release_split
from pipeline.train.metrics import mean, mrr_at_k, ndcg_at_k, pmrr_pair, ranks_of_targets

__all__ = ["evaluate_release", "evaluate_beir", "encode_texts", "PMRR_SCALE"]

PMRR_SCALE = "raw mean in [-1, 1], as MTEB's calculate_pmrr returns it (no x100)"
_K = 10


def encode_texts(model, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text (duplicate texts encoded once)."""
    uniq = list(dict.fromkeys(texts))
    if not uniq:
        return np.zeros((0, 0), dtype=np.float32)
    emb = model.encode(
        uniq,
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    emb = np.asarray(emb, dtype=np.float32)
    index = {t: i for i, t in enumerate(uniq)}
    return emb[[index[t] for t in texts]]


def _model(model_path_or_model: Any, max_seq_length: int | None = None):
    from pipeline.train.trainer import load_model

    return load_model(model_path_or_model, max_seq_length=max_seq_length)


def _ranks(query_emb: np.ndarray, doc_emb: np.ndarray, targets: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Rank of ``targets[i]`` for query ``i`` against all docs, computed in query chunks."""
    n_q, n_d = query_emb.shape[0], doc_emb.shape[0]
    if chunk is None:
        chunk = max(1, (1 << 24) // max(n_d, 1))
    out = np.empty(n_q, dtype=np.int64)
    for s in range(0, n_q, chunk):
        scores = query_emb[s : s + chunk] @ doc_emb.T
        out[s : s + chunk] = ranks_of_targets(scores, targets[s : s + chunk])
    return out


def _clean(v: Any) -> str:
    return v.strip() if isinstance(v, str) else ""


def evaluate_release(
    model_path_or_model: Any,
    release_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    max_rows: int | None = None,
    k: int = _K,
) -> dict[str, Any]:
    """Evaluate a model on one split of a release.

    Pool: every P+, HN1 and HN2 of the split, deduplicated by text (first occurrence order:
    row order, then P+, HN1, HN2). Per row, the relevant document is that row's P+.

    - ``ndcg_at_10`` / ``mrr_at_10``: query text = template(Q+, I+).
    - ``ndcg_at_10_query_only`` / ``mrr_at_10_query_only``: the same with Q+ alone (ablation).
    - ``pmrr_instruction``: FollowIR p-MRR of P+ between og = template(Q+, I+) and changed =
      template(Q+, I-); ``pmrr_query``: og = template(Q+, I+), changed = template(Q-, I+);
      ``pmrr``: their mean. Each is the mean over rows of :func:`pmrr_pair` (one changed document,
      P+, per row, so MTEB's per-query averaging is the identity here). Raw scale, see ``PMRR_SCALE``.
    """
    check_template(template)
    rows = load_release_split(release_dir, split, columns=(), max_rows=max_rows)
    fields = ("query_positive", "instruction_positive", "document_positive", "instruction_negative",
              "hard_negative_document_1", "query_negative", "hard_negative_document_2")
    usable = []
    for r in rows:
        v = {c: _clean(r.get(c)) for c in fields}
        if all(v.values()):
            usable.append(v)
    if not usable:
        raise InfirError(f"{release_dir}: split {split!r} has no complete rows to evaluate")

    pool: dict[str, int] = {}
    for v in usable:
        for c in ("document_positive", "hard_negative_document_1", "hard_negative_document_2"):
            pool.setdefault(v[c], len(pool))
    docs = list(pool)
    targets = np.array([pool[v["document_positive"]] for v in usable], dtype=np.int64)

    q_og = [format_query(template, v["query_positive"], v["instruction_positive"]) for v in usable]
    q_inst = [format_query(template, v["query_positive"], v["instruction_negative"]) for v in usable]
    q_query = [format_query(template, v["query_negative"], v["instruction_positive"]) for v in usable]
    q_only = [format_query(template, v["query_positive"], None) for v in usable]

    model = _model(model_path_or_model)
    d_emb = encode_texts(model, docs, batch_size)
    all_q = q_og + q_inst + q_query + q_only
    q_emb = encode_texts(model, all_q, batch_size)
    n = len(usable)
    r_og, r_inst, r_query, r_only = (
        _ranks(q_emb[i * n : (i + 1) * n], d_emb, targets) for i in range(4)
    )

    pm_inst = mean([pmrr_pair(a, b) for a, b in zip(r_og, r_inst, strict=True)])
    pm_query = mean([pmrr_pair(a, b) for a, b in zip(r_og, r_query, strict=True)])
    return {
        "split": split,
        "rows": n,
        "rows_skipped": len(rows) - n,
        "pool_size": len(docs),
        "template": template,
        f"ndcg_at_{k}": mean([ndcg_at_k([r], k) for r in r_og]),
        f"mrr_at_{k}": mean([mrr_at_k([r], k) for r in r_og]),
        f"ndcg_at_{k}_query_only": mean([ndcg_at_k([r], k) for r in r_only]),
        f"mrr_at_{k}_query_only": mean([mrr_at_k([r], k) for r in r_only]),
        "pmrr_instruction": pm_inst,
        "pmrr_query": pm_query,
        "pmrr": (pm_inst + pm_query) / 2,
        "pmrr_scale": PMRR_SCALE,
        "mean_rank_positive": float(np.mean(r_og)),
    }


# ---------------------------------------------------------------- BEIR


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise InfirError(f"{path}: file not found")
    out = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InfirError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            except RecursionError:
                raise InfirError(f"{path}:{lineno}: invalid JSON (nested too deeply)") from None
            if not isinstance(obj, dict) or "_id" not in obj:
                raise InfirError(f"{path}:{lineno}: expected an object with an '_id' field")
            out.append(obj)
    return out


def _read_qrels(path: Path) -> dict[str, dict[str, float]]:
    if not path.is_file():
        raise InfirError(f"{path}: file not found")
    qrels: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8", newline="") as fh:
        for lineno, rec in enumerate(csv.reader(fh, delimiter="\t"), 1):
            if not rec or not "".join(rec).strip():
                continue
            if lineno == 1 and rec[0].strip().lower() in {"query-id", "query_id", "qid"}:
                continue
            if len(rec) < 3:
                raise InfirError(f"{path}:{lineno}: expected query-id<TAB>corpus-id<TAB>score")
            try:
                score = float(rec[2])
            except ValueError as exc:
                raise InfirError(f"{path}:{lineno}: score {rec[2]!r} is not a number") from exc
            qrels.setdefault(rec[0].strip(), {})[rec[1].strip()] = score
    return qrels


def _instruction(q: dict[str, Any]) -> str:
    inst = q.get("instruction")
    if not inst and isinstance(q.get("metadata"), dict):
        inst = q["metadata"].get("instruction")
    return _clean(inst)


def evaluate_beir(
    model: Any,
    dataset_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
    k: int = _K,
    graded: bool = False,
) -> dict[str, Any]:
    """nDCG@k and MRR@k of any sentence-transformers model on a BEIR-layout dataset.

    ``dataset_dir`` holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
    (``_id``, ``text``, optional ``instruction`` or ``metadata.instruction``) and
    ``qrels/<split>.tsv`` (query-id, corpus-id, score; header optional). Documents are encoded as
    ``title + " " + text``. Queries with no positive judgement are skipped. Two runs: with the
    instruction (template(query, instruction); a query without one is its text alone) and query
    only. Relevance is binary (score > 0) unless ``graded`` (gain = score, as trec_eval).
    """
    check_template(template)
    root = Path(dataset_dir)
    corpus = _read_jsonl(root / "corpus.jsonl")
    queries = {str(q["_id"]): q for q in _read_jsonl(root / "queries.jsonl")}
    qrels = _read_qrels(root / "qrels" / f"{split}.tsv")

    doc_ids = []
    doc_texts = []
    seen: set[str] = set()
    for d in corpus:
        did = str(d["_id"])
        if did in seen:
            continue
        seen.add(did)
        doc_ids.append(did)
        doc_texts.append(" ".join(x for x in (_clean(d.get("title")), _clean(d.get("text"))) if x))
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    if not doc_ids:
        raise InfirError(f"{root / 'corpus.jsonl'}: empty corpus")

    qids = [q for q in qrels if q in queries and any(s > 0 for s in qrels[q].values())]
    if not qids:
        raise InfirError(f"{root}: no query in qrels/{split}.tsv has a positive judgement and a queries.jsonl entry")
    with_inst = [
        format_query(template, _clean(queries[q].get("text")), _instruction(queries[q]) or None) for q in qids
    ]
    without = [format_query(template, _clean(queries[q].get("text")), None) for q in qids]

    st = _model(model)
    d_emb = encode_texts(st, doc_texts, batch_size)
    q_emb = encode_texts(st, with_inst + without, batch_size)
    n = len(qids)

    def run(qe: np.ndarray) -> tuple[float, float]:
        ndcgs, mrrs = [], []
        chunk = max(1, (1 << 24) // len(doc_ids))
        for s in range(0, n, chunk):
            scores = qe[s : s + chunk] @ d_emb.T
            for i, qid in enumerate(qids[s : s + chunk]):
                rel = {d: g for d, g in qrels[qid].items() if g > 0}
                present = [d for d in rel if d in doc_index]
                row = scores[i]
                ranks = [
                    int(ranks_of_targets(row[None, :], [doc_index[d]])[0]) for d in present
                ]
                if graded:
                    nd = ndcg_at_k(ranks, k, gains=[rel[d] for d in present], ideal_gains=list(rel.values()))
                else:
                    nd = ndcg_at_k(ranks, k, n_relevant=len(rel))
                ndcgs.append(nd)
                mrrs.append(mrr_at_k(ranks, k))
        return mean(ndcgs), mean(mrrs)

    nd_i, mr_i = run(q_emb[:n])
    nd_q, mr_q = run(q_emb[n:])
    return {
        "dataset": str(root),
        "split": split,
        "queries": n,
        "queries_with_instruction": sum(1 for q in qids if _instruction(queries[q])),
        "corpus_size": len(doc_ids),
        "template": template,
        f"ndcg_at_{k}": nd_i,
        f"mrr_at_{k}": mr_i,
        f"ndcg_at_{k}_query_only": nd_q,
        f"mrr_at_{k}_query_only": mr_q,
    }
