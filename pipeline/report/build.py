"""Assemble a run's report: every figure (for report.json) and the rows the browser holds."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.report import measures as m
from pipeline.report.audit import run_audits
from pipeline.report.calibration import judge_calibration
from pipeline.report.browse import browser_rows, sample_positions
from pipeline.report.cost import cost
from pipeline.report.funnel import funnel, row_reasons
from pipeline.report.load import FIELDS, RunData, load_run, mined_negatives_of

REPORT_FORMAT = 1


@dataclass
class ReportOptions:
    browse_rows: int = 2000  # rows the page's browser holds (a seeded sample beyond that)
    # Rows embedded for the hardness measures (a seeded sample beyond that): MiniLM on 2 CPU cores
    # encodes a few dozen passages a second, so every row of a 100k run would take hours.
    hardness_rows: int = 500
    hardness_seconds: float = 30.0  # embedding stops after this (0: no limit); see hardness.hardness
    mined_per_row: int = 1  # best-ranked retrieved negatives embedded per row (false-negative risk)
    leak_ngram: int = 6  # an I+ sharing this many consecutive words with P+ counts as leaking
    near_duplicate: float = 0.7  # word-bigram Jaccard above which two instructions are near-duplicates
    seed: int = 13
    hardness: bool = True


def _present(run: RunData, name: str) -> list[str | None]:
    return run.column(name) or [None] * (run.table.num_rows if run.table is not None else 0)


def quality(run: RunData, o: ReportOptions) -> dict:
    """The text measures, over every row that has the fields each one needs."""
    col = {f: _present(run, f) for f in FIELDS}
    # Each field tokenized once: the measures below reuse P+ three times, I+ four times.
    tok = {f: [m.tokens(t) if t else None for t in col[f]] for f in FIELDS if not f.startswith("hard_negative")}
    ip_rows = [i for i, t in enumerate(col["instruction_positive"]) if t]
    if not ip_rows:
        return {"rows": 0}
    ip = [col["instruction_positive"][i] for i in ip_rows]
    ip_tok = [tok["instruction_positive"][i] for i in ip_rows]

    def pairs(a: str, b: str) -> tuple[list[list[str]], list[list[str]]]:
        both = [(x, y) for x, y in zip(tok[a], tok[b]) if x is not None and y is not None]
        return [x for x, _ in both], [y for _, y in both]

    out: dict = {"rows": len(ip)}
    out["diversity"] = {
        "distinct_1": m.distinct_n(ip_tok, 1),
        "distinct_2": m.distinct_n(ip_tok, 2),
        "openings": m.openings(ip_tok),
        "kinds": m.distribution([k for k, t in zip(_present(run, "instruction_kind"), col["instruction_positive"]) if t]),
        "near_duplicates": m.near_duplicates(ip, o.near_duplicate, seed=o.seed, token_lists=ip_tok),
    }
    edits = {}
    for name, (a, b) in {"instruction": ("instruction_positive", "instruction_negative"),
                         "query": ("query_positive", "query_negative")}.items():
        x, y = pairs(a, b)
        d = m.token_edit_distances(x, y)
        edits[name] = {"words_changed": m.summary(d), "hist": m.histogram(d, bins=min(20, max(d, default=0) + 1), lo=0),
                       "unchanged_rows": sum(1 for v in d if v == 0)}
    out["edit_size"] = edits
    ratios = {}
    for name, hn in (("hn1", "hard_negative_document_1"), ("hn2", "hard_negative_document_2")):
        # Whitespace words: the two passage columns need no tokenizing pass of their own.
        both = [(len(x.split()), len(y.split())) for x, y in zip(col[hn], col["document_positive"]) if x and y]
        r = [round(a / b, 4) if b else None for a, b in both]
        ratios[name] = {"ratio": m.summary(r), "hist": m.histogram(r, bins=20, lo=0.0, hi=3.0)}
    out["length_ratio"] = ratios
    x, p = pairs("instruction_positive", "document_positive")
    leak = m.leakage(x, p, o.leak_ngram)
    leak.pop("runs")
    out["leakage"] = leak
    return out


def _hardness(run: RunData, o: ReportOptions, model=None) -> dict | None:
    need = ("query_positive", "instruction_positive", "document_positive",
            "hard_negative_document_1", "hard_negative_document_2")
    if not o.hardness or run.table is None or any(c not in run.table.column_names for c in need):
        return None
    from pipeline.report.hardness import hardness

    cols = {c: run.column(c) for c in need}
    ok = [i for i in range(run.table.num_rows) if all(cols[c][i] for c in need)]
    # A seeded random order, cut at hardness_rows: any prefix of it (the time budget may stop the
    # embedding early) is a seeded random sample.
    order = [int(i) for i in np.random.default_rng(o.seed).permutation(ok)[:o.hardness_rows]]
    rows = [{**{c: cols[c][i] for c in need}, "pos": i} for i in order]
    mined = mined_negatives_of(run, order, o.mined_per_row) if o.mined_per_row else {}
    out = hardness(rows, mined, total_rows=len(ok), model=model, budget_s=o.hardness_seconds or None)
    out["positions"] = order[:out["rows"]]
    out["seed"] = o.seed
    return out


def build(run_path: Path, o: ReportOptions | None = None, model=None) -> tuple[dict, list[dict]]:
    """(report figures, browser rows) of one run."""
    o = o or ReportOptions()
    gc.disable()  # millions of short-lived token lists: collection passes cost a third of the time
    try:
        return _build(run_path, o, model)
    finally:
        gc.enable()


def _build(run_path: Path, o: ReportOptions, model) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    run = load_run(run_path)
    reasons = row_reasons(run)
    fun = funnel(run, reasons)
    report = {
        "format": REPORT_FORMAT,
        "run": run.name,
        "created_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "stages": run.stages,
        "row_stage": run.row_stage,
        "rows": len(reasons),
        # Which verify output the report describes: `infir write` copies it only if it still matches.
        "verify_fingerprint": _fingerprint(run),
        "funnel": fun,
        "cost": cost(run, fun["status"]["accepted"]),
        "quality": quality(run, o),
        # What checks the judge: people's audits of this verify output, and the cascade's calibration.
        "audit": _audits(run),
        "calibration": judge_calibration(run.path, run.config),
        "options": {k: v for k, v in o.__dict__.items()},
    }
    hard = _hardness(run, o, model)
    positions = sample_positions([r["status"] for r in reasons], o.browse_rows, o.seed)
    rows = browser_rows(run, reasons, positions, hard)
    if hard is not None:
        hard.pop("per_row")
        hard.pop("positions")
    report["hardness"] = hard
    report["browser"] = {"rows": len(rows), "of": len(reasons), "sampled": len(rows) < len(reasons), "seed": o.seed}
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report, rows


def _audits(run: RunData) -> dict:
    audits, warnings = run_audits(run.path)
    return {"audits": audits, "warnings": warnings}


def _fingerprint(run: RunData) -> str | None:
    from pipeline.store import stage_fingerprint

    s = run.success.get("verify")
    return stage_fingerprint(s) if s else None
