"""Peak memory of the pipeline as the row count grows, over a fixed 1M-passage collection.

For each size (10k and 100k rows) a fresh run goes source -> generate -> mine (BM25) -> verify ->
write, every stage an `infir` command in its own process; the peak RSS of each process is read
from getrusage(RUSAGE_CHILDREN) of a one-shot wrapper (bench_memory.py --_peak), so each stage's figure
is its own. If memory stays flat in the number of rows, the 100k / 10k ratio of each stage is near 1.

Data (cached under --data-dir, outside git; rebuilt only when missing):
- the 1M synthetic passages of bench/synthetic.py (the same files bench_mining.py uses), copied into
  one Parquet file with the source reader's column names;
- 100k queries, each made of 3-7 content words of one seeded random passage (its judged positive);
  the 10k set is the first 10k of them.
The BM25 index of the collection is built once into a shared index directory (both runs' source
stages write byte-identical collections, so their fingerprint matches) and reused by every run.

The LLM stages use the offline backend (deterministic, no HTTP), since 3 x 100k calls to the test
server would take longer than the whole benchmark budget; their memory is the stages' own.

    python bench/bench_memory.py [--sizes 10000,100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

COLLECTION = 1_000_000
STAGES = ("source", "generate", "mine", "verify", "write")


def build_data(data_dir: Path, max_queries: int, seed: int = 7) -> Path:
    """One corpus.parquet (1M passages) and queries/qrels for the first `max_queries` targets."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.synthetic import _FUNCTION_WORDS, ensure_collection

    data_dir.mkdir(parents=True, exist_ok=True)
    stamp = data_dir / "data.json"
    want = {"collection": COLLECTION, "queries": max_queries, "seed": seed, "format": 2}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return data_dir
    shards, _ = ensure_collection(Path(tempfile.gettempdir()) / "infir-bench-mining" / f"syn-{COLLECTION}", COLLECTION)
    corpus = data_dir / "corpus.parquet"
    schema = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    rng = np.random.default_rng(seed)
    targets = np.sort(rng.choice(COLLECTION, size=max_queries, replace=False))
    picked: dict[int, tuple[str, str]] = {}
    offset = 0
    with pq.ParquetWriter(corpus.with_suffix(".tmp"), schema, compression="zstd") as w:
        for path in shards:
            t = pq.read_table(path)
            w.write_table(pa.table([t["passage_id"], t["title"], t["text"]], schema=schema), row_group_size=50_000)
            lo, hi = np.searchsorted(targets, [offset, offset + t.num_rows])
            rows = (targets[lo:hi] - offset).tolist()
            if rows:
                sub = t.take(rows)
                for pid, text in zip(sub["passage_id"].to_pylist(), sub["text"].to_pylist()):
                    picked[len(picked)] = (pid, text)
            offset += t.num_rows
    corpus.with_suffix(".tmp").replace(corpus)
    stop = set(_FUNCTION_WORDS)
    qids, qtexts, qpids = [], [], []
    for k in range(len(picked)):
        pid, text = picked[k]
        r = np.random.default_rng([seed, k])
        words = [x.strip(".").lower() for x in text.split()]
        # content words only, as bench_mining's queries: function words would make every query
        # score most of the collection
        words = [x for x in words if x not in stop] or words
        m = int(r.integers(3, 8))
        pick = np.sort(r.choice(len(words), size=min(m, len(words)), replace=False))
        qids.append(f"q{k:07d}")
        qtexts.append(" ".join(words[p] for p in pick))
        qpids.append(pid)
    pq.write_table(pa.table({"_id": qids, "text": qtexts}), data_dir / "queries-all.parquet")
    pq.write_table(pa.table({"query-id": qids, "corpus-id": qpids, "score": [1] * len(qids)}),
                   data_dir / "qrels-all.parquet")
    stamp.write_text(json.dumps(want))
    return data_dir


def dataset(data_dir: Path, n: int) -> Path:
    """A source folder of the first n queries over the shared corpus (a symlink)."""
    import pyarrow.parquet as pq

    d = data_dir / f"n{n}"
    if (d / "qrels.parquet").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "corpus.parquet").exists():
        (d / "corpus.parquet").symlink_to(data_dir / "corpus.parquet")
    pq.write_table(pq.read_table(data_dir / "queries-all.parquet").slice(0, n), d / "queries.parquet")
    pq.write_table(pq.read_table(data_dir / "qrels-all.parquet").slice(0, n), d / "qrels.parquet")
    return d


def peak_child(argv: list[str]) -> None:
    """Run argv as a child, print its wall seconds and peak RSS (MiB) as JSON on the last line."""
    t0 = time.perf_counter()
    rc = subprocess.run(argv, cwd=REPO).returncode
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rc": rc, "seconds": dt, "peak_mib": peak}))


