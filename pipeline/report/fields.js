// Shared by the report's row browser (page.js) and the audit's labelling page (audit/page.js): making an
// element, and one of a row's seven texts with its I+/I- and Q+/Q- word differences marked.
window.infirFields = (function () {
  "use strict";
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  // `segs`: [text, changed] pairs (the words that differ from the paired text marked), or none.
  function field(label, text, segs) {
    const box = el("div", "field");
    box.appendChild(el("span", "flabel", label));
    const body = el("div", "ftext");
    if (segs) {
      for (const [part, changed] of segs) body.appendChild(el(changed ? "mark" : "span", null, part));
    } else {
      body.textContent = text == null ? "(missing)" : text;
    }
    box.appendChild(body);
    return box;
  }
  return { el: el, field: field };
})();
