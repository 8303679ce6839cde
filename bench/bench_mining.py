"""Hard-negative mining benchmarks; prints markdown (``--out FILE`` also writes it).

1. BM25 on synthetic collections (bench/synthetic.py), one subprocess per size so peak RSS is
   per size: index build time, mining queries/s (cold = first call incl. build; warm = index reused),
   peak RSS of the process.
2. Dense on the MS MARCO dev sample (BEIR layout) vs ``sentence_transformers.util.mine_hard_negatives``
   with the same model object and the same settings, alternating order over ``--rounds`` rounds:
   median wall time of each, the ratio, and the overlap of the chosen negatives.

    HF_HUB_OFFLINE=1 python bench/bench_mining.py --sizes 100000,1000000 --out bench/mining.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MSMARCO = ROOT.parent / "shared" / "data" / "msmarco-dev-sample"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# --------------------------------------------------------------------------- BM25 (worker)


def bm25_worker(data_dir: Path, n: int, num_queries: int) -> dict:
    from bench.synthetic import ensure_collection
    from pipeline.retrieval import MiningQuery, MiningSettings, collection_fingerprint, mine_hard_negatives

    paths, queries = ensure_collection(data_dir / f"syn-{n}", n, num_queries=num_queries)
    qs = [MiningQuery(**q) for q in queries]
    index_dir = data_dir / f"index-{n}"
    shutil.rmtree(index_dir, ignore_errors=True)
    base = _rss_mb()
    fp = collection_fingerprint(paths)
    settings = MiningSettings(method="bm25")
    st1: dict = {}
    t = time.perf_counter()
    res = mine_hard_negatives(qs, paths, settings, index_dir, fingerprint=fp, stats=st1)
    cold = time.perf_counter() - t
    peak_build = _peak_rss_mb()
    st2: dict = {}
    t = time.perf_counter()
    res2 = mine_hard_negatives(qs, paths, settings, index_dir, fingerprint=fp, stats=st2)
    warm = time.perf_counter() - t
    assert st2["bm25_index"] == "loaded" and res2 == res
    got = sum(len(v) for v in res.values())
    size = sum(f.stat().st_size for f in index_dir.rglob("*") if f.is_file())
    return {
        "n": n, "queries": len(qs), "build_s": st1["index_seconds"], "cold_s": cold,
        "mine_s": st1["mine_seconds"], "warm_s": warm, "warm_mine_s": st2["mine_seconds"],
        "qps": len(qs) / st2["mine_seconds"], "warm_qps": len(qs) / warm, "negatives": got,
        "short": st1["short"], "dropped_margin": st1["dropped_margin"],
        "peak_rss_mb": peak_build, "peak_rss_end_mb": _peak_rss_mb(), "base_rss_mb": base,
        "index_mb": size / 2**20,
    }


def run_bm25(sizes: list[int], num_queries: int, data_dir: Path) -> list[dict]:
    from bench.synthetic import ensure_collection

    rows = []
    for n in sizes:
        t = time.perf_counter()
        ensure_collection(data_dir / f"syn-{n}", n, num_queries=num_queries)  # generated outside the worker
        print(f"[bm25] collection {n:,} ready ({time.perf_counter() - t:.0f}s)", file=sys.stderr)
        out = subprocess.run(
            [sys.executable, __file__, "--_bm25-worker", str(n), "--queries", str(num_queries),
             "--data-dir", str(data_dir)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"bm25 worker {n} failed:\n{out.stderr[-4000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[bm25] {row}", file=sys.stderr)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- dense vs sentence-transformers


def _load_msmarco():
    corpus = [json.loads(line) for line in open(MSMARCO / "corpus.jsonl", encoding="utf-8")]
    queries = {}
    for line in open(MSMARCO / "queries.jsonl", encoding="utf-8"):
        d = json.loads(line)
        queries[d["_id"]] = d["text"]
    qrels: dict[str, list[str]] = {}
    with open(MSMARCO / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, p, s = line.rstrip("\n").split("\t")
            if float(s) > 0:
                qrels.setdefault(q, []).append(p)
    return corpus, queries, qrels


def run_dense(rounds: int, work: Path, batch_size: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine

    from pipeline.retrieval import MiningQuery, MiningSettings, mine_hard_negatives
    from pipeline.retrieval.dense import load_model

    work.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = _load_msmarco()
    text_of = {c["_id"]: (c.get("title") + " " + c["text"]) if c.get("title") else c["text"] for c in corpus}
    coll = work / "msmarco.parquet"
    pq.write_table(pa.table({"passage_id": [c["_id"] for c in corpus], "title": [c.get("title", "") for c in corpus],
                             "text": [c["text"] for c in corpus]}), coll)
    qs = [MiningQuery(q, queries[q], ps, [text_of[p] for p in ps]) for q, ps in qrels.items()]
    ds = Dataset.from_dict({"query": [queries[q] for q, ps in qrels.items() for _ in ps],
                            "positive": [text_of[p] for q, ps in qrels.items() for p in ps]})
    corpus_texts = [text_of[c["_id"]] for c in corpus]
    settings = MiningSettings(method="dense", range_min=0, range_max=50, margin_type="relative", margin=0.95,
                              num_negatives=5, sampling="top", batch_size=batch_size, near_duplicate_threshold=None)
    model = load_model(None, "cpu", None)  # the same object is handed to sentence-transformers
    model.encode(["warm up"], show_progress_bar=False)

    def ours(tag: str):
        d = work / f"idx-{tag}"
        shutil.rmtree(d, ignore_errors=True)
        t, c = time.perf_counter(), time.process_time()
        r = mine_hard_negatives(qs, [coll], settings, d)
        return time.perf_counter() - t, time.process_time() - c, r

    def theirs():
        t, c = time.perf_counter(), time.process_time()
        r = st_mine(ds, model, anchor_column_name="query", positive_column_name="positive", corpus=corpus_texts,
                    range_min=0, range_max=50, relative_margin=0.05, num_negatives=5, sampling_strategy="top",
                    batch_size=batch_size, use_faiss=True, verbose=False, output_format="triplet")
        return time.perf_counter() - t, time.process_time() - c, r

    t_ours, t_theirs, c_ours, c_theirs = [], [], [], []
    res_ours = res_theirs = None
    for r in range(rounds):
        order = ("ours", "theirs") if r % 2 == 0 else ("theirs", "ours")
        for who in order:
            if who == "ours":
                dt, ct, res_ours = ours(str(r))
                t_ours.append(dt)
                c_ours.append(ct)
            else:
                dt, ct, res_theirs = theirs()
                t_theirs.append(dt)
                c_theirs.append(ct)
            print(f"[dense] round {r} {who}: {dt:.1f}s wall, {ct:.1f}s cpu, load {os.getloadavg()[0]:.1f}",
                  file=sys.stderr)
    # warm: the embedding cache of the last cold run is reused
    t = time.perf_counter()
    mine_hard_negatives(qs, [coll], settings, work / f"idx-{rounds - 1}")
    warm = time.perf_counter() - t
    # near-duplicate filter on (our default) for the record
    st_nd: dict = {}
    res_nd = mine_hard_negatives(qs, [coll], settings.model_copy(update={"near_duplicate_threshold": 90.0}),
                                 work / f"idx-{rounds - 1}", stats=st_nd)

    # overlap, per query text (sentence-transformers keys by query text)
    theirs_by_q: dict[str, set[str]] = {}
    for row in res_theirs:
        theirs_by_q.setdefault(row["query"], set()).add(row["negative"])
    jac, frac, exact, n_ours, n_theirs = [], [], 0, 0, 0
    for q in qs:
        a = {n.text for n in res_ours.get(q.qid, [])}
        b = theirs_by_q.get(q.text, set())
        n_ours += len(a)
        n_theirs += len(b)
        if a or b:
            jac.append(len(a & b) / len(a | b))
            frac.append(len(a & b) / max(len(b), 1))
        exact += a == b
    nd_changed = sum({n.text for n in res_nd[q.qid]} != {n.text for n in res_ours[q.qid]} for q in qs)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    return {"queries": len(qs), "passages": len(corpus), "rounds": rounds, "ours_s": t_ours, "theirs_s": t_theirs,
            "ours_median_s": mo, "theirs_median_s": mt, "ratio": mo / mt,
            "ours_cpu_s": c_ours, "theirs_cpu_s": c_theirs,
            "cpu_ratio": statistics.median(c_ours) / statistics.median(c_theirs), "ours_warm_s": warm,
            "jaccard_mean": statistics.fmean(jac) if jac else 1.0, "frac_of_theirs": statistics.fmean(frac) if frac else 1.0,
            "identical_sets": exact, "negatives_ours": n_ours, "negatives_theirs": n_theirs,
            "neardup_queries_changed": nd_changed, "neardup_dropped": st_nd["dropped_near_duplicate"],
            "batch_size": batch_size}


# --------------------------------------------------------------------------- report


def markdown(bm25_rows: list[dict], dense: dict | None) -> str:
    import psutil

    out = [f"## Hard-negative mining ({platform.machine()}, {psutil.cpu_count()} cores, "
           f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; load avg at end {os.getloadavg()[0]:.1f})", ""]
    if bm25_rows:
        out += ["### BM25 (synthetic passages, 40-100 words, Zipfian vocabulary; method=bm25, range 0-50, "
                "relative margin 0.95, 5 negatives)", "",
                "| passages | queries | index build (s) | index on disk (MiB) | mining q/s (index loaded) "
                "| 2nd call incl. index load (s) | peak RSS (MiB) |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in bm25_rows:
            out.append(f"| {r['n']:,} | {r['queries']:,} | {r['build_s']:.1f} | {r['index_mb']:.0f} | {r['qps']:,.0f} "
                       f"| {r['warm_s']:.2f} | {r['peak_rss_end_mb']:,.0f} |")
        out.append("")
    if dense:
        d = dense
        out += [f"### Dense, MS MARCO dev sample ({d['queries']:,} queries, {d['passages']:,} passages), "
                f"all-MiniLM-L6-v2 fp32 on CPU, batch {d['batch_size']}", "",
                "Same model object, range 0-50, relative margin 0.95 (= sentence-transformers "
                "`relative_margin=0.05`), 5 negatives, sampling top, faiss IndexFlatIP on both sides; "
                f"ours cold (empty index dir). Median of {d['rounds']} alternating rounds.", "",
                "| | wall (s), median | wall runs (s) | process CPU runs (s) |", "|---|---:|---|---|",
                f"| infir `mine_hard_negatives` (cold) | {d['ours_median_s']:.1f} | "
                + ", ".join(f"{x:.1f}" for x in d["ours_s"]) + " | "
                + ", ".join(f"{x:.1f}" for x in d["ours_cpu_s"]) + " |",
                "| sentence-transformers `util.mine_hard_negatives` | "
                f"{d['theirs_median_s']:.1f} | " + ", ".join(f"{x:.1f}" for x in d["theirs_s"]) + " | "
                + ", ".join(f"{x:.1f}" for x in d["theirs_cpu_s"]) + " |",
                f"| infir, embeddings cached (2nd call) | {d['ours_warm_s']:.2f} | | |", "",
                f"- time ratio ours/theirs (median wall): **{d['ratio']:.2f}**; median process CPU: "
                f"{d['cpu_ratio']:.2f}",
                f"- overlap of chosen negatives (per query, by text): mean Jaccard **{d['jaccard_mean']:.3f}**, "
                f"fraction of theirs also chosen by us {d['frac_of_theirs']:.3f}, identical sets "
                f"{d['identical_sets']:,}/{d['queries']:,}; negatives: ours {d['negatives_ours']:,}, "
                f"theirs {d['negatives_theirs']:,}",
                f"- with our near-duplicate filter on (threshold 90): {d['neardup_dropped']} candidates dropped, "
                f"{d['neardup_queries_changed']} queries' sets changed", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated BM25 collection sizes ('' to skip)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3, help="dense: alternating rounds ours/theirs")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "infir-bench-mining")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--_bm25-worker", dest="worker", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.data_dir.mkdir(parents=True, exist_ok=True)
    if a.worker:
        print(json.dumps(bm25_worker(a.data_dir, a.worker, a.queries)))
        return
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    bm25_rows = run_bm25(sizes, a.queries, a.data_dir) if sizes else []
    dense = None
    if not a.skip_dense:
        if MSMARCO.exists():
            dense = run_dense(a.rounds, a.data_dir / "dense", a.batch_size)
        else:
            print(f"[dense] skipped: {MSMARCO} not found", file=sys.stderr)
    md = markdown(bm25_rows, dense)
    print(md)
    if a.out:
        a.out.write_text(md + "\n")
        (a.out.with_suffix(".json")).write_text(json.dumps({"bm25": bm25_rows, "dense": dense}, indent=1))


if __name__ == "__main__":
    main()
