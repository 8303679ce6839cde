// The row browser: filters and paints the rows embedded in the page (no network, no library).
(function () {
  "use strict";
  const rows = JSON.parse(document.getElementById("rows-data").textContent);
  const $ = (id) => document.getElementById(id);
  const list = $("rows"), count = $("match-count"), more = $("more");
  const fStatus = $("f-status"), fReason = $("f-reason"), fSearch = $("f-search");
  const LABELS = {
    query_positive: "Q+", instruction_positive: "I+", document_positive: "P+",
    instruction_negative: "I-", hard_negative_document_1: "HN1", query_negative: "Q-",
    hard_negative_document_2: "HN2",
  };
  const PAGE = 40;
  let matched = [], shown = 0;

  const el = window.infirFields.el;  // fields.js, inlined before this script
  // Reasons and search text once per row, lower-cased.
  for (const r of rows) {
    r._reasons = r.filters.concat(r.checks);
    r._text = (Object.values(r.fields).join(" ") + " " + r.id + " " +
      r.verdicts.map((v) => v.reason || "").join(" ") + " " + (r.error || "")).toLowerCase();
  }
  const reasons = Array.from(new Set(rows.flatMap((r) => r._reasons))).sort();
  for (const name of reasons) {
    const o = el("option", null, name);
    o.value = name;
    fReason.appendChild(o);
  }

  const field = (r, name) => window.infirFields.field(LABELS[name], r.fields[name], r.diff[name]);

  function card(r) {
    const d = el("details", "row " + r.status);
    const s = el("summary");
    s.appendChild(el("span", "badge " + r.status, r.status));
    s.appendChild(el("span", "rid", r.id));
    if (r.kind) s.appendChild(el("span", "kind", r.kind));
    for (const x of r._reasons) s.appendChild(el("span", "reason", x));
    if (r.failed_stage) s.appendChild(el("span", "reason", r.failed_stage + " failed"));
    s.appendChild(el("span", "cost", "$" + r.cost.cost_usd.toFixed(5) + " · " +
      (r.cost.prompt_tokens + r.cost.completion_tokens).toLocaleString() + " tok"));
    s.appendChild(el("div", "preview", r.fields.instruction_positive || r.fields.query_positive || ""));
    d.appendChild(s);
    d.addEventListener("toggle", function once() {
      if (!d.open || d.dataset.filled) return;
      d.dataset.filled = "1";
      const grid = el("div", "fields");
      for (const name of Object.keys(LABELS)) grid.appendChild(field(r, name));
      d.appendChild(grid);
      if (r.error) d.appendChild(el("p", "error", r.error));
      if (r.cosine) {
        d.appendChild(el("p", "muted", "cosine of (Q+ I+) to P+ " + r.cosine.positive +
          ", HN1 " + r.cosine.hn1 + ", HN2 " + r.cosine.hn2 + " (base MiniLM)"));
      }
      if (r.verdicts.length) {
        const t = el("table", "verdicts");
        for (const v of r.verdicts) {
          const tr = el("tr", v.passed ? "pass" : "fail");
          tr.appendChild(el("td", null, v.passed ? "pass" : "FAIL"));
          tr.appendChild(el("td", null, v.check));
          tr.appendChild(el("td", null, v.reason));
          t.appendChild(tr);
        }
        d.appendChild(t);
      }
      d.appendChild(el("p", "muted", "calls " + r.cost.calls + " · input " + r.cost.prompt_tokens +
        " · output " + r.cost.completion_tokens + " tokens · query " + (r.query_id || "")));
    });
    return d;
  }

  function paint(n) {
    const end = Math.min(matched.length, shown + n);
    const frag = document.createDocumentFragment();
    for (let i = shown; i < end; i++) frag.appendChild(card(matched[i]));
    list.appendChild(frag);
    shown = end;
    more.hidden = shown >= matched.length;
  }

  function apply() {
    const st = fStatus.value, rs = fReason.value, q = fSearch.value.trim().toLowerCase();
    matched = rows.filter((r) => (st === "all" || r.status === st) &&
      (rs === "any" || r._reasons.includes(rs)) && (!q || r._text.includes(q)));
    count.textContent = matched.length.toLocaleString("en-US") + " of " + rows.length.toLocaleString("en-US") + " rows";
    count.dataset.count = String(matched.length);
    list.replaceChildren();
    shown = 0;
    paint(PAGE);
  }

  fStatus.addEventListener("change", apply);
  fReason.addEventListener("change", apply);
  fSearch.addEventListener("input", apply);
  more.addEventListener("click", () => paint(PAGE));
  apply();
})();
