"""Reproducible synthetic passage collections for benchmarks.

Passages are 40-100 words drawn from a seeded vocabulary with Zipfian word frequencies: the most
frequent slots are real English function words, the rest are pronounceable made-up words. Each
passage belongs to one of ``num_topics`` topics and draws ~30% of its words from that topic's word
list, so lexical retrieval has real structure (a query built from a passage finds it, and finds
same-topic passages as plausible hard negatives).

Nothing here imports ``pipeline``: other benchmarks can reuse it.

    from bench.synthetic import ensure_collection
    paths, queries = ensure_collection(Path("/tmp/syn-100k"), n=100_000, num_queries=1000)

``queries`` is a list of dicts ``{"qid", "text", "positive_ids", "positive_texts"}``.
Same (n, seed, num_queries, shard_size) -> byte-identical Parquet files and the same queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FORMAT_VERSION = 1

_FUNCTION_WORDS = (
    "the of and to a in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "more can who its also into other than only some these may two then do first any my now such "
    "like our over out even most after made many before must through back where much your way "
    "well down should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same another "
    "know while last might us great old year off come since against go came right used take three"
).split()

_ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "cr", "dr", "fl", "gr", "pl", "pr", "sh", "st", "str", "th", "tr", "ch", "sp", "qu"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ie", "ou", "oo", "y"]
_CODAS = ["", "", "n", "r", "s", "l", "t", "m", "nd", "st", "rk", "ng", "x"]

SCHEMA = pa.schema([("passage_id", pa.string()), ("title", pa.string()), ("text", pa.string())])


def make_vocabulary(size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct words: English function words first (most frequent), then made-up words."""
    rng = np.random.default_rng([seed, 1])
    words: list[str] = list(dict.fromkeys(_FUNCTION_WORDS))
    seen = set(words)
    while len(words) < size:
        n_syll = int(rng.integers(1, 4))
        w = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _NUCLEI[rng.integers(len(_NUCLEI))] + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(n_syll)
        )
        if len(w) >= 3 and w not in seen:
            seen.add(w)
            words.append(w)
    return np.array(words[:size], dtype=object)


class _Model:
    def __init__(self, seed: int, vocab_size: int, num_topics: int, topic_words: int, zipf_s: float):
        self.seed = seed
        self.vocab = make_vocabulary(vocab_size, seed)
        ranks = np.arange(1, vocab_size + 1, dtype=np.float64)
        p = ranks ** (-zipf_s)
        self.cdf = np.cumsum(p / p.sum())
        rng = np.random.default_rng([seed, 2])
        # topic words come from the mid/low-frequency band (content words)
        lo = len(_FUNCTION_WORDS)
        self.topics = np.stack(
            [rng.choice(np.arange(lo, vocab_size), size=topic_words, replace=False) for _ in range(num_topics)]
        )
        tr = np.arange(1, topic_words + 1, dtype=np.float64) ** -0.8
        self.topic_cdf = np.cumsum(tr / tr.sum())

    def passages(self, start: int, count: int) -> tuple[list[str], list[str], np.ndarray]:
        """Deterministic passages ``start .. start+count-1`` (seeded by the chunk start)."""
        rng = np.random.default_rng([self.seed, 3, start])
        lengths = rng.integers(40, 101, size=count)
        total = int(lengths.sum())
        topic = rng.integers(0, len(self.topics), size=count)
        glob = np.searchsorted(self.cdf, rng.random(total), side="right")
        glob = np.minimum(glob, len(self.vocab) - 1)
        tw = np.searchsorted(self.topic_cdf, rng.random(total), side="right")
        tw = np.minimum(tw, self.topics.shape[1] - 1)
        doc_of = np.repeat(np.arange(count), lengths)
        from_topic = rng.random(total) < 0.3
        idx = np.where(from_topic, self.topics[topic[doc_of], tw], glob)
        words = self.vocab[idx]
        title_len = rng.integers(2, 6, size=count)
        texts: list[str] = []
        titles: list[str] = []
        off = 0
        for i in range(count):
            n = int(lengths[i])
            w = words[off : off + n].tolist()
            off += n
            # sentence breaks every ~12-20 words
            out = []
            cut = 0
            while cut < n:
                step = 12 + (cut * 7 + i) % 9
                sent = w[cut : cut + step]
                out.append(" ".join(sent).capitalize() + ".")
                cut += step
            texts.append(" ".join(out))
            t = self.vocab[self.topics[topic[i], : int(title_len[i])]].tolist()
            titles.append(" ".join(t).title())
        return titles, texts, topic


