"""One self-contained HTML page: styles, script, charts and rows inline; nothing is fetched."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from pipeline.report import svg

_HERE = Path(__file__).resolve().parent
NOTES = {
    "funnel": "Rows left after each step, as a share of the source rows and of the step before. A failure "
              "(retries exhausted, an invalid answer: the row's <code>&lt;stage&gt;_error</code>) is counted apart "
              "from a rejection (a filter or a judge check said no): failures are work to retry, rejections are the bar.",
    "cost": "From each row's own usage record (cache hits priced at what the call cost when made), so resumes "
            "and reruns do not change it. Output tokens include reasoning tokens unless the split is recorded. "
            "Online and batch columns price the same tokens at list prices (batch: the price table's discount).",
    "distinct": "distinct-n: distinct word n-grams / all word n-grams over every I+ (1.0: nothing repeats). Low "
                "distinct-2 with a dominant opening means the generator follows one template.",
    "near_dup": "Rows whose I+ has a near-duplicate in another row: Jaccard similarity of word-bigram sets at or above "
                "the threshold (MinHash candidates, each checked exactly).",
    "edit": "Word-level Levenshtein distance (words inserted, deleted or replaced) of I- from I+ and of Q- from Q+. "
            "The negatives should be minimal edits: large distances mean a rewritten text, 0 means no change.",
    "ratio": "Words of HN1 (and HN2) / words of P+. Far from 1, length alone tells the negative apart.",
    "leak": "Longest run of consecutive words that I+ shares with P+; a row leaks when the run reaches n words "
            "(the instruction quotes the passage, so a model can match strings instead of following it).",
    "hardness": "Cosine similarity under the bundled base model (all-MiniLM-L6-v2) of (Q+ I+) to P+, HN1 and HN2. "
                "Easy: the base model already ranks P+ above both HN1 and HN2, so the row teaches it little. "
                "False-negative risk: the best-ranked retrieved negative scores above P+ (it may answer the query).",
}


def _pct(x) -> str:
    return "" if x is None else f"{x:.1f}%"


def _share(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _usd(x) -> str:
    return "n/a" if x is None else f"${x:,.5f}" if x < 1 else f"${x:,.2f}"


def _int(x) -> str:
    return "not recorded" if x is None else f"{x:,}"


def table(head: list[str], rows: list[list], cls: str = "") -> str:
    h = "".join(f"<th>{escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{h}</tr>{body}</table>'


def kpis(items: list[tuple[str, str]]) -> str:
    return '<div class="kpis">' + "".join(f'<div><b class="big">{v}</b><span>{escape(k)}</span></div>' for k, v in items) + "</div>"


def funnel_section(f: dict) -> str:
    steps = svg.hbars([(s["step"], s["rows"], f"{s['rows']:,} ({_pct(s['pct_of_source'])})") for s in f["steps"]])
    st = f["status"]
    parts = [f'<section id="funnel"><h2>Funnel</h2><p class="note">{NOTES["funnel"]}</p>', steps,
             kpis([("accepted", f"{st['accepted']:,}"), ("rejected", f"{st['rejected']:,}"),
                   ("failed (not rejected)", f"{st['failed']:,}")] + ([("pending", f"{st['pending']:,}")] if st["pending"] else []))]
    parts.append('<div class="grid"><div>')
    if f["filters"]:
        parts.append("<h3>Rejected by filters</h3>" + table(["filter", "rows", "% of candidates"],
                     [[escape(x["filter"]), f"{x['rejected']:,}", _pct(x["pct_of_candidates"])] for x in f["filters"]]))
    else:
        parts.append('<h3>Filters</h3><p class="muted">no row rejected by a filter</p>')
    parts.append("</div><div>")
    if f["checks"]:
        parts.append("<h3>Judge checks</h3>" + table(["check", "rows failing", "judged", "pass rate"],
                     [[escape(c["check"]), f"{c['failed']:,}", f"{c['judged']:,}", _share(c["pass_rate"])] for c in f["checks"]]))
    parts.append("</div></div>")
    parts.append("<h3>Failures (apart from rejections)</h3>" + (
        table(["stage", "kind", "rows"], [[escape(x["stage"]), escape(x["kind"]), f"{x['rows']:,}"] for x in f["failures"]])
        if f["failures"] else '<p class="muted">no failed rows</p>'))
    return "".join(parts) + "</section>"


def _prices_cell(at: dict | None) -> str:
    return f"{_usd(at['online_usd'])} / {_usd(at['batch_usd'])}" if at else "no price"


def cost_section(c: dict, accepted: int) -> str:
    rows = []
    configured = any(s["at_configured_model"] for s in c["stages"])
    for s in c["stages"]:
        vis = None if s["reasoning_tokens"] is None else s["completion_tokens"] - s["reasoning_tokens"]
        row = [s["stage"], escape(s["model"] or ""), s["mode"], f"{s['calls']:,}", f"{s['prompt_tokens']:,}",
               _int(s["cached_tokens"]), _int(vis) if vis is not None else f"{s['completion_tokens']:,} (all)",
               _int(s["reasoning_tokens"]), _usd(s["cost_usd"]), _usd(s["cost_usd"] / accepted) if accepted else "n/a",
               f"{_int(s['last_run_http_calls'])} / {_int(s['last_run_cache_hits'])}", _prices_cell(s["at_recorded_model"])]
        if configured:
            at = s["at_configured_model"]
            row.append(f"{escape(at['model'])}: {_prices_cell(at)}" if at else "")
        rows.append(row)
    t, per = c["total"], c["per_accepted_row"]
    rows.append(["<b>total</b>", "", "", f"{t['calls']:,}", f"{t['prompt_tokens']:,}", _int(t["cached_tokens"]),
                 f"{t['completion_tokens']:,}", _int(t["reasoning_tokens"]), f"<b>{_usd(t['cost_usd'])}</b>",
                 f"<b>{_usd(per['cost_usd'])}</b>", "", ""] + ([""] if configured else []))
    head = ["stage", "model", "mode", "calls", "input tok", "cached input", "visible output", "reasoning",
            "cost (recorded)", "per accepted row", "last run HTTP / cache hits", "online / batch price"]
    if configured:
        head.append("online / batch at the configured model")
    items = [("per accepted row (recorded)", _usd(per["cost_usd"])),
             ("tokens per accepted row", "n/a" if per["prompt_tokens"] is None else f"{per['prompt_tokens'] + per['completion_tokens']:,.0f}"),
             ("calls per accepted row", "n/a" if per["calls"] is None else f"{per['calls']:.2f}")]
    cl = c.get("configured_list_price")
    if cl:
        items += [("per accepted row at the configured models, online", _usd(cl["online_per_accepted_row"])),
                  ("… in batch", _usd(cl["batch_per_accepted_row"]))]
    return (f'<section id="cost"><h2>Cost</h2><p class="note">{NOTES["cost"]} Prices: {escape(c["price_table"])}.</p>'
            + kpis(items) + table(head, rows) + "</section>")


def quality_section(q: dict, h: dict | None) -> str:
    if not q.get("rows"):
        return '<section id="quality"><h2>Quality</h2><p class="muted">no generated instructions yet</p></section>'
    d, e, r, lk = q["diversity"], q["edit_size"], q["length_ratio"], q["leakage"]
    nd = d["near_duplicates"]
    parts = [f'<section id="quality"><h2>Quality (over all {q["rows"]:,} rows with an I+)</h2>',
             '<div class="grid"><div><h3>Instruction diversity</h3>', f'<p class="note">{NOTES["distinct"]}</p>',
             kpis([("distinct-1", f"{d['distinct_1']:.3f}"), ("distinct-2", f"{d['distinct_2']:.3f}"),
                   ("rows with a near-duplicate I+", _share(nd["share"]))]),
             "<h3>Most frequent openings (first 3 words)</h3>",
             svg.hbars([(o["opening"], o["rows"], f"{o['rows']:,} ({_share(o['share'])})") for o in d["openings"]], width=520),
             "</div><div><h3>Instruction kind</h3>",
             table(["kind", "rows", "share"], [[escape(k["value"]), f"{k['rows']:,}", _share(k["share"])] for k in d["kinds"]]),
             f'<h3>Near-duplicate instructions</h3><p class="note">{NOTES["near_dup"]}</p>',
             f'<p>{nd["rows_with_near_duplicate"]:,} rows in {nd["groups"]:,} groups (threshold {nd["threshold"]})</p>',
             table(["rows", "example"], [[f"{g['rows']:,}", f'<span class="text">{escape(g["example"])}</span>'] for g in nd["largest"]]),
             "</div></div>",
             f'<div class="grid"><div><h3>Edit size of the negatives</h3><p class="note">{NOTES["edit"]}</p>',
             svg.histograms([("I- vs I+", e["instruction"]["hist"]), ("Q- vs Q+", e["query"]["hist"])], "words changed"),
             table(["pair", "mean", "median", "p90", "unchanged rows"],
                   [[k, f"{v['words_changed']['mean']}", f"{v['words_changed']['median']}", f"{v['words_changed']['p90']}",
                     f"{v['unchanged_rows']:,}"] for k, v in (("I- vs I+", e["instruction"]), ("Q- vs Q+", e["query"]))]),
             f'</div><div><h3>Length of the hard negatives</h3><p class="note">{NOTES["ratio"]}</p>',
             svg.histograms([("HN1 / P+", r["hn1"]["hist"]), ("HN2 / P+", r["hn2"]["hist"])], "length ratio (clipped at 3)"),
             table(["ratio", "mean", "median", "p10", "p90"],
                   [[k, *(f"{v['ratio'][s]}" for s in ("mean", "median", "p10", "p90"))] for k, v in (("HN1 / P+", r["hn1"]), ("HN2 / P+", r["hn2"]))]),
             f'</div><div><h3>Leakage: I+ quoting P+</h3><p class="note">{NOTES["leak"]}</p>',
             kpis([(f"rows sharing ≥ {lk['n']} consecutive words", f"{lk['rows_leaking']:,} ({_share(lk['share'])})"),
                   ("median longest shared run", f"{lk['longest_run']['median']}")]),
             svg.histograms([("longest shared run", lk["hist"])], "words"), "</div>",
             "<div>" + hardness_block(h) + "</div></div></section>"]
    return "".join(parts)


def hardness_block(h: dict | None) -> str:
    if not h:
        return '<h3>Hardness</h3><p class="muted">not computed (--no-hardness, or the run has no negatives yet)</p>'
    if not h["rows"]:
        return '<h3>Hardness</h3><p class="muted">no row has all of Q+, I+, P+, HN1, HN2</p>'
    if not h["sampled"]:
        over = f"all {h['rows']:,} rows"
    else:
        why = (f"embedding stopped at the {h['budget_s']:.0f} s time budget (--hardness-seconds)"
               if h["stopped_by_time_budget"] else "at most --hardness-rows rows are embedded")
        over = (f"a seeded random sample of {h['rows']:,} of {h['total_rows']:,} rows (seed {h['seed']}): embedding every "
                f"row does not fit the report's time ({why})")
    return (f'<h3>Hardness under the base model</h3><p class="note">{NOTES["hardness"]} Over {over}.</p>'
            + kpis([("easy (P+ above HN1 and HN2)", _share(h["easy_share"])),
                    ("HN1 above P+", _share(h["hn1_outscores_positive_share"])),
                    ("HN2 above P+", _share(h["hn2_outscores_positive_share"])),
                    ("false-negative risk", _share(h["false_negative_risk_share"]))])
            + svg.histograms([("P+", h["hist_positive"]), ("HN1", h["hist_hn1"]), ("HN2", h["hist_hn2"])], "cosine to (Q+ I+)")
            + table(["cosine to (Q+ I+)", "mean", "median", "p10", "p90"],
                    [[k, *(f"{v[s]}" for s in ("mean", "median", "p10", "p90"))]
                     for k, v in (("P+", h["cos_positive"]), ("HN1", h["cos_hn1"]), ("HN2", h["cos_hn2"]),
                                  ("best retrieved negative", h["cos_best_mined"]))]))


def _rate(r: dict) -> str:
    if r.get("rate") is None:
        return f"n/a ({r['k']}/{r['n']})"
    lo, hi = r["interval"]
    return f"{r['rate']:.1%} [{lo:.1%}, {hi:.1%}] ({r['k']}/{r['n']})"


def audit_block(a: dict) -> str:
    """The human audits (`infir audit score`), or that none was made."""
    from pipeline.report.audit import NONE_MADE, STRATUM_DOC, estimate_text, share_text

    parts = ["<h3>Human audit</h3>"] + [f'<p class="muted">warning: {escape(w)}</p>' for w in a["warnings"]]
    if not a["audits"]:
        return "".join(parts) + f'<p class="muted">{escape(NONE_MADE)} Make one: <code>infir audit runs/&lt;run&gt;</code>.</p>'
    for x in a["audits"]:
        parts.append(f'<p class="note">Audit <b>{escape(x["name"])}</b>: {x["labelled"]:,} of {x["sample_size"]:,} sampled '
                     f'rows labelled by {x["annotators"]} annotator(s). Shares of labelled rows '
                     'people judged valid, with Wilson 95% intervals.</p>')
        parts.append(kpis([("judge's precision (accepted rows valid)", escape(share_text(x["precision"]))),
                           (f"valid rows among the {x['reweighted_valid_share'].get('population') or 0:,} rows of the "
                            "sampled strata (reweighted)", escape(estimate_text(x["reweighted_valid_share"])))]))
        parts.append(table(["stratum", "judged valid by people"],
                           [[escape(STRATUM_DOC.get(k, k)), escape(share_text(v))] for k, v in x["strata"].items()]))
        if x["questions"]:
            kappa = ["Cohen's kappa"] if x["kappa"] else []  # two annotators or more on the same rows
            parts.append(table(["question", "agreement with the judge's checks", "answers", *kappa],
                               [[escape(q), _share(v["agreement"]), f"{v['n']:,}",
                                 *([f"{x['kappa'][q]:.3f}" if q in x["kappa"] else ""] if kappa else [])]
                                for q, v in x["questions"].items()]))
            if "valid" in x["kappa"]:
                parts.append(f'<p class="note">Cohen\'s kappa of "valid overall": {x["kappa"]["valid"]:.3f}</p>')
    return "".join(parts)


def calibration_block(c: dict | None) -> str:
    """The cascade's calibration (`infir calibrate-judge`), or that none was made."""
    if c is None:
        return ('<h3>Judge cascade calibration</h3><p class="muted">No judge calibration was made '
                "(<code>infir calibrate-judge</code> measures the cascade's first judge and recommends its threshold).</p>")
    at = c["at_recommended"]
    against = (f"people's labels (audit {escape(c['labels'] or '')})" if c["against"] == "labels"
               else f"the reasoning judge ({escape(c['judge_model'] or 'n/a')})")
    sample = "labelled rows" if c["against"] == "labels" else f"rows (seed {c['seed']})"
    note = (f"First judge {escape(c['first_model'] or 'n/a')} against {against} on {c['rows']:,} {sample}; confidence "
            f"from {escape(', '.join(c['confidence_sources']) or 'n/a')}. The recommended threshold is the one with "
            f"the largest saving whose false-reject rate is at most {c['max_false_reject']:.0%}.")
    if c["against"] == "labels":
        note += (" The saving is reweighted to the run by the audit's sampling weights; people answer four questions, "
                 "not the judge's checks, so there are no per-check figures.")
    if c["configured_threshold"] is not None:
        note += f" The run's config sets verify.cascade_threshold = {c['configured_threshold']:g}, which verify uses instead."
    elif not c["cascade_on"]:
        note += " The cascade is off in this run's config (verify.cascade = false)."
    return ("<h3>Judge cascade calibration</h3>" + f'<p class="note">{note}</p>'
            + kpis([("recommended threshold", f"{at['threshold']:g}"), ("judge requests saved", _share(at["saving"])),
                    ("false rejects", escape(_rate(at["false_reject"]))), ("false accepts", escape(_rate(at["false_accept"])))])
            + (table(["check", "false reject", "false accept"],
                     [[escape(k), escape(_rate(v["false_reject"])), escape(_rate(v["false_accept"]))]
                      for k, v in c["per_check"].items()]) if c["per_check"] else ""))


