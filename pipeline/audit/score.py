"""`infir audit score`: what the people's labels say about the judge (`audit.json`).

With several annotators, a row's "valid" is their majority, a tie counted as not valid (so a split
vote never flatters the judge); the per-question agreement counts every annotator's answer.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from pathlib import Path

from pipeline.audit.labels import Label, read_labels
from pipeline.audit.questions import QUESTIONS, judge_answer
from pipeline.audit.sample import STRATA, load_sample
from pipeline.audit.stats import cohen_kappa, weighted_share, wilson
from pipeline.fileio import sha256_file, write_json_atomic


def _valid(labels: dict[str, Label]) -> bool:
    yes = sum(lb.valid for lb in labels.values())
    return yes * 2 > len(labels)


def _agreement(rows: dict[str, dict], by_row: dict[str, dict[str, Label]]) -> dict:
    out = {}
    for qid in QUESTIONS:
        agree = n = 0
        for rid, labels in by_row.items():
            judge = judge_answer(rows[rid]["judge"], qid)
            for lb in labels.values():
                answer = lb.answers.get(qid)
                if judge is None or answer not in ("yes", "no"):
                    continue  # unsure, skipped, or a row the judge never saw (a filter rejected it)
                n += 1
                agree += (answer == "yes") == judge
        out[qid] = {"agreement": round(agree / n, 6) if n else None, "n": n}
    return out


def _kappa(by_row: dict[str, dict[str, Label]], annotators: list[str]) -> dict:
    """Cohen's kappa per question and for "valid" over the rows both of a pair answered; with more
    than two annotators, the mean over the pairs (where it is defined)."""
    found: dict[str, list[float]] = defaultdict(list)
    for a, b in combinations(annotators, 2):
        shared = [labels for labels in by_row.values() if a in labels and b in labels]
        for qid in (*QUESTIONS, "valid"):
            pairs = [(ls[a].valid, ls[b].valid) if qid == "valid" else (ls[a].answers.get(qid), ls[b].answers.get(qid))
                     for ls in shared]
            pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
            k = cohen_kappa([x for x, _ in pairs], [y for _, y in pairs])
            if k is not None:
                found[qid].append(k)
    return {q: round(sum(v) / len(v), 6) for q, v in found.items()}


def _disagree(labels: dict[str, Label]) -> bool:
    seen = {(lb.valid, tuple(sorted(lb.answers.items()))) for lb in labels.values()}
    return len(seen) > 1


def _changed_since(audit_dir: Path, sample: dict) -> list[str]:
    """A note per stage of the run whose output changed after the draw (runs/<run>/audit/<name>):
    the figures then describe the rows as they were when sampled."""
    run = audit_dir.parent.parent
    out = []
    for stage, sha in (sample.get("created_from") or {}).items():
        success = run / stage / "_SUCCESS.json"
        if not success.is_file() or sha256_file(success) != sha:
            out.append(f"{run / stage} changed since the sample was drawn: the figures describe its rows as they were")
    return out


def score(audit_dir: Path) -> tuple[dict, list[str]]:
    """The figures (audit.json's content) and the notes on skipped label lines."""
    audit_dir = Path(audit_dir)
    sample = load_sample(audit_dir)
    rows = {r["row_id"]: r for r in sample["rows"]}
    latest, notes = read_labels(audit_dir, set(rows))
    notes = _changed_since(audit_dir, sample) + notes
    by_row: dict[str, dict[str, Label]] = defaultdict(dict)
    for (rid, annotator), label in latest.items():
        by_row[rid][annotator] = label
    by_row = {rid: by_row[rid] for rid in rows if rid in by_row}  # sample order
    annotators = sorted({a for labels in by_row.values() for a in labels})
    valid = {rid: _valid(labels) for rid, labels in by_row.items()}
    strata = {}
    for s in STRATA:
        mine = [rid for rid in valid if rows[rid]["stratum"] == s]
        strata[s] = wilson(sum(valid[rid] for rid in mine), len(mine))
    # Reweighted to the labelled rows: a stratum's labelled rows stand for its whole population
    # (population / labelled), so a half-labelled stratum still counts at its true size.
    population = {s: (sample["strata"].get(s) or {}).get("population", 0) for s in STRATA}
    weights = [population[rows[rid]["stratum"]] / strata[rows[rid]["stratum"]]["n"] for rid in valid]
    reweighted = weighted_share(list(valid.values()), weights)
    covered = [s for s in STRATA if strata[s]["n"]]
    reweighted.update(population=sum(population[s] for s in covered), strata=covered,
                      method="stratified estimate; 95% interval: Wilson at Kish's effective sample size")
    out = {
        "version": 1, "name": audit_dir.name, "run": sample.get("run"), "sample_size": len(rows),
        "labelled": len(by_row), "annotators": annotators,
        "precision": strata["accepted"], "strata": strata, "questions": _agreement(rows, by_row),
        "reweighted_valid_share": reweighted,
        "kappa": _kappa(by_row, annotators) if len(annotators) >= 2 else {},
        "disagreements": [rid for rid, labels in by_row.items() if len(labels) > 1 and _disagree(labels)],
        "notes": notes,
    }
    return out, notes


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _ci(f: dict) -> str:
    return f"{f['valid']}/{f['n']} = {_pct(f['share'])} (95% CI {_pct(f['low'])} to {_pct(f['high'])})" if f["n"] else "no labelled row"


def summary_lines(a: dict) -> list[str]:
    who = ", ".join(a["annotators"]) or "nobody yet"
    lines = [f"audit {a['name']}: {a['labelled']} of {a['sample_size']} rows labelled ({who})",
             f"judge precision (accepted rows people judge valid): {_ci(a['precision'])}"]
    for s in STRATA[1:]:
        if a["strata"][s]["n"]:
            lines.append(f"false rejects, {s} (rejected rows people judge valid): {_ci(a['strata'][s])}")
    for qid, q in a["questions"].items():
        if q["n"]:
            lines.append(f"{qid}: agrees with the judge's checks on {_pct(q['agreement'])} of {q['n']} answers")
    r = a["reweighted_valid_share"]
    if r["share"] is not None:
        lines.append(f"valid rows among all judged rows, reweighted: {_pct(r['share'])} "
                     f"(about {_pct(r['low'])} to {_pct(r['high'])}; strata {', '.join(r['strata'])})")
    if a["kappa"]:
        lines.append("Cohen's kappa between annotators: " + ", ".join(f"{q} {k:.2f}" for q, k in a["kappa"].items()))
    if len(a["annotators"]) >= 2:
        lines.append(f"rows the annotators disagree on: {len(a['disagreements'])}"
                     + (f" ({', '.join(a['disagreements'][:10])}{', ...' if len(a['disagreements']) > 10 else ''})"
                        if a["disagreements"] else ""))
    return lines


def write_score(audit_dir: Path) -> tuple[dict, list[str]]:
    """Score, write audit.json, and return it with the lines to print (notes first)."""
    a, notes = score(audit_dir)
    write_json_atomic(a, Path(audit_dir) / "audit.json", fsync=True, sort_keys=False)
    return a, [f"note: {n}" for n in notes] + summary_lines(a) + [f"wrote {Path(audit_dir) / 'audit.json'}"]
