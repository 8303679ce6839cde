"""FollowIR-style instruction-following evaluation (Robust04, Core17, News21), as MTEB scores it.

Layout (the public FollowIR release, e.g. the Hub dataset ``jhu-clsp/robust04-instructions``;
MTEB's InstructionRetrieval tasks read the same files)::

    DIR/corpus.jsonl                 {"_id", "title", "text"}
    DIR/queries.jsonl                {"_id", "text", "instruction_og", "instruction_changed", ...}
    DIR/qrels_og/test.jsonl|.tsv     query-id, corpus-id, score   (judgements, original instruction)
    DIR/qrels_changed/test.jsonl|.tsv                              (judgements, changed instruction)
    DIR/top_ranked.jsonl             {"qid", "pid"}: the candidates each query is re-ranked over

Scoring (MTEB ``AbsTaskInstructionRetrieval``): each query re-ranks its ``top_ranked`` candidates
twice, with ``template(text, instruction_og)`` and with ``template(text, instruction_changed)``.
p-MRR is computed over the documents whose judgement differs between the two qrels
(:func:`pipeline.train.metrics.followir_pmrr`); nDCG@5 and MAP@1000 are those of the original run
against ``qrels_og`` (pytrec_eval), the figures FollowIR reports beside p-MRR. Score ties are
broken by candidate order everywhere (MTEB's p-MRR rule; trec_eval alone would use document ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InfirError
from pipeline.train.data import DEFAULT_TEMPLATE, check_template, format_query
from pipeline.train.evaluate import PMRR_SCALE, doc_text, encode_texts
from pipeline.train.metrics import followir_pmrr, ir_metrics, qrel_diff, run_from_ranking
from pipeline.train.readers import read_jsonl, read_qrels

__all__ = ["evaluate_followir", "load_followir", "FOLLOWIR_TASKS"]

#: The tasks this layout covers and where their public copies live (Hub dataset ids).
FOLLOWIR_TASKS = {
    "Robust04InstructionRetrieval": "jhu-clsp/robust04-instructions",
    "Core17InstructionRetrieval": "jhu-clsp/core17-instructions",
    "News21InstructionRetrieval": "jhu-clsp/news21-instructions",
}


def _qrels_file(root: Path, name: str, split: str) -> Path:
    for ext in ("jsonl", "tsv"):
        p = root / name / f"{split}.{ext}"
        if p.is_file():
            return p
    raise InfirError(f"{root / name / split}.jsonl: file not found (nor .tsv); is {root} a FollowIR-layout folder?")


def _text(v: Any) -> str:
    return v.strip() if isinstance(v, str) else ""


def load_followir(dataset_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Read and check a FollowIR-layout folder; one clear :class:`InfirError` per problem."""
    root = Path(dataset_dir)
    if not root.is_dir():
        raise InfirError(f"{root}: not a directory (expected a FollowIR-layout folder)")
    corpus_path, queries_path, top_path = root / "corpus.jsonl", root / "queries.jsonl", root / "top_ranked.jsonl"
    for p in (corpus_path, queries_path, top_path):
        if not p.is_file():
            raise InfirError(f"{p}: file not found; is {root} a FollowIR-layout folder?")
    qrels_og = read_qrels(_qrels_file(root, "qrels_og", split))
    qrels_changed = read_qrels(_qrels_file(root, "qrels_changed", split))
    corpus = {str(d["_id"]): doc_text(d) for d in read_jsonl(corpus_path)}
    queries: dict[str, dict[str, str]] = {}
    for q in read_jsonl(queries_path):
        qid = str(q["_id"])
        if qid not in qrels_og:
            continue  # MTEB keeps only the queries judged in qrels_og
        for field in ("text", "instruction_og", "instruction_changed"):
            if not _text(q.get(field)):
                raise InfirError(f"{queries_path}: query {qid!r} has no {field!r}")
        queries[qid] = {f: _text(q[f]) for f in ("text", "instruction_og", "instruction_changed")}
    if not queries:
        raise InfirError(f"{queries_path}: no query is judged in qrels_og")
    top: dict[str, list[str]] = {}
    for rec in read_jsonl(top_path, required=("qid", "pid")):
        top.setdefault(str(rec["qid"]), []).append(str(rec["pid"]))
    for qid in queries:
        cands = top.get(qid)
        if not cands:
            raise InfirError(f"{top_path}: query {qid!r} has no candidates")
        missing = [d for d in cands if d not in corpus]
        if missing:
            raise InfirError(f"{top_path}: query {qid!r} lists {missing[0]!r}, which is not in corpus.jsonl")
    return {"root": root, "corpus": corpus, "queries": queries, "top_ranked": top,
            "qrels_og": qrels_og, "qrels_changed": qrels_changed}


def _rerank(emb_q: np.ndarray, emb_d: dict[str, np.ndarray], qids: list[str], top: dict[str, list[str]]):
    """{qid: {pid: cosine}} over each query's candidates, in candidate order (MTEB's run dict)."""
    run = {}
    for i, qid in enumerate(qids):
        cands = list(dict.fromkeys(top[qid]))
        scores = np.stack([emb_d[d] for d in cands]) @ emb_q[i]
        run[qid] = {d: float(s) for d, s in zip(cands, scores, strict=True)}
    return run


def evaluate_followir(
    model: Any,
    dataset_dir: str | Path,
    split: str = "test",
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 64,
) -> dict[str, Any]:
    """p-MRR (MTEB's definition, raw scale), plus nDCG@5 and MAP@1000 under the original instructions."""
    from pipeline.train.trainer import load_model

    check_template(template)
    data = load_followir(dataset_dir, split)
    queries, top, corpus = data["queries"], data["top_ranked"], data["corpus"]
    qids = list(queries)
    doc_ids = list(dict.fromkeys(d for q in qids for d in top[q]))
    st = load_model(model)
    d_emb = encode_texts(st, [corpus[d] for d in doc_ids], batch_size, label="candidates")
    emb_d = {d: d_emb[i] for i, d in enumerate(doc_ids)}
    og = [format_query(template, queries[q]["text"], queries[q]["instruction_og"]) for q in qids]
    ch = [format_query(template, queries[q]["text"], queries[q]["instruction_changed"]) for q in qids]
    q_emb = encode_texts(st, og + ch, batch_size, label="queries")
    n = len(qids)
    run_og = _rerank(q_emb[:n], emb_d, qids, top)
    run_changed = _rerank(q_emb[n:], emb_d, qids, top)
    changed = qrel_diff({q: data["qrels_og"][q] for q in qids}, data["qrels_changed"])
    pmrr, per_query = followir_pmrr(run_og, run_changed, changed)
    # pytrec_eval would break score ties by document id; hand it the runs in p-MRR's order instead
    ranked_og = {q: run_from_ranking(list(r), list(r.values())) for q, r in run_og.items()}
    og_scores = ir_metrics({q: data["qrels_og"][q] for q in qids}, ranked_og, ("ndcg_at_5", "map_at_1000"))
    return {
        "dataset": str(data["root"]),
        "split": split,
        "queries": n,
        "queries_with_changed_docs": len(per_query),
        "changed_docs": sum(len(v) for v in changed.values()),
        "candidates": sum(len(top[q]) for q in qids),
        "template": template,
        "pmrr": pmrr,
        "pmrr_scale": PMRR_SCALE,
        "ndcg_at_5": og_scores["ndcg_at_5"],
        "map_at_1000": og_scores["map_at_1000"],
        "pmrr_per_query": per_query,
    }