def judge_section(report: dict) -> str:
    return ('<section id="judge"><h2>Checking the judge</h2><p class="note">Every figure above comes from the LLM judge. '
            "These measure it: people's labels of a sample, and the cascade's first judge against its reference.</p>"
            + audit_block(report["audit"]) + calibration_block(report["calibration"]) + "</section>")


def browser_section(b: dict) -> str:
    held = (f"a seeded sample of {b['rows']:,} of {b['of']:,} rows (seed {b['seed']}; rejected and failed rows "
            "over-represented); the measures above cover every row" if b["sampled"] else f"all {b['rows']:,} rows")
    return f"""<section id="browser"><h2>Rows</h2><p class="note">The browser holds {held}. Marked words: what I- changes
in I+ and Q- in Q+. Click a row for its seven fields, the judge's verdicts and reasons, and its cost.</p>
<div class="controls"><input id="f-search" type="search" placeholder="search text, id, reasons">
<select id="f-status"><option value="all">all</option><option value="accepted">accepted</option>
<option value="rejected">rejected</option><option value="failed">failed</option><option value="pending">pending</option></select>
<select id="f-reason"><option value="any">any failed check or filter</option></select>
<span id="match-count"></span></div><div id="rows"></div><button id="more" hidden>show more</button></section>"""


