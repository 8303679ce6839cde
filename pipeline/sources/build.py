"""Sourcing: queries, passages and qrels in; one row per (query, judged positive) out (the
algorithm of the `source` stage: qrels, cleaning, dedup, decontamination, seeded sampling).

The collection is streamed once: every passage is written to `source/collection/` (later stages
mine negatives there) and only the judged positives are held in memory.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.progress import progress_bar
from pipeline.sources.hf import provenance as hf_provenance
from pipeline.sources.settings import SourceSettings
from pipeline.sources.quarantine import Quarantine
from pipeline.sources.readers import SourceReader
from pipeline.sources.text import NearDupIndex, normalize, word_count
from pipeline.sources.topics import read_topics
from pipeline.store import StageOutput, content_id, shard_name

# `line` points back into the corpus file, so a duplicate found after the pass is still reported by line.
COLLECTION_SCHEMA = pa.schema(
    [("passage_id", pa.string()), ("title", pa.string()), ("text", pa.string()), ("line", pa.int64())]
)


def _hash64(ids: list[str]) -> np.ndarray:
    import hashlib

    return np.array(
        [int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little", signed=True) for i in ids],
        dtype=np.int64,
    )


class _CollectionWriter:
    """Writes the collection in shards as it streams by, remembering only 8-byte id hashes."""

    def __init__(self, out: StageOutput, shard_rows: int):
        self.out, self.shard_rows = out, shard_rows
        self.buf: list[tuple[str, str, str, int]] = []
        self.hashes: list[np.ndarray] = []
        self.index = 0
        self.rows = 0

    def add(self, pid: str, title: str, text: str, line: int) -> None:
        self.buf.append((pid, title, text, line))
        if len(self.buf) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        ids, titles, texts, lines = zip(*self.buf)
        table = pa.table(
            {"passage_id": ids, "title": titles, "text": texts, "line": lines}, schema=COLLECTION_SCHEMA
        )
        self.out.write_shard(f"collection/{shard_name(self.index)}", table)
        self.hashes.append(_hash64(list(ids)))
        self.index += 1
        self.rows += len(self.buf)
        self.buf = []

    def duplicate_hashes(self) -> set[int]:
        if not self.hashes:
            return set()
        allh = np.concatenate(self.hashes)
        uniq, counts = np.unique(allh, return_counts=True)
        return set(uniq[counts > 1].tolist())


def _drop_duplicate_passages(out: StageOutput, dup_hashes: set[int], q: Quarantine, corpus_file: str) -> int:
    """Second pass, only when duplicates exist: keep each passage id's first occurrence."""
    seen: set[str] = set()
    dropped = 0
    for path in sorted((out.dir / "collection").glob("part-*.parquet")):
        table = pq.read_table(path)
        ids = table.column("passage_id").to_pylist()
        lines = table.column("line").to_pylist()
        keep = []
        for pid, h, line in zip(ids, _hash64(ids).tolist(), lines):
            if h in dup_hashes:
                if pid in seen:
                    q.add(corpus_file, line, f"duplicate id: passage '{pid}' already seen", "")
                    dropped += 1
                    keep.append(False)
                    continue
                seen.add(pid)
            keep.append(True)
        if not all(keep):
            out.write_shard(f"collection/{path.name}", table.filter(pa.array(keep)))
    return dropped


