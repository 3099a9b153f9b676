// The any-two-runs page: reads the runs embedded in the page (file:// pages cannot fetch JSON), fills the two
// pickers and renders the shared benchmarks and metrics. Text is only ever set with textContent.
(function () {
  "use strict";
  var node = document.getElementById("runs-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  var runs = data.runs;
  var dirs = data.directions;
  var base = document.getElementById("base");
  var head = document.getElementById("head");
  if (!base || !head || runs.length === 0) { return; }
  runs.forEach(function (r) {
    [base, head].forEach(function (sel) {
      var o = document.createElement("option");
      o.value = r.id;
      o.textContent = r.label + " · " + r.group;
      sel.appendChild(o);
    });
  });
  function byId(id) { return runs.filter(function (r) { return r.id === id; })[0]; }
  function fmt(v) {
    if (v === undefined) { return "–"; }
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) { return v.toExponential(3); }
    return String(Number(v.toPrecision(5)));
  }
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) { td.className = cls; }
    tr.appendChild(td);
  }
  function render() {
    var b = byId(base.value), h = byId(head.value);
    var body = document.querySelector("#table tbody");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    var warn = document.getElementById("warn");
    warn.hidden = !(b && h && b.group !== h.group);
    warn.textContent = "These runs come from different series groups (machine, backend or profile): timings are not comparable.";
    if (!b || !h) { return; }
    Object.keys(h.values).sort().forEach(function (bench) {
      var hb = h.values[bench], bb = b.values[bench] || {};
      Object.keys(hb).sort().forEach(function (m) {
        var tr = document.createElement("tr");
        var x = bb[m], y = hb[m];
        var ch = (x !== undefined && x !== 0) ? (y - x) / Math.abs(x) : undefined;
        cell(tr, bench); cell(tr, m); cell(tr, fmt(x), "num"); cell(tr, fmt(y), "num");
        var cls = "num";
        if (ch !== undefined && ch !== 0 && dirs[m] && dirs[m] !== "none") {
          var worse = dirs[m] === "lower" ? ch > 0 : ch < 0;
          cls += worse ? " worse" : " better";
        }
        cell(tr, ch === undefined ? "–" : (ch >= 0 ? "+" : "") + (ch * 100).toFixed(2) + "%", cls);
        body.appendChild(tr);
      });
    });
    try {
      history.replaceState(null, "", "#base=" + encodeURIComponent(b.id) + "&head=" + encodeURIComponent(h.id));
    } catch (e) {
      // Some browsers refuse history changes on file:// pages; the table is still right.
    }
  }
  var params = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
    var p = kv.split("=");
    if (p.length === 2) { params[p[0]] = decodeURIComponent(p[1]); }
  });
  base.value = byId(params.base) ? params.base : (runs[1] || runs[0]).id;
  head.value = byId(params.head) ? params.head : runs[0].id;
  base.addEventListener("change", render);
  head.addEventListener("change", render);
  render();
}());
