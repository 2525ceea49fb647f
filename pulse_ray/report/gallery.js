/* pulse-ray report: the gallery. Reads its settings from the JSON block #cfg, loads the rows from
   data/rows-NNNNN.js (each calls PULSE_REPORT_PAGE), and keeps what is shown in the URL hash.
   Every value from the job (ids, errors, manifest columns) goes into the page as text, never as HTML. */
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("cfg").textContent);
  var pages = new Array(cfg.pages);
  var requested = {};
  var inFlight = 0;
  var loaded = 0;
  var all = null;
  var shownKey = null;
  var state = {};
  var controls = document.getElementById("controls");
  var grid = document.getElementById("grid");
  var info = document.getElementById("info");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function pad(k) { var s = String(k); while (s.length < 5) s = "0" + s; return s; }
  function fmtMse(v) { return v === null || v === undefined ? "-" : v.toExponential(2); }
  function fmtSecs(v) { return v === null || v === undefined ? "-" : v.toFixed(2) + " s"; }

  /* ------------------------------------------------------------------ data pages */
  window.PULSE_REPORT_PAGE = function (k, rows) {
    if (pages[k] === undefined) { pages[k] = rows; loaded += 1; all = null; }
    inFlight -= 1;
    requestMore();
    render();
  };
  function request(k) {
    if (k < 0 || k >= cfg.pages || requested[k]) return;
    requested[k] = true;
    inFlight += 1;
    var s = document.createElement("script");
    s.src = "data/rows-" + pad(k) + ".js?v=" + cfg.v;
    s.onerror = function () { info.textContent = "cannot load data page " + k + " (data/rows-" + pad(k) + ".js)"; };
    document.head.appendChild(s);
  }
  function requestMore() {
    for (var k = 0; k < cfg.pages && inFlight < 2; k++) if (!requested[k]) request(k);
  }
  function pageOf(id) {  /* pages hold the rows sorted by id; cfg.first[k] is page k's first id */
    var k = 0;
    for (var i = 0; i < cfg.first.length; i++) if (cfg.first[i] <= id) k = i;
    return k;
  }
  function rows() {
    if (all === null) {
      all = [];
      for (var k = 0; k < cfg.pages; k++) if (pages[k]) all = all.concat(pages[k]);
    }
    return all;
  }

  /* ------------------------------------------------------------------ state in the URL hash */
  function readHash() {
    state = {};
    var h = location.hash.replace(/^#/, "");
    if (!h) return;
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i < 0) return;
      try { state[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1)); } catch (e) { /* ignore */ }
    });
  }
  function writeHash(changes, keepPage) {
    Object.keys(changes).forEach(function (k) {
      if (changes[k] === "" || changes[k] === null) delete state[k]; else state[k] = changes[k];
    });
    if (!keepPage) delete state.page;
    var parts = Object.keys(state).sort().map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(state[k]);
    });
    location.hash = parts.join("&");
  }
  window.addEventListener("hashchange", function () { readHash(); syncControls(); shownKey = null; render(); });

  /* ------------------------------------------------------------------ filters and sorting */
  var filters = [
    { key: "status", label: "status", options: [["", "any"], ["ok", "ok"], ["failed", "failed"]] },
    { key: "conv", label: "converged", options: [["", "any"], ["yes", "yes"], ["no", "no (ok rows)"]] },
    { key: "kind", label: "error kind", options: [["", "any"]].concat(cfg.kinds.map(function (k) { return [k, k]; })) },
    { key: "factor", label: "factor", options: [["", "any"]].concat(cfg.factors.map(function (f) { return [String(f), "x" + f]; })) }
  ];
  cfg.extra.forEach(function (x) {
    if (x.values) filters.push({ key: "x." + x.name, label: x.name, options: [["", "any"]].concat(x.values.map(function (v) { return [v, v]; })) });
    else filters.push({ key: "x." + x.name, label: x.name + " contains", text: true });
  });
  if (cfg.outputs.length > 1) {
    filters.push({ key: "cmp", label: "A vs B", options: [["", "any"], ["conv", "converged differs"], ["status", "status differs"], ["both", "in both"]] });
  }
  filters.push({ key: "sort", label: "sort by", options: [["", "id"], ["mse", "MSE, lowest first"], ["-mse", "MSE, highest first"], ["secs", "time, fastest first"], ["-secs", "time, slowest first"]] });

  function buildControls() {
    filters.forEach(function (f) {
      var label = el("label", "ctl");
      label.appendChild(el("span", null, f.label));
      var input;
      if (f.text) {
        input = el("input");
        input.type = "search";
        input.addEventListener("change", function () { writeHash(obj(f.key, input.value)); });
      } else {
        input = el("select");
        f.options.forEach(function (o) { var opt = el("option", null, o[1]); opt.value = o[0]; input.appendChild(opt); });
        input.addEventListener("change", function () { writeHash(obj(f.key, input.value)); });
      }
      input.id = "f-" + f.key.replace(/[^A-Za-z0-9_-]/g, "_");
      input.setAttribute("data-key", f.key);
      label.appendChild(input);
      controls.appendChild(label);
    });
    var clear = el("button", "clear", "show all");
    clear.type = "button";
    clear.id = "clear";
    clear.addEventListener("click", function () { state = {}; writeHash({}); });
    controls.appendChild(clear);
  }
  function obj(k, v) { var o = {}; o[k] = v; return o; }
  function syncControls() {
    controls.querySelectorAll("[data-key]").forEach(function (input) {
      input.value = state[input.getAttribute("data-key")] || "";
    });
  }

  function matches(r) {
    var a = r.o[0] || {};
    if (state.id !== undefined && r.id !== state.id) return false;
    if (state.status && a.st !== state.status) return false;
    if (state.conv === "yes" && !(a.st === "ok" && a.c)) return false;
    if (state.conv === "no" && !(a.st === "ok" && !a.c)) return false;
    if (state.kind && a.k !== state.kind) return false;
    if (state.factor && String(r.f) !== state.factor) return false;
    for (var i = 0; i < cfg.extra.length; i++) {
      var x = cfg.extra[i], want = state["x." + x.name];
      if (!want) continue;
      var have = r.x[x.name] === null || r.x[x.name] === undefined ? "" : String(r.x[x.name]);
      if (x.values ? have !== want : have.toLowerCase().indexOf(want.toLowerCase()) < 0) return false;
    }
    if (state.cmp) {
      var b = r.o[1];
      if (!r.o[0] || !b) return false;
      if (state.cmp === "conv" && !!(a.st === "ok" && a.c) === !!(b.st === "ok" && b.c)) return false;
      if (state.cmp === "status" && a.st === b.st) return false;
    }
    return true;
  }
  function sortKey(r) {
    var a = r.o[0] || {};
    var s = (state.sort || "").replace("-", "");
    return s === "mse" ? a.m : s === "secs" ? a.t : null;
  }
  function view() {
    var list = rows().filter(matches);
    if (state.sort) {
      var desc = state.sort.charAt(0) === "-";
      list = list.map(function (r, i) { return [sortKey(r), i, r]; });
      list.sort(function (p, q) {
        if (p[0] === q[0]) return p[1] - q[1];
        if (p[0] === null || p[0] === undefined) return 1;
        if (q[0] === null || q[0] === undefined) return -1;
        return desc ? q[0] - p[0] : p[0] - q[0];
      });
      list = list.map(function (p) { return p[2]; });
    }
    return list;
  }

  /* ------------------------------------------------------------------ cards */
  function figure(src, caption, side, cls) {
    var f = el("figure", cls || null);
    if (src) {
      var img = el("img", null);
      img.src = src;
      img.width = side;
      img.height = side;
      img.alt = caption;
      img.loading = "lazy";
      f.appendChild(img);
    } else {
      f.appendChild(el("div", "noimg", "none"));
    }
    f.appendChild(el("figcaption", null, caption));
    return f;
  }
  function field(dl, name, value) {
    dl.appendChild(el("dt", null, name));
    dl.appendChild(el("dd", null, value));
  }
  function card(r) {
    var c = el("article", "card");
    var a = r.o[0] || {};
    if (a.st === "failed") c.className += " failed";
    else if (a.st === "ok" && !a.c) c.className += " unconverged";
    c.setAttribute("data-id", r.id);
    var head = el("header");
    var link = el("a", "id", r.id);
    link.href = "#id=" + encodeURIComponent(r.id);
    link.title = "link to this id";
    head.appendChild(link);
    c.appendChild(head);
    var imgs = el("div", "imgs");
    var side = r.side || 128;
    imgs.appendChild(figure(r.lr, "LR" + (r.f ? " (x" + r.f + ")" : ""), side, "lr"));
    imgs.appendChild(figure(r.bi, "bicubic", side));
    r.o.forEach(function (o, j) {
      var name = cfg.outputs.length > 1 ? cfg.outputs[j].label + " " : "";
      if (!o) { imgs.appendChild(figure(null, name + "not in this output", side)); return; }
      imgs.appendChild(figure(o.sr, name + "SR" + (o.r !== null && o.r !== undefined ? " (restart " + o.r + ")" : ""), side, "sr"));
    });
    c.appendChild(imgs);
    r.o.forEach(function (o, j) {
      if (!o || !o.rs || !o.rs.length) return;
      var box = el("div", "restarts");
      box.appendChild(el("span", "what", (cfg.outputs.length > 1 ? cfg.outputs[j].label + ": " : "") + "other restarts"));
      o.rs.forEach(function (x) {
        box.appendChild(figure(x.im, "r" + x.k + " " + fmtMse(x.m) + (x.c ? " \u2713" : ""), Math.round(side / 2), "restart"));
      });
      c.appendChild(box);
    });
    r.o.forEach(function (o, j) {
      if (!o) return;
      var dl = el("dl");
      if (cfg.outputs.length > 1) field(dl, "output", cfg.outputs[j].label);
      field(dl, "status", o.st);
      if (o.st === "ok") {
        field(dl, "downscale MSE", fmtMse(o.m));
        field(dl, "converged", o.c ? "yes" : "no");
        field(dl, "restart", o.r);
        field(dl, "seed", o.s);
        field(dl, "steps", o.n);
        field(dl, "seconds", fmtSecs(o.t));
      } else {
        field(dl, "error kind", o.k || "error");
        field(dl, "error", o.e || "");
      }
      c.appendChild(dl);
    });
    if (r.lrnote) c.appendChild(el("p", "note", r.lrnote));
    var xs = Object.keys(r.x);
    if (xs.length) {
      var dx = el("dl", "extra");
      xs.forEach(function (k) { field(dx, k, r.x[k] === null ? "" : r.x[k]); });
      c.appendChild(dx);
    }
    return c;
  }

  /* ------------------------------------------------------------------ render */
  function render() {
    var list = view();
    var per = cfg.per_screen;
    var npages = Math.max(1, Math.ceil(list.length / per));
    var page = Math.min(Math.max(parseInt(state.page || "1", 10) || 1, 1), npages);
    var slice = list.slice((page - 1) * per, page * per);
    var complete = loaded === cfg.pages;
    info.textContent = list.length + " of " + cfg.rows + " rows" + (complete ? "" : " (loading: " + rows().length + " of " + cfg.rows + " read)") +
      (list.length ? "; showing " + ((page - 1) * per + 1) + "-" + ((page - 1) * per + slice.length) : "");
    document.getElementById("pageno").textContent = "page " + page + " of " + npages;
    document.getElementById("prev").disabled = page <= 1;
    document.getElementById("next").disabled = page >= npages;
    var key = slice.map(function (r) { return r.id; }).join("\u0000");
    if (key !== shownKey) {
      shownKey = key;
      var frag = document.createDocumentFragment();
      slice.forEach(function (r) { frag.appendChild(card(r)); });
      grid.textContent = "";
      grid.appendChild(frag);
    }
    if (complete || slice.length) document.body.setAttribute("data-rendered", complete ? "all" : "first");
  }
  document.getElementById("prev").addEventListener("click", function () { writeHash({ page: String(Math.max(1, (parseInt(state.page || "1", 10) || 1) - 1)) }, true); window.scrollTo(0, 0); });
  document.getElementById("next").addEventListener("click", function () { writeHash({ page: String((parseInt(state.page || "1", 10) || 1) + 1) }, true); window.scrollTo(0, 0); });

  readHash();
  buildControls();
  syncControls();
  if (state.id !== undefined) request(pageOf(state.id));
  requestMore();
  if (!cfg.pages) { document.body.setAttribute("data-rendered", "all"); render(); }
})();
