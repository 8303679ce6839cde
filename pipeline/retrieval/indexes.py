"""Opening the indexes mining needs (doc store, BM25, dense embeddings) in one streaming pass over
the collection, building the missing ones; lexical indexes are kept open per process."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bm25 import BM25Builder, BM25Index, bm25_key
from .collection import DocStore, DocStoreWriter, count_rows, index_text, iter_collection
from .dense import DenseIndex, EmbeddingStore, embed_cached, embedding_dim, load_model, model_key
from .errors import RetrievalError
from .types import MiningSettings

Progress = Callable[[str, int, "int | None"], None]
ENCODE_CHUNK = 16384


class _DenseCollector:
    """Scan consumer: cache rows of every collection passage, encoding the uncached ones."""

    def __init__(self, store: EmbeddingStore, get_model: Callable, batch_size: int, stats: dict):
        self.store, self.get_model, self.batch_size, self.stats = store, get_model, batch_size, stats
        self.rows: list[np.ndarray] = []
        self._pending: list[str] = []

    def add(self, pid, title, text, joined: list[str]) -> None:
        self._pending.extend(joined)
        if len(self._pending) >= ENCODE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.rows.append(embed_cached(self.store, _Lazy(self.get_model), self._pending, "document",
                                          self.batch_size, self.stats))
            self._pending = []

    def finish(self) -> np.ndarray:
        self._flush()
        return np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)

    def abort(self) -> None:
        pass


class _Lazy:
    """Defers model loading until something actually has to be encoded."""

    def __init__(self, get_model: Callable):
        self._get = get_model

    def __getattr__(self, name):
        return getattr(self._get(), name)


@dataclass
class _Indexes:
    docs: DocStore
    bm25: BM25Index | None = None
    dense: DenseIndex | None = None
    model: Callable | None = None
    store: EmbeddingStore | None = None


# Lexical indexes opened in this process, by directory and meta.json identity: the LLM stages call
# the retrieval once per chunk of 500 rows, and opening a 1M-passage index (doc store, vocabulary,
# id lookups) costs ~0.5 s each time. A finished index directory is immutable, and a rebuilt one has
# a new meta.json, so the stamp tells a stale entry apart.
_OPENED: dict[tuple, _Indexes] = {}
_OPENED_MAX = 2


def _stamp(*dirs: Path) -> tuple | None:
    out = []
    for d in dirs:
        try:
            st = (d / "meta.json").stat()
        except FileNotFoundError:
            return None
        out.append((str(d.resolve()), st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _open_indexes(paths: list[Path], fp: str, index_dir: Path, settings: MiningSettings, need_bm25: bool,
                  need_dense: bool, progress: Progress, stats: dict) -> _Indexes:
    index_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = index_dir / f"docs-{fp[:16]}"
    bm25_dir = index_dir / bm25_key(fp, settings.bm25_k1, settings.bm25_b, settings.bm25_stopwords)
    key = None
    if not need_dense:  # dense indexes hold a model and an embedding store: always opened afresh
        stamp = _stamp(docs_dir, bm25_dir) if need_bm25 else _stamp(docs_dir)
        key = (need_bm25, stamp) if stamp is not None else None
        if key in _OPENED:
            if need_bm25:
                stats["bm25_index"] = "loaded"
            return _OPENED[key]
    idx = _open_indexes_uncached(paths, fp, docs_dir, bm25_dir, index_dir, settings, need_bm25, need_dense,
                                 progress, stats)
    if not need_dense:
        stamp = _stamp(docs_dir, bm25_dir) if need_bm25 else _stamp(docs_dir)
        if stamp is not None:
            while len(_OPENED) >= _OPENED_MAX:
                _OPENED.pop(next(iter(_OPENED)))
            _OPENED[(need_bm25, stamp)] = idx
    return idx


def _open_indexes_uncached(paths: list[Path], fp: str, docs_dir: Path, bm25_dir: Path, index_dir: Path,
                           settings: MiningSettings, need_bm25: bool, need_dense: bool, progress: Progress,
                           stats: dict) -> _Indexes:
    consumers: dict[str, object] = {}
    if not DocStore.is_complete(docs_dir):
        consumers["docs"] = DocStoreWriter(docs_dir)
    if need_bm25:
        if BM25Index.is_complete(bm25_dir):
            stats["bm25_index"] = "loaded"
        else:
            consumers["bm25"] = BM25Builder(bm25_dir, settings.bm25_k1, settings.bm25_b, settings.bm25_stopwords)
            stats["bm25_index"] = "built"

    model_holder: dict = {}

    def get_model():
        if "m" not in model_holder:
            model_holder["m"] = load_model(settings.model, settings.device, settings.max_seq_length)
        return model_holder["m"]

    store = None
    coll_map = None
    if need_dense:
        mdir = index_dir / f"emb-{model_key(settings.model, settings.max_seq_length)}"
        dim = None if (mdir / "meta.json").exists() else embedding_dim(get_model())
        store = EmbeddingStore(mdir, dim)
        coll_map = mdir / f"coll-{fp[:16]}.npy"
        if coll_map.exists():
            stats["dense_index"] = "loaded"
        else:
            consumers["dense"] = _DenseCollector(store, get_model, settings.batch_size, stats)
            stats["dense_index"] = "built"

    if consumers:
        t0 = time.perf_counter()
        total = count_rows(paths)
        done = 0
        try:
            for pid, title, text in iter_collection(paths):
                joined = index_text(title, text) if ("bm25" in consumers or "dense" in consumers) else None
                for name, c in consumers.items():
                    if name == "bm25":
                        c.add(joined)
                    else:
                        c.add(pid, title, text, joined)
                done += len(pid)
                progress("index", done, total)
        except BaseException:
            for c in consumers.values():
                c.abort()
            raise
        if "docs" in consumers:
            consumers["docs"].finish(fp)
        if "bm25" in consumers:
            consumers["bm25"].finish(fp)
        if "dense" in consumers:
            rows = consumers["dense"].finish()
            tmp = coll_map.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, rows)
            os.replace(tmp, coll_map)
        stats["index_seconds"] = round(time.perf_counter() - t0, 3)

    idx = _Indexes(docs=DocStore(docs_dir), model=get_model, store=store)
    if need_bm25:
        idx.bm25 = BM25Index(bm25_dir)
        if idx.bm25.num_docs != idx.docs.num_rows:
            raise RetrievalError(f"{bm25_dir}: index has {idx.bm25.num_docs} passages, collection has "
                                 f"{idx.docs.num_rows}; the fingerprint does not match the files")
    if need_dense:
        rows = np.load(coll_map)
        if len(rows) != idx.docs.num_rows:
            raise RetrievalError(f"{coll_map}: {len(rows)} rows, collection has {idx.docs.num_rows}; delete it")
        idx.dense = DenseIndex(store, rows)
    return idx
