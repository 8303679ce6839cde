"""Sourcing: queries, passages and qrels in; one row per (query, judged positive) out (the
algorithm of the `source` stage: qrels, cleaning, dedup, decontamination, seeded sampling).

The collection is streamed once: every passage is written to `source/collection/` (later stages
mine negatives there) and only the judged positives are held in memory.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.progress import progress_bar
from pipeline.sources.hf import provenance as hf_provenance
from pipeline.sources.settings import SourceSettings
from pipeline.sources.quarantine import Quarantine
from pipeline.sources.readers import SourceReader
from pipeline.sources.text import NearDupIndex, bound_words, has_visible, normalize, word_count
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


@dataclass
class _Pass:
    """What one sourcing pass learns, step by step."""

    s: SourceSettings
    reader: SourceReader
    q: Quarantine
    stats: Counter = field(default_factory=Counter)
    positives: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)  # qid -> pid -> (file, line)
    pos_text: dict[str, str] = field(default_factory=dict)
    queries: dict[str, str] = field(default_factory=dict)
    qlines: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, list[str]] = field(default_factory=dict)


def build_rows(s: SourceSettings, reader: SourceReader, q: Quarantine, out: StageOutput, schema: pa.Schema) -> dict:
    """Read, clean, deduplicate, decontaminate and sample; write the rows and the collection
    through `out`; return the summary. `s.seed` is the effective seed."""
    st = _Pass(s, reader, q)
    _read_qrels(st)
    _stream_corpus(st, out)
    _read_queries(st)
    _match_qrels(st)
    kept = _sample(st)
    rows = _rows(st, kept)
    for i in range(0, len(rows), s.shard_rows):
        out.write_shard(shard_name(i // s.shard_rows), pa.Table.from_pylist(rows[i : i + s.shard_rows], schema=schema))
    return {
        "rows": len(rows),
        "queries kept": len(kept),
        **{f"hf {part}": hf_provenance(spec) for part, spec in
           (("corpus", s.hf_corpus), ("queries", s.hf_queries), ("qrels", s.hf_qrels)) if s.format == "hf" and spec},
        **{k: v for k, v in sorted(st.stats.items())},
        "quarantined": dict(sorted(q.counts.items())),
    }


def _read_qrels(st: _Pass) -> None:
    """1. qrels: which passages are judged positives of which queries."""
    for r in st.reader.qrels():
        st.stats["qrels read"] += 1
        if r.score < st.s.min_relevance:
            st.stats["qrels below min_relevance"] += 1
            continue
        st.positives.setdefault(r.qid, {}).setdefault(r.pid, (r.file, r.line))


def _stream_corpus(st: _Pass, out: StageOutput) -> None:
    """2. one streaming pass over the corpus: the collection written, positives' texts kept."""
    s, q, stats = st.s, st.q, st.stats
    needed = {pid for pids in st.positives.values() for pid in pids}
    writer = _CollectionWriter(out, s.collection_shard_rows)
    with progress_bar("source: corpus", None) as (bar, task):
        for rec in st.reader.corpus():
            stats["passages read"] += 1
            text = _bounded(normalize(rec.text), rec, s, q, stats)
            if text is None:
                continue
            title = normalize(rec.title)
            writer.add(rec.id, title, text, rec.line)
            if rec.id in needed and rec.id not in st.pos_text:
                st.pos_text[rec.id] = text
            if stats["passages read"] % 10_000 == 0:
                bar.update(task, completed=stats["passages read"])
        writer.flush()
    dups = writer.duplicate_hashes()
    if dups:
        corpus_file = str(st.reader.corpus_path()) if s.format != "hf" else "hf:corpus"
        stats["duplicate passage ids"] = _drop_duplicate_passages(out, dups, q, corpus_file)
    stats["collection passages"] = writer.rows - stats["duplicate passage ids"]


def _bounded(text: str, rec, s: SourceSettings, q: Quarantine, stats: Counter) -> str | None:
    """A passage as it may enter a prompt (every passage the LLM stages show comes from here), or None
    when it is quarantined: empty to the eye, or over `prompt_passage_words` in quarantine mode."""
    if not has_visible(text):
        q.add(rec.file, rec.line, f"empty text: passage '{rec.id}' (empty after cleaning)", rec.text)
        return None
    cut = bound_words(text, s.prompt_passage_words)
    if cut is None:
        return text
    if s.long_passages == "quarantine":
        q.add(rec.file, rec.line, f"passage too long: '{rec.id}' over {s.prompt_passage_words} words", text)
        return None
    stats["passages truncated"] += 1
    return cut