def _pid(i: int) -> str:
    return f"syn{i:08d}"


def write_collection(
    out_dir: Path,
    n: int,
    seed: int = 0,
    shard_size: int = 100_000,
    num_queries: int = 1000,
    vocab_size: int = 60_000,
    num_topics: int = 2_000,
    topic_words: int = 300,
    zipf_s: float = 1.05,
    batch: int = 20_000,
) -> tuple[list[Path], list[dict]]:
    """Write ``n`` passages as ``part-NNNNN.parquet`` shards and build ``num_queries`` queries.

    Each query takes 3-7 content words of one passage (its positive), in passage order, plus one
    random topic word of the same topic (noise), so BM25 usually but not always ranks it first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = _Model(seed, vocab_size, num_topics, topic_words, zipf_s)
    qrng = np.random.default_rng([seed, 4])
    targets = np.sort(qrng.choice(n, size=min(num_queries, n), replace=False))
    target_set = {int(t): k for k, t in enumerate(targets)}
    stop = set(_FUNCTION_WORDS)
    queries: list[dict | None] = [None] * len(targets)
    paths: list[Path] = []
    for shard_start in range(0, n, shard_size):
        shard_end = min(n, shard_start + shard_size)
        path = out_dir / f"part-{shard_start // shard_size:05d}.parquet"
        tmp = path.with_suffix(".parquet.tmp")
        with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as w:
            for start in range(shard_start, shard_end, batch):
                count = min(batch, shard_end - start)
                titles, texts, topic = model.passages(start, count)
                ids = [_pid(i) for i in range(start, start + count)]
                w.write_batch(pa.record_batch([pa.array(ids), pa.array(titles), pa.array(texts)], schema=SCHEMA))
                for j in range(count):
                    k = target_set.get(start + j)
                    if k is None:
                        continue
                    rng = np.random.default_rng([seed, 5, start + j])
                    content = [t.strip(".").lower() for t in texts[j].split()]
                    content = [t for t in content if t not in stop]
                    m = int(rng.integers(3, 8))
                    pick = np.sort(rng.choice(len(content), size=min(m, len(content)), replace=False))
                    qwords = [content[p] for p in pick]
                    noise = model.vocab[model.topics[topic[j], int(rng.integers(model.topics.shape[1]))]]
                    qwords.insert(int(rng.integers(len(qwords) + 1)), str(noise))
                    queries[k] = {
                        "qid": f"q{k:06d}",
                        "text": " ".join(qwords),
                        "positive_ids": [ids[j]],
                        "positive_texts": [texts[j]],
                    }
        tmp.replace(path)
        paths.append(path)
    return paths, [q for q in queries if q is not None]


def ensure_collection(out_dir: Path, n: int, seed: int = 0, num_queries: int = 1000, **kw) -> tuple[list[Path], list[dict]]:
    """``write_collection`` unless ``out_dir`` already holds the same collection (manifest match)."""
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.json"
    want = {"format": FORMAT_VERSION, "n": n, "seed": seed, "num_queries": num_queries, **kw}
    if manifest.exists():
        got = json.loads(manifest.read_text())
        if got.get("params") == want and all((out_dir / p).exists() for p in got["files"]):
            return [out_dir / p for p in got["files"]], got["queries"]
    paths, queries = write_collection(out_dir, n, seed=seed, num_queries=num_queries, **kw)
    manifest.write_text(json.dumps({"params": want, "files": [p.name for p in paths], "queries": queries}))
    return paths, queries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    paths, queries = ensure_collection(a.out_dir, a.n, seed=a.seed, num_queries=a.queries)
    print(f"{len(paths)} shards, {len(queries)} queries in {a.out_dir}")


if __name__ == "__main__":
    main()
