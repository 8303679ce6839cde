"""Two runs side by side (e.g. before and after a prompt change): every headline figure and its delta."""

from __future__ import annotations

from html import escape

from pipeline.report import svg
from pipeline.report.html import NOTES, page, table


def _get(d: dict | None, *path):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _figures(r: dict) -> list[tuple[str, str, float | None]]:
    """(section, figure, value) of one report, in page order."""
    out: list[tuple[str, str, float | None]] = []
    f = r["funnel"]
    out += [("funnel", f"{s['step']}: rows", s["rows"]) for s in f["steps"]]
    out += [("funnel", f"{s['step']}: % of source", s["pct_of_source"]) for s in f["steps"][1:]]
    out += [("funnel", f"{k} rows", v) for k, v in f["status"].items()]
    out += [("filters", f"rejected by {x['filter']}", x["rejected"]) for x in f["filters"]]
    out += [("judge", f"failing {c['check']}", c["failed"]) for c in f["checks"]]
    c = r["cost"]
    out += [("cost", "cost USD (recorded)", c["total"]["cost_usd"]),
            ("cost", "cost USD per accepted row", c["per_accepted_row"]["cost_usd"]),
            ("cost", "input tokens", c["total"]["prompt_tokens"]),
            ("cost", "output tokens", c["total"]["completion_tokens"]),
            ("cost", "calls per accepted row", c["per_accepted_row"]["calls"])]
    if c.get("configured_list_price"):
        out += [("cost", "online USD per accepted row, configured models", c["configured_list_price"]["online_per_accepted_row"]),
                ("cost", "batch USD per accepted row, configured models", c["configured_list_price"]["batch_per_accepted_row"])]
    q = r["quality"]
    out += [("diversity", "distinct-1 (I+)", _get(q, "diversity", "distinct_1")),
            ("diversity", "distinct-2 (I+)", _get(q, "diversity", "distinct_2")),
            ("diversity", "share of rows with a near-duplicate I+", _get(q, "diversity", "near_duplicates", "share")),
            ("diversity", "share of the top opening", (_get(q, "diversity", "openings") or [{}])[0].get("share")),
            ("edit size", "words changed I- vs I+, mean", _get(q, "edit_size", "instruction", "words_changed", "mean")),
            ("edit size", "words changed Q- vs Q+, mean", _get(q, "edit_size", "query", "words_changed", "mean")),
            ("length", "HN1 / P+ words, median", _get(q, "length_ratio", "hn1", "ratio", "median")),
            ("length", "HN2 / P+ words, median", _get(q, "length_ratio", "hn2", "ratio", "median")),
            ("leakage", "share of rows leaking", _get(q, "leakage", "share"))]
    h = r.get("hardness") or {}
    out += [("hardness", "easy share", h.get("easy_share")),
            ("hardness", "HN1 above P+ share", h.get("hn1_outscores_positive_share")),
            ("hardness", "HN2 above P+ share", h.get("hn2_outscores_positive_share")),
            ("hardness", "false-negative risk share", h.get("false_negative_risk_share")),
            ("hardness", "cosine (Q+ I+) to P+, mean", _get(h, "cos_positive", "mean")),
            ("hardness", "cosine (Q+ I+) to HN1, mean", _get(h, "cos_hn1", "mean")),
            ("hardness", "cosine (Q+ I+) to HN2, mean", _get(h, "cos_hn2", "mean"))]
    return out


def compare(a: dict, b: dict) -> list[dict]:
    """Every figure of either report, with both values and b - a (None where one side lacks it)."""
    fa = {(s, n): v for s, n, v in _figures(a)}
    fb = {(s, n): v for s, n, v in _figures(b)}
    keys = list(dict.fromkeys([*fa, *fb]))
    out = []
    for s, n in keys:
        va, vb = fa.get((s, n)), fb.get((s, n))
        delta = round(vb - va, 6) if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None
        out.append({"section": s, "figure": n, "a": va, "b": vb, "delta": delta})
    return out


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.4g}"


def render_compare(a: dict, b: dict, figures: list[dict]) -> str:
    rows = []
    for x in figures:
        d = x["delta"]
        sign = "+" if d and d > 0 else ""
        # No colour for better/worse: more rows failing a check is worse, more accepted rows better.
        rows.append([escape(x["section"]), f'<span class="text">{escape(x["figure"])}</span>', _fmt(x["a"]), _fmt(x["b"]),
                     f"{sign}{_fmt(d)}" if d is not None else "—"])
    side = "".join(
        f'<div><h3>{escape(r["run"])}</h3>'
        + svg.hbars([(s["step"], s["rows"], f"{s['rows']:,} ({s['pct_of_source']}%)") for s in r["funnel"]["steps"]], width=520)
        + "</div>" for r in (a, b))
    body = (f'<section><h2>Funnel, side by side</h2><p class="note">{NOTES["funnel"]}</p><div class="grid">{side}</div></section>'
            f'<section><h2>Every figure: {escape(a["run"])} (a) vs {escape(b["run"])} (b)</h2>'
            '<p class="note">delta = b − a. Definitions: each run\'s own report.html.</p>'
            + table(["section", "figure", f"a: {a['run']}", f"b: {b['run']}", "delta (b − a)"], rows) + "</section>")
    sub = f"<b>{escape(a['run'])}</b> ({a['rows']:,} rows) vs <b>{escape(b['run'])}</b> ({b['rows']:,} rows)"
    return page(f"infir report: {a['run']} vs {b['run']}", sub, body)
