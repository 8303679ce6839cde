// The labelling page: one row at a time, keyboard first; every saved answer is POSTed at once and
// written by the server before it answers (no library, nothing fetched).
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("audit-data").textContent);
  const $ = (id) => document.getElementById(id);
  const LABELS = { q_plus: "Q+", i_plus: "I+", p_plus: "P+", i_minus: "I-", hn1: "HN1", q_minus: "Q-", hn2: "HN2" };
  const QS = D.questions.map((q) => q.id);
  const ANSWER_KEYS = { y: "yes", n: "no", u: "unsure" };
  let idx = 0, focusQ = 0, busy = false;
  const drafts = {};

  const el = window.infirFields.el;  // fields.js, inlined before this script
  const row = () => D.rows[idx];
  function draft() {
    const rid = row().row_id;
    if (!drafts[rid]) {
      const saved = D.labels[rid];
      drafts[rid] = saved ? { answers: Object.assign({}, saved.answers), valid: saved.valid, note: saved.note || "" }
                          : { answers: {}, valid: null, note: "" };
    }
    return drafts[rid];
  }
  const complete = (d) => QS.every((q) => d.answers[q]) && d.valid !== null;
  function changed(d) {
    const s = D.labels[row().row_id];
    if (!s) return true;
    return s.valid !== d.valid || (s.note || "") !== d.note || QS.some((q) => s.answers[q] !== d.answers[q]);
  }
  const labelled = () => D.rows.filter((r) => D.labels[r.row_id]).length;
  function firstOpen() {
    const i = D.rows.findIndex((r) => !D.labels[r.row_id]);
    return i < 0 ? 0 : i;
  }

  const field = (r, name) => window.infirFields.field(LABELS[name], r.fields[name], r.diff[name]);

  // The judge's answer to a question: every mapped check passed (null: it judged none of them).
  function judgeSays(j, q) {
    const vals = q.checks.map((c) => j[c]);
    if (vals.some((v) => typeof v !== "boolean")) return null;
    return vals.every((v) => v);
  }

  function paintJudge(d) {
    const box = $("judge"), j = D.judge[row().row_id];
    box.textContent = "";
    box.hidden = !j;
    if (!j) return;
    const verdict = j.accepted ? "accepted" : "rejected (" + (j.decided_by || "judge") + ")";
    box.appendChild(el("h3", null, "The judge: " + verdict));
    const t = el("table", "verdicts");
    for (const [check, reason] of Object.entries(j.reasons || {})) {
      const tr = el("tr", j[check] ? "pass" : "fail");
      tr.appendChild(el("td", null, check));
      tr.appendChild(el("td", null, j[check] ? "passed" : "failed"));
      tr.appendChild(el("td", null, reason));
      t.appendChild(tr);
    }
    for (const f of j.failed_filters || []) {
      const tr = el("tr", "fail");
      tr.appendChild(el("td", null, f));
      tr.appendChild(el("td", null, "filter failed"));
      tr.appendChild(el("td", null, ""));
      t.appendChild(tr);
    }
    box.appendChild(t);
  }

  function paint() {
    const r = row(), d = draft(), j = D.judge[r.row_id];
    $("pos").textContent = "row " + (idx + 1) + " of " + D.rows.length;
    $("pos").dataset.index = String(idx);
    $("rid").textContent = r.row_id;
    const saved = !!D.labels[r.row_id] && !changed(d);
    $("state").textContent = saved ? "saved" : (D.labels[r.row_id] ? "changed, not saved" : "not answered");
    $("state").className = saved ? "saved" : "unsaved";
    $("state").dataset.saved = saved ? "1" : "0";
    $("progress").textContent = labelled() + " of " + D.rows.length + " rows labelled";
    $("progress").dataset.labelled = String(labelled());
    const fields = $("fields");
    fields.textContent = "";
    for (const name of Object.keys(LABELS)) fields.appendChild(field(r, name));
    const qs = $("questions");
    qs.textContent = "";
    D.questions.forEach((q, k) => {
      const line = el("div", "q" + (k === focusQ ? " focus" : ""));
      line.dataset.q = q.id;
      line.appendChild(el("span", "qnum", String(k + 1)));
      line.appendChild(el("span", "qtext", q.text));
      const opts = el("span", "opts");
      for (const a of ["yes", "no", "unsure"]) {
        const b = el("button", d.answers[q.id] === a ? "on" : "", a + " (" + a[0] + ")");
        b.dataset.answer = a;
        b.addEventListener("click", () => { focusQ = k; answer(a); });
        opts.appendChild(b);
      }
      line.appendChild(opts);
      if (j) {
        const says = judgeSays(j, q), mine = d.answers[q.id];
        const agree = (mine === "yes") === says;
        line.appendChild(el("span", "judge-says " + (says === null || mine === "unsure" ? "" : agree ? "agree" : "differ"),
          "judge: " + (says === null ? "not judged" : says ? "yes" : "no")));
      }
      qs.appendChild(line);
    });
    for (const b of document.querySelectorAll("#valid-q button")) {
      b.className = d.valid !== null && (b.dataset.valid === "1") === d.valid ? "on" : "";
    }
    $("note").value = d.note;
    paintJudge(d);
  }

  function answer(a) {
    draft().answers[QS[focusQ]] = a;
    focusQ = Math.min(focusQ + 1, QS.length - 1);
    paint();
  }
  function setValid(v) { draft().valid = v; paint(); }
  function say(text) { $("msg").textContent = text || ""; }
  function go(k) {
    if (k < 0 || k >= D.rows.length) return;
    idx = k;
    focusQ = 0;
    say("");
    paint();
  }

  async function save() {
    const d = draft(), r = row();
    if (!complete(d)) { say("answer the four questions and valid (v) or invalid (x) first"); return false; }
    if (busy) return false;
    busy = true;
    try {
      const res = await fetch(D.api, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ row_id: r.row_id, answers: d.answers, valid: d.valid, note: d.note }) });
      const out = await res.json();
      if (!res.ok || !out.ok) { say("not saved: " + (out.error || res.status)); return false; }
      D.labels[r.row_id] = { answers: Object.assign({}, d.answers), valid: d.valid, note: d.note };
      D.judge[r.row_id] = out.judge;
      say("");
      paint();
      return true;
    } catch (e) {
      say("not saved: the server does not answer (is `infir audit` still running?)");
      return false;
    } finally {
      busy = false;
    }
  }
  // Enter: save a new or changed answer (the judge's verdicts then show); on a saved row, next.
  async function enter() {
    const d = draft();
    if (complete(d) && changed(d)) await save();
    else if (D.labels[row().row_id]) go(idx + 1);
    else say("answer the four questions and valid (v) or invalid (x) first");
  }
  async function next() {
    const d = draft();
    if (complete(d) && changed(d) && !(await save())) return;
    go(idx + 1);
  }

  $("note").addEventListener("input", (e) => { draft().note = e.target.value; });
  $("note").addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === "Escape") { e.preventDefault(); e.stopPropagation(); e.target.blur(); paint(); }
  });
  for (const b of document.querySelectorAll("#valid-q button")) b.addEventListener("click", () => setValid(b.dataset.valid === "1"));
  $("back").addEventListener("click", () => go(idx - 1));
  $("next").addEventListener("click", next);
  $("save").addEventListener("click", save);
  document.addEventListener("keydown", (e) => {
    if (e.target === $("note") || e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k >= "1" && k <= String(QS.length)) { focusQ = Number(k) - 1; paint(); }
    else if (ANSWER_KEYS[k.toLowerCase()]) answer(ANSWER_KEYS[k.toLowerCase()]);
    else if (k === "v") setValid(true);
    else if (k === "x") setValid(false);
    else if (k === "c") { e.preventDefault(); $("note").focus(); }
    else if (k === "Enter") { e.preventDefault(); enter(); }
    else if (k === "ArrowRight") next();
    else if (k === "ArrowLeft") go(idx - 1);
    else return;
    e.preventDefault();
  });
  go(firstOpen());
})();
