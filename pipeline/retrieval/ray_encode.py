"""Dense encoding of the collection on Ray Data (`run.executor = "ray"`, `mine.retrieval.method =
"dense" | "hybrid"`): the collection's Parquet shards are read by `ray.data`, encoded by
`map_batches` over a pool of actors (one model per actor, one GPU each when the cluster has GPUs),
the embeddings written as Parquet shards, and then appended to the run's embedding cache
(`index/emb-<model>/`), which the index is built from exactly as locally: every passage is then a
cache hit, so the index, the retrieval and its negatives are the local code's.

Each actor encodes with `dense.encode`, the local encoder; only the batches differ (Ray Data's
blocks instead of the local 16,384-passage groups), so vectors equal the local ones within float
rounding (padding differs per batch).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .collection import index_text
from .dense import EMB_FORMAT, EmbeddingStore, encode, load_model, model_key, text_key
from .errors import RetrievalError

#: Passages per Ray Data batch (one `encode` call of an actor: sorted by length inside it).
RAY_BATCH = 4096
#: Seconds the encoder pool may take to start every actor (a model load each) before work is handed out.
ACTOR_START_S = 600


class _Encoder:
    """One actor: loads the model once, encodes the batches it is given, skipping cached texts."""

    def __init__(self, model: str | None, max_seq_length: int | None, device: str, batch_size: int, store_dir: str):
        import ray  # the module imports without Ray; only actors and the driver need it

        self.model = load_model(model, device, max_seq_length)
        self.batch_size = batch_size
        self.store = EmbeddingStore(Path(store_dir)) if (Path(store_dir) / "meta.json").exists() else None
        # Ray's actor id, not the pid: actors on two nodes may share a pid (stats: which actors had work).
        self.actor_id = ray.get_runtime_context().get_actor_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        title = pc.fill_null(batch.column("title").combine_chunks(), "") if "title" in batch.column_names \
            else pa.array([""] * batch.num_rows)
        text = pc.fill_null(batch.column("text").combine_chunks(), "")
        texts = index_text(title, text)
        keys = [text_key("document", t) for t in texts]
        todo: dict[bytes, str] = {}
        cached = self.store.lookup(keys) >= 0 if self.store is not None else np.zeros(len(keys), bool)
        for k, t, c in zip(keys, texts, cached):
            if not c:
                todo.setdefault(k, t)
        vecs = encode(self.model, list(todo.values()), "document", self.batch_size)
        dim = vecs.shape[1]
        return pa.table({
            "key": pa.array(list(todo), pa.binary(32)),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1), pa.float32()), dim),
            "actor": pa.array([self.actor_id] * len(todo), pa.string()),
        })


def encode_collection(paths: list[Path], index_dir: Path, settings, fingerprint: str) -> dict:
    """Fill the embedding cache for every passage of the collection on Ray; returns stats."""
    import ray
    import ray.data

    # Absolute: Ray's workers do not share this process's working directory.
    paths = [Path(p).resolve() for p in paths]
    mdir = Path(index_dir).resolve() / f"emb-{model_key(settings.model, settings.max_seq_length)}"
    if (mdir / f"coll-{fingerprint[:16]}.npy").exists():
        return {"ray_encode": "index already built"}
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = gpus or cpus
    device = "cuda" if gpus else settings.device
    shards_dir = mdir / f".ray-{fingerprint[:16]}"
    shutil.rmtree(shards_dir, ignore_errors=True)
    if not gpus and cpus < 2:
        return {"ray_encode": "one CPU: encoded by the local index build"}
    # Actors leave one CPU free: Ray Data's file listing and read tasks each ask for a whole CPU
    # (held by the actors, the read tasks that feed them never start). An actor's torch still uses
    # its share of the cores (Ray sets its thread count).
    light = {"num_cpus": 0.1}
    # Ray Data hands blocks to whichever actor is ready first: with its default (no wait), the first
    # actor to load its model can take a small collection's every block while the others load. Waiting
    # for the whole pool spreads the work, and a cluster short of the actors' CPUs/GPUs fails clearly.
    context = ray.data.DataContext.get_current()
    wait_before, context.wait_for_min_actors_s = context.wait_for_min_actors_s, ACTOR_START_S
    try:
        ds = ray.data.read_parquet([str(p) for p in paths], num_cpus=light["num_cpus"])
        ds = ds.select_columns(_columns(paths[0]))
        # One read task per file yields one block per file, and one block feeds one actor: a collection
        # in a single file kept every other actor idle (the 100k-passage bench ran on one). Blocks of
        # one encoder batch each, split as they stream (no all-to-all), give every actor work.
        ds = ds.repartition(target_num_rows_per_block=RAY_BATCH)
        ds = ds.map_batches(
            _Encoder, batch_size=RAY_BATCH, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=1 if gpus else 0, num_cpus=0.1 if gpus else (cpus - 1) / actors,
            fn_constructor_kwargs=dict(model=settings.model, max_seq_length=settings.max_seq_length, device=device,
                                       batch_size=settings.batch_size, store_dir=str(mdir)),
        )
        ds.write_parquet(str(shards_dir), ray_remote_args=light)  # the embeddings as shards, then into the cache
    except ray.exceptions.GetTimeoutError:
        kind = "GPUs" if gpus else "CPUs"
        raise RetrievalError(f"dense encoding on Ray: the {actors} encoder actor(s) did not all start within "
                             f"{ACTOR_START_S} s; the cluster lacks the {kind} for them") from None
    finally:
        context.wait_for_min_actors_s = wait_before
    encoded, used = _append_shards(shards_dir, mdir)
    shutil.rmtree(shards_dir, ignore_errors=True)
    return {"ray_encode": f"{encoded} passages on {used} of {actors} {'GPU' if gpus else 'CPU'} actor(s)",
            "format": EMB_FORMAT}


def _columns(path: Path) -> list[str]:
    names = pq.ParquetFile(path).schema_arrow.names
    return [c for c in ("title", "text") if c in names]


def _append_shards(shards_dir: Path, mdir: Path) -> tuple[int, int]:
    """Append the shards' embeddings to the cache; returns (passages, actors that encoded some)."""
    store = None
    n = 0
    actors: set[str] = set()
    for p in sorted(shards_dir.glob("*.parquet")):
        t = pq.read_table(p)
        if t.num_rows == 0:
            continue
        actors.update(t.column("actor").to_pylist())
        vec = t.column("vector").combine_chunks()
        dim = vec.type.list_size
        vectors = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        store = store or EmbeddingStore(mdir, dim)
        store.append(t.column("key").to_pylist(), vectors)
        n += t.num_rows
    if store is not None:
        store.close()
    return n, len(actors)