def build_rows(s: SourceSettings, reader: SourceReader, q: Quarantine, out: StageOutput, schema: pa.Schema) -> dict:
    """Read, clean, deduplicate, decontaminate and sample; write the rows and the collection
    through `out`; return the summary. `s.seed` is the effective seed."""
    stats: Counter[str] = Counter()
    source_name = s.name or (Path(s.path).name if s.path else (s.hf_corpus.name if s.hf_corpus else "hf"))

    # 1. qrels: which passages are judged positives of which queries.
    positives: dict[str, dict[str, tuple[str, int]]] = {}
    for r in reader.qrels():
        stats["qrels read"] += 1
        if r.score < s.min_relevance:
            stats["qrels below min_relevance"] += 1
            continue
        positives.setdefault(r.qid, {}).setdefault(r.pid, (r.file, r.line))
    needed = {pid for pids in positives.values() for pid in pids}

    # 2. one streaming pass over the corpus.
    writer = _CollectionWriter(out, s.collection_shard_rows)
    pos_text: dict[str, str] = {}
    with progress_bar("source: corpus", None) as (bar, task):
        for rec in reader.corpus():
            stats["passages read"] += 1
            text = normalize(rec.text)
            if not text:
                q.add(rec.file, rec.line, f"empty text: passage '{rec.id}'", rec.text)
                continue
            title = normalize(rec.title)
            writer.add(rec.id, title, text, rec.line)
            if rec.id in needed and rec.id not in pos_text:
                pos_text[rec.id] = text
            if stats["passages read"] % 10_000 == 0:
                bar.update(task, completed=stats["passages read"])
        writer.flush()
    dups = writer.duplicate_hashes()
    if dups:
        corpus_file = str(reader.corpus_path()) if s.format != "hf" else "hf:corpus"
        stats["duplicate passage ids"] = _drop_duplicate_passages(out, dups, q, corpus_file)
    stats["collection passages"] = writer.rows - stats["duplicate passage ids"]

    # 3. queries: normalised, validated, unique ids.
    queries: dict[str, str] = {}
    qlines: dict[str, int] = {}
    for rec in reader.queries():
        stats["queries read"] += 1
        text = normalize(rec.text)
        if not text:
            q.add(rec.file, rec.line, f"empty text: query '{rec.id}'", rec.text)
        elif rec.id in queries:
            q.add(rec.file, rec.line, f"duplicate id: query '{rec.id}' already seen", rec.text)
        else:
            queries[rec.id] = text
            qlines[rec.id] = rec.line

    # 4. qrels that name a missing query or passage are quarantined, line by line.
    candidates: dict[str, list[str]] = {}
    for qid, pids in positives.items():
        for pid, (file, line) in pids.items():
            if qid not in queries:
                q.add(file, line, f"dangling qrel: query '{qid}' not in the queries file", f"{qid} {pid}")
            elif pid not in pos_text:
                q.add(file, line, f"dangling qrel: passage '{pid}' not in the corpus", f"{qid} {pid}")
            else:
                candidates.setdefault(qid, []).append(pid)
    stats["queries without a judged positive"] = sum(1 for qid in queries if qid not in candidates)

    # 5. seeded sample; cleaning, dedup and decontamination decide as the sample is drawn.
    topics = NearDupIndex(s.decontam_threshold)
    for path in s.decontaminate:
        for t in read_topics(Path(path)):
            topics.add(t.text, f"{t.file}#{t.topic_id}/{t.field}")
    seen = NearDupIndex(s.dedup_threshold)
    order = sorted(candidates)
    random.Random(s.seed).shuffle(order)
    kept: list[tuple[str, list[str]]] = []
    qfile = str(reader.queries_path()) if s.format != "hf" else "hf:queries"
    for qid in order:
        if s.sample_queries and len(kept) >= s.sample_queries:
            stats["queries not sampled"] += 1
            continue
        text = queries[qid]
        n = word_count(text)
        if n < s.min_query_words or n > s.max_query_words:
            q.add(qfile, qlines[qid], f"query length: {n} words outside [{s.min_query_words}, {s.max_query_words}] ('{qid}')", text)
            continue
        hit = topics.find(text)
        if hit:
            q.add(qfile, qlines[qid], f"decontaminated: query '{qid}' matches evaluation topic {hit[0]} ({hit[1]:.0f})", text)
            stats["decontaminated"] += 1
            continue
        dup = seen.find(text)
        if dup:
            q.add(qfile, qlines[qid], f"duplicate query: '{qid}' repeats '{dup[0]}' ({dup[1]:.0f})", text)
            continue
        usable = []
        for pid in sorted(candidates[qid]):
            doc = pos_text[pid]
            n = word_count(doc)
            if s.min_passage_words <= n <= s.max_passage_words:
                usable.append(pid)
            else:
                file, line = positives[qid][pid]
                q.add(file, line, f"passage length: {n} words outside [{s.min_passage_words}, {s.max_passage_words}] ('{pid}')", doc)
        if not usable:
            continue  # the query has no usable positive, so it does not count towards the sample
        seen.add(text, qid)
        kept.append((qid, usable))

    # 6. rows: one per (query, judged positive).
    rows = []
    for qid, usable in sorted(kept):
        for pid in usable:
            rows.append(
                {
                    "id": content_id(source_name, qid, pid),
                    "source": source_name,
                    "query_id": qid,
                    "query_positive": queries[qid],
                    "passage_id": pid,
                    "document_positive": pos_text[pid],
                    "positive_ids": sorted(candidates[qid]),
                }
            )
    for i in range(0, len(rows), s.shard_rows):
        out.write_shard(shard_name(i // s.shard_rows), pa.Table.from_pylist(rows[i : i + s.shard_rows], schema=schema))

    summary = {
        "rows": len(rows),
        "queries kept": len(kept),
        **{f"hf {part}": hf_provenance(spec) for part, spec in
           (("corpus", s.hf_corpus), ("queries", s.hf_queries), ("qrels", s.hf_qrels)) if s.format == "hf" and spec},
        **{k: v for k, v in sorted(stats.items())},
        "quarantined": dict(sorted(q.counts.items())),
    }
    return summary


def no_rows_message(q: Quarantine, quarantine_path: Path) -> str:
    """Why a source ended empty: the most frequent quarantine reason, with its first example."""
    if not q.counts:
        return "source: 0 usable (query, positive passage) rows and nothing quarantined: are the qrels empty?"
    kind, n = q.counts.most_common(1)[0]
    first = next(r for r in q.rows if r["reason"].split(":", 1)[0] == kind)
    others = sum(q.counts.values()) - n
    return (
        f"source: 0 usable (query, positive passage) rows; main reason: {kind} ({n:,} lines, e.g. "
        f"{first['file']}:{first['line']}: {first['reason']})"
        + (f", {others:,} more for other reasons" if others else "")
        + f"; every drop is in {quarantine_path}"
    )
