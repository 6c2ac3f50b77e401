// History page: the A/B ratio table for any two archived runs, computed from the entries embedded
// in the page (<script type="application/json" id="tb-history">); no network, no library.
// The same computation as tokenbench.report.history.ab_ratios: a ÷ b with a log-scale interval,
// each side's standard error read back from its Student t interval, delta method, Welch-Satterthwaite dof.
(function () {
  "use strict";

  var LANCZOS = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313,
    -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];

  function lnGamma(x) {
    if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
    x -= 1;
    var a = LANCZOS[0], t = x + 7.5;
    for (var i = 1; i < 9; i++) a += LANCZOS[i] / (x + i);
    return 0.5 * Math.log(2 * Math.PI) + (x + 0.5) * Math.log(t) - t + Math.log(a);
  }

  function tiny(v) { return Math.abs(v) < 1e-300 ? 1e-300 : v; }

  // continued fraction of the regularised incomplete beta function (modified Lentz)
  function betacf(a, b, x) {
    var c = 1, d = 1 / tiny(1 - (a + b) * x / (a + 1)), h = d;
    for (var m = 1; m <= 300; m++) {
      var m2 = 2 * m, aa = m * (b - m) * x / ((a - 1 + m2) * (a + m2));
      d = 1 / tiny(1 + aa * d); c = tiny(1 + aa / c); h *= d * c;
      aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + 1 + m2));
      d = 1 / tiny(1 + aa * d); c = tiny(1 + aa / c);
      var del = d * c;
      h *= del;
      if (Math.abs(del - 1) < 1e-15) break;
    }
    return h;
  }

  function ibeta(x, a, b) {
    if (x <= 0) return 0;
    if (x >= 1) return 1;
    var bt = Math.exp(lnGamma(a + b) - lnGamma(a) - lnGamma(b) + a * Math.log(x) + b * Math.log(1 - x));
    return x < (a + 1) / (a + b + 2) ? bt * betacf(a, b, x) / a : 1 - bt * betacf(b, a, 1 - x) / b;
  }

  function tCdf(t, dof) {
    var tail = 0.5 * ibeta(dof / (dof + t * t), dof / 2, 0.5);
    return t > 0 ? 1 - tail : tail;
  }

  // Student t quantile for p > 0.5, by bisection on the CDF
  function tQuantile(p, dof) {
    var lo = 0, hi = 1;
    while (tCdf(hi, dof) < p && hi < 1e12) hi *= 2;
    for (var i = 0; i < 200 && hi - lo > 1e-13 * hi; i++) {
      var mid = (lo + hi) / 2;
      if (tCdf(mid, dof) < p) lo = mid; else hi = mid;
    }
    return (lo + hi) / 2;
  }

  function se(f, level) {
    if (f.lo === null || f.hi === null || f.lo === undefined || f.hi === undefined || !(f.n >= 2)) return null;
    return (f.hi - f.lo) / (2 * tQuantile(0.5 + (f.level || level) / 2, f.n - 1));
  }

  function ratio(fa, fb, level, same) {
    var ma = fa.mean, mb = fb.mean, out = {ratio: null, lo: null, hi: null, note: ""};
    if (ma === null || mb === null || ma === undefined || mb === undefined) { out.note = "a side has no value"; return out; }
    if (mb === 0) { out.note = "b is 0: no ratio"; return out; }
    out.ratio = ma / mb;
    if (same) { out.note = "the same run on both sides: no interval"; return out; }
    if (!(ma > 0 && mb > 0)) { out.note = "a value is not positive: no log-ratio interval"; return out; }
    var sa = se(fa, level), sb = se(fb, level);
    if (sa === null || sb === null) {
      var sides = [];
      if (sa === null) sides.push("a");
      if (sb === null) sides.push("b");
      out.note = "no interval: " + sides.join(" and ") + " has none (fewer than 2 valid replicates)";
      return out;
    }
    var va = Math.pow(sa / ma, 2), vb = Math.pow(sb / mb, 2), se2 = va + vb;
    if (se2 === 0) { out.note = "no spread between replicates on either side: no interval"; return out; }
    var dof = se2 * se2 / ((va ? va * va / (fa.n - 1) : 0) + (vb ? vb * vb / (fb.n - 1) : 0));
    var half = tQuantile(0.5 + level / 2, dof) * Math.sqrt(se2), logR = Math.log(out.ratio);
    out.lo = Math.exp(logR - half);
    out.hi = Math.exp(logR + half);
    return out;
  }

  // fixed decimals rounded as Python's format does (the exact binary value, ties to even; toFixed
  // rounds ties up), so the table matches the one rendered on the server
  function fixed(v, digits, grouping) {
    return new Intl.NumberFormat("en-US", {minimumFractionDigits: digits, maximumFractionDigits: digits,
      useGrouping: grouping, roundingMode: "halfEven"}).format(v);
  }

  // as tokenbench.analysis.registry.fmt
  function fmt(v, meta) {
    if (v === null || v === undefined || !isFinite(v)) return "n/a";
    if (meta.percent) return fixed(100 * v, meta.digits, false) + " %";
    if (Math.abs(v) >= 1000) return fixed(v, 0, true);
    return fixed(v, meta.digits, false);
  }

  function figureText(f, meta) {
    if (!f || f.mean === null || f.mean === undefined) return "n/a";
    var text = fmt(f.mean, meta);
    if (f.lo !== null && f.lo !== undefined && f.hi !== null && f.hi !== undefined) {
      text += " \u00b1 " + fmt((f.hi - f.lo) / 2, meta);
    }
    return text;
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"}[c];
    });
  }

  function td(text) { return "<td>" + esc(text) + "</td>"; }

  function rowsHtml(data, a, b) {
    var level = (a.level === b.level && a.level) || 0.95, same = a.run_id === b.run_id, html = "", byKey = {};
    b.phases.forEach(function (p) { byKey[[p.engine, p.model, p.load, p.phase].join("\u0000")] = p; });
    a.phases.forEach(function (pa) {
      var pb = byKey[[pa.engine, pa.model, pa.load, pa.phase].join("\u0000")], group = "";
      if (!pb) return;
      data.figures.forEach(function (meta) {
        var fa = pa.figures[meta.key], fb = pb.figures[meta.key];
        if (!fa || !fb) return;
        var r = ratio(fa, fb, level, same);
        group += "<tr><td>" + esc(meta.header) + (meta.basis === "estimated" ? " <em>estimated</em>" : "") + "</td>" +
          td(figureText(fa, meta)) + td(figureText(fb, meta)) + td(r.ratio === null ? "n/a" : fixed(r.ratio, 3, false)) +
          td(r.lo === null ? r.note : "[" + fixed(r.lo, 3, false) + ", " + fixed(r.hi, 3, false) + "]") + "</tr>";
      });
      if (group) {
        html += "<tr><td colspan=\"5\"><strong>" +
          esc([pa.engine, pa.model, pa.load, pa.phase].join(" \u00b7 ")) + "</strong></td></tr>" + group;
      }
    });
    return html || "<tr><td colspan=\"5\">The two runs have no figure in common (no cell and measured phase valid in both).</td></tr>";
  }

  function pairNote(a, b) {
    if (a.run_id === b.run_id) return "A and B are the same run";
    if (a.config_hash !== b.config_hash) return "different config hashes: the ratios include the config change";
    return "same config hash";
  }

  function init() {
    var node = document.getElementById("tb-history");
    var selA = document.getElementById("tb-history-a"), selB = document.getElementById("tb-history-b");
    var body = document.getElementById("tb-history-rows"), pair = document.getElementById("tb-history-pair");
    if (!node || !selA || !selB || !body) return;
    var data = JSON.parse(node.textContent), byId = {};
    data.runs.forEach(function (r) { byId[r.run_id] = r; });
    function update() {
      var a = byId[selA.value], b = byId[selB.value];
      if (!a || !b) return;
      body.innerHTML = rowsHtml(data, a, b);
      if (pair) {
        pair.innerHTML = "A = <code>" + esc(a.run_id) + "</code>, B = <code>" + esc(b.run_id) + "</code>: " +
          esc(pairNote(a, b));
      }
    }
    selA.addEventListener("change", update);
    selB.addEventListener("change", update);
    selA.disabled = false;
    selB.disabled = false;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