def _read_queries(st: _Pass) -> None:
    """3. queries: normalised, validated, unique ids."""
    for rec in st.reader.queries():
        st.stats["queries read"] += 1
        text = normalize(rec.text)
        if not has_visible(text):
            st.q.add(rec.file, rec.line, f"empty text: query '{rec.id}' (empty after cleaning)", rec.text)
        elif rec.id in st.queries:
            st.q.add(rec.file, rec.line, f"duplicate id: query '{rec.id}' already seen", rec.text)
        else:
            st.queries[rec.id] = text
            st.qlines[rec.id] = rec.line


def _match_qrels(st: _Pass) -> None:
    """4. qrels that name a missing query or passage are quarantined, line by line."""
    for qid, pids in st.positives.items():
        for pid, (file, line) in pids.items():
            if qid not in st.queries:
                st.q.add(file, line, f"dangling qrel: query '{qid}' not in the queries file", f"{qid} {pid}")
            elif pid not in st.pos_text:
                st.q.add(file, line, f"dangling qrel: passage '{pid}' not in the corpus", f"{qid} {pid}")
            else:
                st.candidates.setdefault(qid, []).append(pid)
    st.stats["queries without a judged positive"] = sum(1 for qid in st.queries if qid not in st.candidates)


def _sample(st: _Pass) -> list[tuple[str, list[str]]]:
    """5. seeded sample; cleaning, dedup and decontamination decide as the sample is drawn, so a
    sample of K queries is the first K of any larger one (same seed)."""
    s, q = st.s, st.q
    topics = NearDupIndex(s.decontam_threshold)
    for path in s.decontaminate:
        for t in read_topics(Path(path)):
            topics.add(t.text, f"{t.file}#{t.topic_id}/{t.field}")
    seen = NearDupIndex(s.dedup_threshold)
    order = sorted(st.candidates)
    random.Random(s.seed).shuffle(order)
    kept: list[tuple[str, list[str]]] = []
    qfile = str(st.reader.queries_path()) if s.format != "hf" else "hf:queries"
    for qid in order:
        if s.sample_queries and len(kept) >= s.sample_queries:
            st.stats["queries not sampled"] += 1
            continue
        text = st.queries[qid]
        reason = _query_rejection(st, qid, text, topics, seen)
        if reason:
            q.add(qfile, st.qlines[qid], reason, text)
            continue
        usable = _usable_positives(st, qid)
        if not usable:
            continue  # the query has no usable positive, so it does not count towards the sample
        seen.add(text, qid)
        kept.append((qid, usable))
    return kept


def _query_rejection(st: _Pass, qid: str, text: str, topics: NearDupIndex, seen: NearDupIndex) -> str | None:
    s = st.s
    n = word_count(text)
    if n < s.min_query_words or n > s.max_query_words:
        return f"query length: {n} words outside [{s.min_query_words}, {s.max_query_words}] ('{qid}')"
    hit = topics.find(text)
    if hit:
        st.stats["decontaminated"] += 1
        return f"decontaminated: query '{qid}' matches evaluation topic {hit[0]} ({hit[1]:.0f})"
    dup = seen.find(text)
    if dup:
        return f"duplicate query: '{qid}' repeats '{dup[0]}' ({dup[1]:.0f})"
    return None


def _usable_positives(st: _Pass, qid: str) -> list[str]:
    s, usable = st.s, []
    for pid in sorted(st.candidates[qid]):
        doc = st.pos_text[pid]
        n = word_count(doc)
        if s.min_passage_words <= n <= s.max_passage_words:
            usable.append(pid)
        else:
            file, line = st.positives[qid][pid]
            st.q.add(file, line, f"passage length: {n} words outside [{s.min_passage_words}, {s.max_passage_words}] ('{pid}')", doc)
    return usable


def _rows(st: _Pass, kept: list[tuple[str, list[str]]]) -> list[dict]:
    """6. rows: one per (query, judged positive)."""
    s = st.s
    source_name = s.name or (Path(s.path).name if s.path else (s.hf_corpus.name if s.hf_corpus else "hf"))
    return [
        {
            "id": content_id(source_name, qid, pid),
            "source": source_name,
            "query_id": qid,
            "query_positive": st.queries[qid],
            "passage_id": pid,
            "document_positive": st.pos_text[pid],
            "positive_ids": sorted(st.candidates[qid]),
        }
        for qid, usable in sorted(kept)
        for pid in usable
    ]


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