def _json_script(id_: str, data) -> str:
    # "<" escaped as \\u003c: passage text can never close the script element.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{id_}">{text}</script>'


def scripts(*names: str, folder: Path = _HERE) -> str:
    """The shared field helpers (fields.js) and then `names` from `folder`, as one script's text."""
    parts = [_HERE / "fields.js"] + [folder / n for n in names]
    return "\n".join(p.read_text(encoding="utf-8") for p in parts)


def page(title: str, subtitle: str, body: str, rows: list[dict] | None = None) -> str:
    css = (_HERE / "page.css").read_text(encoding="utf-8")
    script = ""
    if rows is not None:
        script = _json_script("rows-data", rows) + "<script>" + scripts("page.js") + "</script>"
    # The CSP forbids every fetch: the page works offline from disk and cannot leak what it shows.
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
            f'script-src \'unsafe-inline\'; img-src data:">'
            f"<title>{escape(title)}</title><style>{css}</style></head><body>"
            f"<header><h1>{escape(title)}</h1><p>{subtitle}</p></header><main>{body}</main>{script}</body></html>")


def render_report(report: dict, rows: list[dict]) -> str:
    sub = (f"run <b>{escape(report['run'])}</b> · stages: {escape(', '.join(report['stages']))} · "
           f"{report['rows']:,} candidate rows (from {escape(report['row_stage'] or 'none')}) · made {escape(report['created_at'])}")
    body = (funnel_section(report["funnel"]) + cost_section(report["cost"], report["funnel"]["status"]["accepted"])
            + judge_section(report) + quality_section(report["quality"], report.get("hardness"))
            + browser_section(report["browser"]))
    return page(f"infir report: {report['run']}", sub, body, rows)
