"""The labelling page: one self-contained HTML document (styles, script, rows inline; nothing is
fetched but the answers it posts back to the server that served it).

It reuses the report's look (pipeline/report/page.css) and its I+/I- and Q+/Q- word differences
(`word_diff`), so a reviewer sees the same marks in both. The judge's verdicts are embedded only
for the rows this annotator has answered (blind labelling); the server returns a row's verdicts in
the answer to its POST.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from pipeline.audit.questions import QUESTIONS
from pipeline.report.browse import word_diff
from pipeline.report.html import scripts

_HERE = Path(__file__).resolve().parent
_REPORT_CSS = _HERE.parent / "report" / "page.css"


def _json_script(id_: str, data) -> str:
    # "<" escaped so that no text in a row can close the script element
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    return f'<script type="application/json" id="{id_}">{text}</script>'


def page_data(sample: dict, annotator: str, labels: dict[str, dict], api: str) -> dict:
    rows = []
    for r in sample["rows"]:
        f = r["row"]
        ip, ineg = word_diff(f.get("i_plus") or "", f.get("i_minus") or "")
        qp, qneg = word_diff(f.get("q_plus") or "", f.get("q_minus") or "")
        rows.append({"row_id": r["row_id"], "fields": {k: f.get(k) for k in ("q_plus", "i_plus", "p_plus", "i_minus", "hn1", "q_minus", "hn2")},
                     "diff": {"i_plus": ip, "i_minus": ineg, "q_plus": qp, "q_minus": qneg}})
    labels = {rid: {k: lb[k] for k in ("answers", "valid", "note")} for rid, lb in labels.items()}
    judge = {r["row_id"]: r["judge"] for r in sample["rows"] if r["row_id"] in labels}
    questions = [{"id": q, "text": text, "checks": list(checks)} for q, (text, checks) in QUESTIONS.items()]
    return {"annotator": annotator, "api": api, "questions": questions, "rows": rows, "labels": labels, "judge": judge}


def render_page(sample: dict, name: str, annotator: str, labels: dict[str, dict], api: str) -> str:
    css = _REPORT_CSS.read_text(encoding="utf-8") + (_HERE / "page.css").read_text(encoding="utf-8")
    script = (_json_script("audit-data", page_data(sample, annotator, labels, api))
              + "<script>" + scripts("page.js", folder=_HERE) + "</script>")
    title = f"infir audit: {sample.get('run')} / {name}"
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'; img-src data:\">"
            '<meta name="referrer" content="no-referrer">'
            f"<title>{escape(title)}</title><style>{css}</style></head><body>"
            f'<header><h1>{escape(title)}</h1><p>annotator <b id="annotator">{escape(annotator)}</b> · '
            '<span id="progress"></span></p></header><main>'
            '<section id="row"><div class="rowhead"><span id="pos"></span><span class="rid" id="rid"></span>'
            '<span id="state"></span></div><div class="fields" id="fields"></div></section>'
            '<section id="ask"><div id="questions"></div>'
            '<div class="q" id="valid-q"><span class="qnum">v/x</span><span class="qtext">valid overall</span>'
            '<span class="opts"><button data-valid="1">valid (v)</button><button data-valid="0">invalid (x)</button></span></div>'
            '<div class="note-row"><label for="note">note (c)</label><input id="note" autocomplete="off" '
            'placeholder="optional; Enter or Esc returns to the keys"></div>'
            '<div class="navs"><button id="back">← back</button><button id="save">save (Enter)</button>'
            '<button id="next">next →</button><span id="msg"></span></div>'
            '<p class="keys">Keys: <kbd>1</kbd>–<kbd>4</kbd> pick a question · <kbd>y</kbd> / <kbd>n</kbd> / <kbd>u</kbd> '
            'yes, no, unsure · <kbd>v</kbd> / <kbd>x</kbd> valid, invalid · <kbd>c</kbd> note · <kbd>Enter</kbd> save, '
            'then next · <kbd>→</kbd> next · <kbd>←</kbd> back. The judge\'s verdicts show once the row is answered.</p>'
            '<div id="judge" hidden></div></section>'
            f"</main>{script}</body></html>")