def measured(argv: list[str], log: Path) -> dict:
    """argv in a fresh wrapper process, so RUSAGE_CHILDREN holds this one command only."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("a") as f:
        f.write(f"$ {' '.join(argv)}\n")
        f.flush()
        r = subprocess.run([sys.executable, __file__, "--_peak", json.dumps(argv)], cwd=REPO, env=env,
                           stdout=subprocess.PIPE, stderr=f, text=True)
        f.write(r.stdout)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"{argv[3:5]} failed (exit {res['rc']}); see {log}")
    return res


def run_size(work: Path, data: Path, n: int, index_dir: Path, log: Path) -> dict:
    name = f"mem-{n}"
    run = work / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    # Every run shares one BM25 index: its directory is keyed by the collection's fingerprint.
    (run / "index").symlink_to(index_dir)
    sets = {
        "run.runs_dir": str(work / "runs"), "run.name": name,
        "source.format": "parquet", "source.path": str(dataset(data, n)), "source.decontaminate": "[]",
        "source.sample_queries": 0, "source.max_passage_words": 400,
        "llm.backend": "offline", "llm.cache_path": str(work / f"{name}.sqlite3"),
        # near misses in generate would add a third BM25 pass per row (mine makes two)
        "generate.use_near_misses": "false",
        "write.releases_dir": str(work / "releases"), "write.name": f"bench-{name}",
    }
    args = ["--config", "configs/msmarco.toml"] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    Path(sets["llm.cache_path"]).unlink(missing_ok=True)
    out = {}
    for stage in STAGES:
        out[stage] = measured([sys.executable, "-m", "pipeline.cli", stage, *args], log)
        print(f"  {n:,} rows, {stage}: {out[stage]['seconds']:.1f} s, peak {out[stage]['peak_mib']:.0f} MiB",
              flush=True)
    verify = json.loads((run / "verify" / "_SUCCESS.json").read_text())["summary"]
    out["rows"] = verify["candidates"]
    out["accepted"] = verify["accepted"]
    return out


def warm_index(work: Path, data: Path, n: int, index_dir: Path, log: Path) -> dict:
    """Build (or load) the shared BM25 index once, in its own process, from a source stage's collection."""
    name = "mem-index"
    run = work / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    sets = {"run.runs_dir": str(work / "runs"), "run.name": name, "source.format": "parquet",
            "source.path": str(dataset(data, n)), "source.decontaminate": "[]", "source.max_passage_words": 400}
    args = ["--config", "configs/msmarco.toml"] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    measured([sys.executable, "-m", "pipeline.cli", "source", *args], log)
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, %r)\n"
        "from pipeline.retrieval import MiningQuery, neighbours\n"
        "from pipeline.declaration import PIPELINE\n"
        "from pipeline.runner.run import context\n"
        "from pipeline.config import load_config\n"
        "cfg = load_config(Path('configs/msmarco.toml'), {'run.runs_dir': %r, 'run.name': %r})\n"
        "paths, fp, _ = context(PIPELINE, PIPELINE['mine'], cfg).collection()\n"
        "neighbours([MiningQuery(qid='q', text='warm up', positive_ids=[], positive_texts=[])], paths,"
        " index_dir=Path(%r), k=1, fingerprint=fp, settings=cfg.mine.retrieval)\n"
    ) % (str(REPO), str(work / "runs"), name, str(index_dir))
    res = measured([sys.executable, "-c", code], log)
    shutil.rmtree(run, ignore_errors=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "infir-bench-pipeline" / "memory-data")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "infir-bench-pipeline" / "memory")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--_peak", dest="peak", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peak:
        peak_child(json.loads(a.peak))
        return
    sizes = [int(x) for x in a.sizes.split(",") if x]
    a.work.mkdir(parents=True, exist_ok=True)
    log = a.work / "infir.log"
    log.write_text("")
    t0 = time.perf_counter()
    data = build_data(a.data_dir, max(sizes))
    data_s = time.perf_counter() - t0
    index_dir = a.data_dir / "index"
    index_dir.mkdir(exist_ok=True)
    had_index = any(index_dir.glob("bm25-*")) or any(index_dir.iterdir())
    idx = warm_index(a.work, data, sizes[0], index_dir, log)
    results = {n: run_size(a.work, data, n, index_dir, log) for n in sizes}
    lo, hi = sizes[0], sizes[-1]
    md = [
        f"{COLLECTION:,}-passage synthetic collection (bench/synthetic.py), one `infir` process per stage, "
        f"peak RSS from getrusage(RUSAGE_CHILDREN) of a one-shot wrapper. Offline backend for the LLM stages; "
        f"BM25 mining (msmarco.toml settings: 8 negatives, 8 near misses shown to the poison prompt; "
        f"generate.use_near_misses=false to keep the run short). "
        f"Shared BM25 index {'loaded' if had_index else 'built'} by a warm-up process: {idx['seconds']:.0f} s, "
        f"peak {idx['peak_mib']:,.0f} MiB. Data preparation: {data_s:.0f} s (cached afterwards).",
        "",
        "| stage | " + " | ".join(f"{n:,} rows: s" for n in sizes) + " | "
        + " | ".join(f"{n:,} rows: peak MiB" for n in sizes) + f" | peak ratio {hi // 1000}k / {lo // 1000}k |",
        "|---|" + "---:|" * (2 * len(sizes) + 1),
    ]
    for s in STAGES:
        r = [results[n][s] for n in sizes]
        ratio = results[hi][s]["peak_mib"] / results[lo][s]["peak_mib"]
        bold = "**" if s in ("source", "mine", "write") else ""
        md.append(f"| {bold}{s}{bold} | " + " | ".join(f"{x['seconds']:.1f}" for x in r) + " | "
                  + " | ".join(f"{x['peak_mib']:,.0f}" for x in r) + f" | {bold}{ratio:.2f}{bold} |")
    md += ["", "Rows (candidates / accepted): " + ", ".join(
        f"{n:,}: {results[n]['rows']:,} / {results[n]['accepted']:,}" for n in sizes) + "."]
    text = "\n".join(md)
    print(text)
    (a.work / "result.json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))
    if a.out:
        with a.out.open("a", encoding="utf-8") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
