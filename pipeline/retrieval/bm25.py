"""BM25 index on bm25s, built streaming.

The index is a regular bm25s index (``bm25s.BM25.load(dir, mmap=True)`` opens it; the tokenizer is a
``bm25s.tokenization.Tokenizer`` saved next to it), but it is *built* without ever holding the corpus:
each record batch is tokenised with the bm25s tokenizer, reduced to (doc, token, tf) triples with numpy
and spilled to disk; ``finish`` computes Lucene BM25 weights (same formula as ``bm25s.BM25(method=
"lucene")``) and writes the CSC matrix with a chunked counting sort straight into the ``.npy`` files.
Peak memory is the final index (8 bytes per posting) plus one chunk, not a Python list per passage.

Scoring a query: the postings of its tokens are summed with ``np.bincount`` (the same sum as
``bm25s.BM25.get_scores`` but several times faster than its ``np.add.at``), giving every passage's score,
so the positive's own score is read off the same vector.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections import Counter, OrderedDict
from pathlib import Path

import numpy as np
from bm25s.tokenization import Tokenizer

from .collection import _atomic_dir, _publish_dir
from .errors import RetrievalError

BM25_FORMAT = 1
SPLITTER = r"(?u)\b\w\w+\b"  # bm25s default
_CHUNK = 8_000_000  # postings per counting-sort chunk


def bm25_key(fingerprint: str, k1: float, b: float, stopwords: str | None) -> str:
    """Index directory name: collection fingerprint + tokenizer/BM25 settings + format version."""
    tok = hashlib.sha256(json.dumps(
        {"format": BM25_FORMAT, "k1": k1, "b": b, "stopwords": stopwords, "lower": True, "splitter": SPLITTER,
         "stemmer": None, "method": "lucene"}, sort_keys=True).encode()).hexdigest()[:8]
    return f"bm25-{fingerprint[:16]}-{tok}"


def _new_tokenizer(stopwords: str | None) -> Tokenizer:
    return Tokenizer(lower=True, splitter=SPLITTER, stopwords=stopwords if stopwords else None, stemmer=None)


class BM25Builder:
    """Streaming builder: ``add`` batches of texts in collection order, then ``finish``."""

    def __init__(self, final_dir: Path, k1: float, b: float, stopwords: str | None):
        self.final_dir = final_dir
        self.k1, self.b, self.stopwords = k1, b, stopwords
        self.tmp = _atomic_dir(final_dir)
        self.tok = _new_tokenizer(stopwords)
        self._doc_f = open(self.tmp / "_doc.i32", "wb")
        self._tok_f = open(self.tmp / "_tok.i32", "wb")
        self._tf_f = open(self.tmp / "_tf.f32", "wb")
        self._lens: list[np.ndarray] = []
        self.num_docs = 0
        self.nnz = 0
        self.t0 = time.perf_counter()

    def add(self, texts: list[str]) -> None:
        docs = list(self.tok.streaming_tokenize(texts, update_vocab=True, allow_empty=True))
        lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        flat = np.fromiter((t for d in docs for t in d), dtype=np.int64, count=int(lens.sum()))
        local = np.repeat(np.arange(len(docs), dtype=np.int64), lens)
        keys, tf = np.unique((local << 32) | flat, return_counts=True)  # sorted by (doc, token)
        (self.num_docs + (keys >> 32)).astype(np.int32).tofile(self._doc_f)
        (keys & 0xFFFFFFFF).astype(np.int32).tofile(self._tok_f)
        tf.astype(np.float32).tofile(self._tf_f)
        self._lens.append(lens.astype(np.int32))
        self.num_docs += len(docs)
        self.nnz += len(keys)

    def finish(self, fingerprint: str) -> Path:
        for f in (self._doc_f, self._tok_f, self._tf_f):
            f.close()
        tmp, n, nnz = self.tmp, self.num_docs, self.nnz
        vocab = self.tok.get_vocab_dict()
        n_vocab = (max(vocab.values()) + 1) if vocab else 1
        doc_len = np.concatenate(self._lens) if self._lens else np.zeros(0, np.int32)
        self._lens = []
        doc = np.memmap(tmp / "_doc.i32", dtype=np.int32, mode="r", shape=(nnz,)) if nnz else np.zeros(0, np.int32)
        tok = np.memmap(tmp / "_tok.i32", dtype=np.int32, mode="r", shape=(nnz,)) if nnz else np.zeros(0, np.int32)
        tfa = np.memmap(tmp / "_tf.f32", dtype=np.float32, mode="r", shape=(nnz,)) if nnz else np.zeros(0, np.float32)

        df = np.zeros(n_vocab, dtype=np.int64)
        for s in range(0, nnz, _CHUNK):
            df += np.bincount(tok[s:s + _CHUNK], minlength=n_vocab)
        # Lucene idf and tf normalisation, as bm25s.scoring (_score_idf_lucene / _score_tfc_lucene)
        idf = np.where(df > 0, np.log(1.0 + (n - df + 0.5) / (df + 0.5)), 0.0).astype(np.float32)
        avgdl = float(doc_len.mean()) if n else 1.0
        norm = (self.k1 * ((1.0 - self.b) + self.b * doc_len.astype(np.float64) / avgdl))

        indptr = np.zeros(n_vocab + 1, dtype=np.int64)
        np.cumsum(df, out=indptr[1:])
        data = np.lib.format.open_memmap(tmp / "data.csc.index.npy", mode="w+", dtype=np.float32, shape=(nnz,))
        indices = np.lib.format.open_memmap(tmp / "indices.csc.index.npy", mode="w+", dtype=np.int32, shape=(nnz,))
        heads = indptr[:-1].copy()
        for s in range(0, nnz, _CHUNK):
            t = np.asarray(tok[s:s + _CHUNK])
            d = np.asarray(doc[s:s + _CHUNK])
            tf = np.asarray(tfa[s:s + _CHUNK], dtype=np.float64)
            w = (idf[t] * (tf / (norm[d] + tf))).astype(np.float32)
            order = np.argsort(t, kind="stable")  # chunk is in doc order -> postings stay doc-sorted
            ts = t[order]
            counts = np.bincount(t, minlength=n_vocab)
            first = np.concatenate(([0], np.cumsum(counts)[:-1]))  # start of each token's run in ts
            dest = heads[ts] + (np.arange(len(ts)) - first[ts])
            data[dest] = w[order]
            indices[dest] = d[order]
            heads += counts
        data.flush()
        indices.flush()
        del data, indices, doc, tok, tfa
        np.save(tmp / "indptr.csc.index.npy", indptr)
        for f in ("_doc.i32", "_tok.i32", "_tf.f32"):
            os.remove(tmp / f)
        # bm25s metadata, so bm25s.BM25.load(dir, mmap=True) opens this index as-is
        (tmp / "vocab.index.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (tmp / "params.index.json").write_text(json.dumps(dict(
            k1=self.k1, b=self.b, delta=0.5, method="lucene", idf_method="lucene", dtype="float32",
            int_dtype="int32", num_docs=n, version="infir-streaming", backend="numpy")))
        self.tok.save_vocab(tmp)
        self.tok.save_stopwords(tmp)
        np.save(tmp / "idf.npy", idf)
        (tmp / "meta.json").write_text(json.dumps({
            "format": BM25_FORMAT, "fingerprint": fingerprint, "num_docs": n, "nnz": nnz, "vocab": n_vocab,
            "avgdl": avgdl, "k1": self.k1, "b": self.b, "stopwords": self.stopwords,
            "build_seconds": round(time.perf_counter() - self.t0, 3)}))
        _publish_dir(tmp, self.final_dir)
        return self.final_dir

    def abort(self) -> None:
        for f in (self._doc_f, self._tok_f, self._tf_f):
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


_RECENT_QUERIES = 4096  # > two chunks of queries: enough for mine's second search of each


class BM25Index:
    """A built index, memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.meta = json.loads((path / "meta.json").read_text())
        except FileNotFoundError:
            raise RetrievalError(f"{path}: incomplete BM25 index (no meta.json); delete the directory") from None
        if self.meta.get("format") != BM25_FORMAT:
            raise RetrievalError(f"{path}: BM25 index format {self.meta.get('format')} != {BM25_FORMAT}; delete it")
        self.num_docs = int(self.meta["num_docs"])
        self.k1, self.b, self.avgdl = float(self.meta["k1"]), float(self.meta["b"]), float(self.meta["avgdl"])
        self.data = np.load(path / "data.csc.index.npy", mmap_mode="r")
        self.indices = np.load(path / "indices.csc.index.npy", mmap_mode="r")
        self.indptr = np.load(path / "indptr.csc.index.npy")
        self.idf = np.load(path / "idf.npy")
        self.tok = _new_tokenizer(self.meta["stopwords"])
        self.tok.load_vocab(path)
        self.tok.load_stopwords(path)
        self._stop = set(self.tok.stopwords or ())
        self._split = re.compile(SPLITTER).findall
        # The mine stage searches each query twice (negatives, then near misses, less deep): the
        # second is a slice of the first's ranking (ties are ordered by row, so slicing is exact).
        self._recent: OrderedDict[bytes, tuple[int, np.ndarray, np.ndarray]] = OrderedDict()

    @staticmethod
    def is_complete(path: Path) -> bool:
        return (path / "meta.json").exists()

    def bm25s(self):
        """The same index as a ``bm25s.BM25`` object (memory-mapped)."""
        import bm25s

        return bm25s.BM25.load(self.path, mmap=True)

    def query_tokens(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each query (unknown words dropped), bm25s tokenizer semantics."""
        out = []
        for ids in self.tok.streaming_tokenize(texts, update_vocab=False, allow_empty=False):
            out.append(np.asarray(ids, dtype=np.int64))
        return out

    def scores(self, qtok: np.ndarray) -> np.ndarray:
        """BM25 score of every passage for one tokenised query (float64, length num_docs)."""
        if len(qtok) == 0:
            return np.zeros(self.num_docs, dtype=np.float64)
        starts, ends = self.indptr[qtok], self.indptr[qtok + 1]
        if len(qtok) == 1:
            idx, w = self.indices[starts[0]:ends[0]], self.data[starts[0]:ends[0]]
        else:
            idx = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends)])
            w = np.concatenate([self.data[s:e] for s, e in zip(starts, ends)])
        return np.bincount(idx, weights=w, minlength=self.num_docs)

    def search(self, qtok: np.ndarray, k: int, extra_rows: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k (rows, scores) for one tokenised query, plus the scores of ``extra_rows`` (e.g. the
        query's positives) from the same scoring pass."""
        extra = np.zeros(0, np.int64) if extra_rows is None else np.asarray(extra_rows, np.int64)
        if len(qtok) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float64), np.zeros(len(extra))
        key = qtok.tobytes()
        seen = self._recent.get(key)
        if seen is not None and not len(extra) and (seen[0] >= k or len(seen[1]) < seen[0]):
            # a deeper (or exhaustive: fewer hits than asked) ranking of the same query
            return seen[1][:k].copy(), seen[2][:k].copy(), np.zeros(0)
        rows, sc, ex = self._search(qtok, k, extra)
        self._recent[key] = (k, rows, sc)
        self._recent.move_to_end(key)
        if len(self._recent) > _RECENT_QUERIES:
            self._recent.popitem(last=False)
        return rows, sc, ex

    def _search(self, qtok: np.ndarray, k: int, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        starts, ends = self.indptr[qtok], self.indptr[qtok + 1]
        total = int((ends - starts).sum())
        if total > self.num_docs // 8:
            # many postings: dense accumulation over all passages
            full = self.scores(qtok)
            nz = np.flatnonzero(full)
            rows, sc = top_k(nz, full[nz], k)
            return rows, sc, full[extra]
        if len(qtok) == 1:
            idx, w = self.indices[starts[0]:ends[0]], self.data[starts[0]:ends[0]]
        else:
            idx = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends)])
            w = np.concatenate([self.data[s:e] for s, e in zip(starts, ends)])
        # few postings: accumulate only over the passages they touch
        uniq, inv = np.unique(idx, return_inverse=True)
        acc = np.bincount(inv, weights=w, minlength=len(uniq))
        rows, sc = top_k(uniq, acc, k)
        pos = np.searchsorted(uniq, extra)
        pos_c = np.minimum(pos, max(len(uniq) - 1, 0))
        hit = (pos < len(uniq)) & (uniq[pos_c] == extra) if len(uniq) else np.zeros(len(extra), bool)
        return rows, sc, np.where(hit, acc[pos_c] if len(uniq) else 0.0, 0.0)

    def score_text(self, qtok: np.ndarray, text: str) -> float:
        """BM25 score of an arbitrary passage text (e.g. a positive not in the collection), using the
        collection's idf and average length."""
        words = self._split(text.lower())
        words = [w for w in words if w not in self._stop] or [""]
        dl = len(words)
        vocab = self.tok.word_to_id
        tf = Counter(vocab[w] for w in words if w in vocab)
        norm = self.k1 * ((1.0 - self.b) + self.b * dl / self.avgdl)
        s = 0.0
        for t in qtok.tolist():
            f = tf.get(t, 0)
            if f:
                s += float(self.idf[t]) * (f / (norm + f))
        return s


def top_k(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (row, score) pairs with score > 0, by score desc then row asc (deterministic)."""
    keep = scores > 0
    if not keep.all():
        rows, scores = rows[keep], scores[keep]
    n = len(rows)
    if n == 0 or k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    if k < n:
        # take everything tied with the k-th score, then order exactly
        kth = np.partition(scores, n - k)[n - k]
        sel = np.flatnonzero(scores >= kth)
        rows, scores = rows[sel], scores[sel]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order].astype(np.int64), scores[order]
