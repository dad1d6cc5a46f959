// Onramp operator's dashboard: fetches the numbers from ./data (with the admin key as a header when the
// server has API keys) and draws every chart as inline SVG. No library, nothing loaded from elsewhere.
//
// Every number shown from a report carries data-k (its path in the JSON: "funnel.*" is what
// `onramp report funnel --json` prints, "experiment.*" what `onramp report experiments --json` prints),
// data-v (the exact value) and data-fmt (how it is written), so a test can compare the page with the CLI.
(function () {
  "use strict";

  var KEY_STORE = "onramp.dashboard.key";
  var REFRESH_MS = 30000;
  var SVG_NS = "http://www.w3.org/2000/svg";
  var authRequired = document.body.getAttribute("data-auth") === "required";
  var dataUrl = location.pathname.replace(/\/?$/, "/") + "data";
  var REASON_COLORS = {
    core: "#4e79a7", bandit: "#f28e2b", generic: "#59a14f", no_consent: "#bab0ac", holdout: "#9c755f",
    capped: "#e15759", none_eligible: "#76b7b2", "rule:*": "#b07aa1", other: "#edc948"
  };
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1", "#9c755f", "#edc948"];
  var COHORT_COLORS = ["#8fb0d6", "#f3b27a", "#94c98a", "#eb9a9b", "#9fd0cb", "#cfa9c6", "#c4a68f", "#f2dc8a"];
  var METRIC_LABELS = {
    activation: "activation", step_completion: "step completion", retention_d1: "D1 retention",
    retention_d7: "D7 retention", retention_d30: "D30 retention", survey_score: "survey score",
    time_to_value_h: "time to first value (h)"
  };
  var timer = null;

  // -- building DOM and SVG ---------------------------------------------------------------------------------
  function add(node, children) {
    children.forEach(function (c) {
      if (c === null || c === undefined || c === false) return;
      if (Array.isArray(c)) { add(node, c); return; }
      node.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
    });
    return node;
  }
  function h(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]); });
    return add(node, Array.prototype.slice.call(arguments, 2));
  }
  function s(tag, attrs) {
    var node = document.createElementNS(SVG_NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { if (attrs[k] !== null && attrs[k] !== undefined) node.setAttribute(k, attrs[k]); });
    return add(node, Array.prototype.slice.call(arguments, 2));
  }
  function title(text) { return s("title", {}, text); }

  // -- writing numbers --------------------------------------------------------------------------------------
  function finite(v) { return typeof v === "number" && isFinite(v); }
  function gfmt(v, digits) {  // like Python's "{:.3g}"
    if (!finite(v)) return "n/a";
    if (v === 0) return "0";
    var e = Math.floor(Math.log10(Math.abs(v)));
    if (e < -4 || e >= digits) {
      var parts = v.toExponential(digits - 1).split("e");
      var mant = parts[0].indexOf(".") >= 0 ? parts[0].replace(/0+$/, "").replace(/\.$/, "") : parts[0];
      var exp = parseInt(parts[1], 10);
      return mant + "e" + (exp < 0 ? "-" : "+") + (Math.abs(exp) < 10 ? "0" : "") + Math.abs(exp);
    }
    var txt = v.toFixed(Math.max(0, digits - 1 - e));
    return txt.indexOf(".") >= 0 ? txt.replace(/0+$/, "").replace(/\.$/, "") : txt;
  }
  var FORMATS = {
    pct: function (v) { return finite(v) ? (v * 100).toFixed(1) + "%" : "n/a"; },
    spct: function (v) { return finite(v) ? (v >= 0 ? "+" : "") + (v * 100).toFixed(1) + "%" : "n/a"; },
    int: function (v) { return finite(v) ? v.toLocaleString("en-US") : "n/a"; },
    f1: function (v) { return finite(v) ? v.toFixed(1) : "n/a"; },
    f2: function (v) { return finite(v) ? v.toFixed(2) : "n/a"; },
    sf2: function (v) { return finite(v) ? (v >= 0 ? "+" : "") + v.toFixed(2) : "n/a"; },
    h1: function (v) { return finite(v) ? v.toFixed(1) + " h" : "n/a"; },
    p: function (v) { return gfmt(v, 3); },
    text: function (v) { return v === null || v === undefined ? "n/a" : String(v); }
  };
  // A number as written on the page: <span class="num" data-k=path data-v=value data-fmt=format>
  function num(value, fmt, key, cls) {
    var attrs = { "class": "num" + (cls ? " " + cls : ""), "data-fmt": fmt, "data-v": JSON.stringify(value === undefined ? null : value) };
    if (key) attrs["data-k"] = key;
    return h("span", attrs, FORMATS[fmt](value));
  }
  function interval(low, high, fmt, key) {  // " [low, high]" in small grey
    return h("span", { "class": "ci" }, " [", num(low, fmt, key && key[0]), ", ", num(high, fmt, key && key[1]), "]");
  }
  function utc(ms) { return new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC"; }
  function day(ms) { return new Date(ms).toISOString().slice(0, 10); }

  // -- scales and axes ---------------------------------------------------------------------------------------
  // A y scale for values up to v: a round step (1, 2 or 5 x 10^k) giving about `ticks` ticks.
  function scale(v, ticks) {
    if (!(v > 0)) return { max: 1, ticks: 1 };
    var raw = v / ticks, p = Math.pow(10, Math.floor(Math.log10(raw)));
    var step = [1, 2, 5, 10].map(function (m) { return m * p; }).filter(function (st) { return st >= raw; })[0];
    var n = Math.ceil(v / step - 1e-9);
    return { max: n * step, ticks: n };
  }
  function yAxis(g, x0, x1, y, sc, fmt) {
    for (var i = 0; i <= sc.ticks; i++) {
      var v = sc.max * i / sc.ticks, yy = y(v);
      g.appendChild(s("line", { "class": i ? "grid-line" : "axis", x1: x0, x2: x1, y1: yy, y2: yy }));
      g.appendChild(s("text", { x: x0 - 4, y: yy + 3.5, "text-anchor": "end" }, fmt(v)));
    }
  }
  function swatch(color) { return s("svg", { viewBox: "0 0 10 10", "class": "swatch" }, s("rect", { width: 10, height: 10, rx: 2, fill: color })); }

  // -- the sections ----------------------------------------------------------------------------------------
  function card(cls, heading, hint) {
    return h("section", { "class": "card " + (cls || "") }, h("h2", {}, heading, hint ? h("span", { "class": "hint" }, " " + hint) : null));
  }

  function decisionsCard(d) {
    var c = card("wide", "Decisions by reason over time",
      d.total ? "(" + d.total.toLocaleString("en-US") + " decisions, one bar per " + bucketName(d.bucket_ms) + ")" : "");
    var reasons = Object.keys(d.reasons);
    if (!d.starts_ms.length) { c.appendChild(h("p", { "class": "note" }, "No decisions in the log yet.")); return c; }
    var W = 720, H = 220, L = 44, R = 8, T = 8, B = 26;
    var n = d.starts_ms.length, totals = [];
    for (var i = 0; i < n; i++) totals.push(reasons.reduce(function (a, r) { return a + d.reasons[r][i]; }, 0));
    var sc = scale(Math.max.apply(null, totals), 4), max = sc.max;
    var y = function (v) { return T + (H - T - B) * (1 - v / max); };
    var bw = (W - L - R) / n;
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "decisions by reason over time", "class": "chart-decisions" });
    var g = s("g"); svg.appendChild(g);
    yAxis(g, L, W - R, y, sc, function (v) { return Math.round(v).toLocaleString("en-US"); });
    for (i = 0; i < n; i++) {
      var acc = 0, x = L + i * bw + bw * 0.1;
      reasons.forEach(function (r) {
        var v = d.reasons[r][i];
        if (!v) return;
        svg.appendChild(s("rect", { x: x.toFixed(1), y: y(acc + v).toFixed(1), width: (bw * 0.8).toFixed(1),
          height: (y(acc) - y(acc + v)).toFixed(1), fill: REASON_COLORS[r] || PALETTE[reasons.indexOf(r) % PALETTE.length], "data-reason": r },
          title(r + ": " + v + " (" + utc(d.starts_ms[i]) + ")")));
        acc += v;
      });
    }
    var every = Math.max(1, Math.ceil(n / 8));
    for (i = 0; i < n; i += every) {
      svg.appendChild(s("text", { x: L + (i + 0.5) * bw, y: H - 8, "text-anchor": "middle" },
        d.bucket_ms < 86400000 ? utc(d.starts_ms[i]).slice(5, 16) : day(d.starts_ms[i]).slice(5)));
    }
    c.appendChild(svg);
    c.appendChild(h("div", { "class": "legend" }, reasons.map(function (r) {
      var total = d.reasons[r].reduce(function (a, b) { return a + b; }, 0);
      return h("span", {}, swatch(REASON_COLORS[r] || PALETTE[reasons.indexOf(r) % PALETTE.length]), r + " ",
        num(total, "int", "decisions.reasons." + r));
    })));
    return c;
  }
  function bucketName(ms) {
    return { 3600000: "hour", 21600000: "6 hours", 86400000: "day", 604800000: "week", 2419200000: "28 days" }[ms] || (ms / 3600000) + " h";
  }

  function modelCard(live) {
    var c = card("", "Model and learner");
    if (live.error) { c.appendChild(h("p", { "class": "note" }, "Live figures unavailable: " + live.error)); return c; }
    c.appendChild(h("p", { "class": "policy" }, h("span", { "class": "label" }, "policy version"), h("code", {}, num(live.policy_version, "text", "live.policy_version"))));
    var rows = [
      ["catalog version", num(live.catalog_version, "text", "live.catalog_version")],
      ["outcomes the bandit learned *", num(live.outcomes_learned, "int", "live.outcomes_learned")],
      ["decisions awaiting an outcome (joiner backlog)", num(live.awaiting_outcome, "int", "live.awaiting_outcome")],
      ["writes queued, not committed yet", num(live.writer_queue, "int", "live.writer_queue")]
    ];
    if (live.joined_since_start) {
      var src = Object.keys(live.joined_since_start);
      rows.push(["outcomes joined since start (" + src.join(" / ") + ")",
        h("span", {}, src.map(function (x, i) { return [i ? " / " : "", num(live.joined_since_start[x], "int", "live.joined_since_start." + x)]; }))]);
    }
    rows.push(["model snapshot in use", num(live.snapshot_version, "int", "live.snapshot_version")]);
    rows.push(["learner lag, latest (ms)", num(live.learner_lag_ms, "int", "live.learner_lag_ms")]);
    c.appendChild(h("dl", { "class": "kv" }, rows.map(function (r) { return [h("dt", {}, r[0]), h("dd", {}, r[1])]; })));
    c.appendChild(h("p", { "class": "note" }, "* by the model snapshot this server decides with. The learner joins " +
      "rewards, learns each committed outcome once and publishes a new snapshot; the policy version ends with its number."));
    return c;
  }

  function funnelCard(f) {
    var c = card("wide", "Funnel: shown and completed per step", "(users; red = abnormal drop-off)");
    var steps = f.steps.map(function (st, i) { return { st: st, i: i }; }).filter(function (x) { return x.st.shown > 0; });
    if (!steps.length) { c.appendChild(h("p", { "class": "note" }, "No step shown yet.")); return c; }
    var W = 720, rowH = 24, L = 170, R = 150, T = 4;
    var H = T + steps.length * rowH + 4;
    var max = Math.max.apply(null, steps.map(function (x) { return x.st.shown; }));
    var x = function (v) { return L + (W - L - R) * v / max; };
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "funnel", "class": "chart-funnel" });
    steps.forEach(function (it, k) {
      var st = it.st, y0 = T + k * rowH;
      if (k && st.group !== steps[k - 1].st.group) {
        svg.appendChild(s("line", { "class": "grid-line", x1: 0, x2: W, y1: y0, y2: y0 }));
        svg.appendChild(s("text", { x: W - 4, y: y0 + 12, "text-anchor": "end", "class": "group-label" }, st.group));
      } else if (!k) {
        svg.appendChild(s("text", { x: W - 4, y: y0 + 12, "text-anchor": "end", "class": "group-label" }, st.group));
      }
      svg.appendChild(s("text", { x: L - 6, y: y0 + 15, "text-anchor": "end", "class": st.flagged ? "label-strong" : null }, st.step_id));
      svg.appendChild(s("rect", { "class": "shown", x: L, y: y0 + 3, width: (x(st.shown) - L).toFixed(1), height: rowH - 8, rx: 2 },
        title(st.step_id + ": shown to " + st.shown + " users")));
      svg.appendChild(s("rect", { "class": "done" + (st.flagged ? " flagged" : ""), x: L, y: y0 + 3, width: (x(st.completed) - L).toFixed(1), height: rowH - 8, rx: 2 },
        title(st.step_id + ": completed by " + st.completed + " users")));
      svg.appendChild(s("text", { x: x(st.shown) + 6, y: y0 + 15 },
        st.completed + " / " + st.shown + " · " + FORMATS.pct(st.completion_rate) + (st.flagged ? "  ABNORMAL" : "")));
    });
    c.appendChild(svg);
    var body = f.steps.map(function (st, i) {
      var k = "funnel.steps." + i + ".";
      return h("tr", { "class": st.flagged ? "flagged" : null },
        h("td", {}, st.step_id), h("td", { "class": "left" }, st.group),
        h("td", {}, num(st.shown, "int", k + "shown")), h("td", {}, num(st.completed, "int", k + "completed")),
        h("td", {}, num(st.completion_rate, "pct", k + "completion_rate"), interval(st.low, st.high, "pct", [k + "low", k + "high"])),
        h("td", {}, num(st.drop_off, "pct", k + "drop_off")),
        h("td", { "class": "left" }, st.flagged ? h("span", { "class": "badge bad", title: st.why, "data-k": k + "flagged", "data-v": "true", "data-fmt": "flag" }, "ABNORMAL") : ""));
    });
    c.appendChild(h("table", {}, h("tr", {}, ["step", "group", "shown", "completed", "completion", "drop-off", ""].map(function (t, i) { return h("th", { "class": i === 1 || i === 6 ? "left" : null }, t); })), body));
    f.steps.forEach(function (st) { if (st.flagged) c.appendChild(h("p", { "class": "note error" }, st.step_id + ": " + st.why)); });
    return c;
  }

  function ttvCard(f, hist) {
    var v = f.time_to_value, k = "funnel.time_to_value.";
    var c = card("", "Time to first value", "(" + v.event + ")");
    c.appendChild(h("div", { "class": "stats" },
      h("div", {}, h("span", { "class": "label" }, "median"), h("b", { "class": "big" }, num(v.median_h, "h1", k + "median_h"))),
      h("div", {}, h("span", { "class": "label" }, "reached it"), num(v.reached, "int", k + "reached"), " of ", num(v.users, "int", k + "users")),
      h("div", {}, h("span", { "class": "label" }, "p25 / p75 / p90"), num(v.p25_h, "f1", k + "p25_h"), " / ", num(v.p75_h, "f1", k + "p75_h"), " / ", num(v.p90_h, "h1", k + "p90_h"))));
    if (!hist.counts.length) { c.appendChild(h("p", { "class": "note" }, "Nobody reached first value yet.")); return c; }
    var W = 340, H = 150, L = 34, R = 6, T = 6, B = 22;
    var sc = scale(Math.max.apply(null, hist.counts), 3), max = sc.max;
    var lo = Math.log10(hist.edges_h[0]), hi = Math.log10(hist.edges_h[hist.edges_h.length - 1]);
    var x = function (hv) { return L + (W - L - R) * (Math.log10(hv) - lo) / ((hi - lo) || 1); };
    var y = function (n) { return T + (H - T - B) * (1 - n / max); };
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "time to first value histogram", "class": "chart-ttv" });
    yAxis(svg, L, W - R, y, sc, function (n) { return Math.round(n); });
    hist.counts.forEach(function (n, i) {
      if (!n) return;
      var x0 = x(hist.edges_h[i]), x1 = x(hist.edges_h[i + 1]);
      svg.appendChild(s("rect", { "class": "bar", x: (x0 + 0.5).toFixed(1), y: y(n).toFixed(1), width: Math.max(0.5, x1 - x0 - 1).toFixed(1), height: (y(0) - y(n)).toFixed(1) },
        title(n + " users: " + hist.edges_h[i].toFixed(1) + "-" + hist.edges_h[i + 1].toFixed(1) + " h")));
    });
    [[1, "1h"], [6, "6h"], [24, "1d"], [168, "7d"], [720, "30d"]].forEach(function (t) {
      if (t[0] < hist.edges_h[0] || t[0] > hist.edges_h[hist.edges_h.length - 1]) return;
      svg.appendChild(s("text", { x: x(t[0]), y: H - 6, "text-anchor": "middle" }, t[1]));
    });
    if (finite(v.median_h)) svg.appendChild(s("line", { "class": "median", x1: x(v.median_h), x2: x(v.median_h), y1: T, y2: H - B }, title("median " + v.median_h.toFixed(1) + " h")));
    c.appendChild(svg);
    c.appendChild(h("p", { "class": "note" }, Object.keys(v.within).map(function (w, i) {
      return [i ? " · " : "", "within " + w + ": ", num(v.within[w], "pct", k + "within." + w)];
    })));
    return c;
  }

  function stepsCard(rows) {
    var c = card("full", "Steps: shows, completion inside the reward window, reward",
      "(per decision that showed the step; 95% intervals: Wilson for completion, normal approximation for the mean reward)");
    var lo = Math.min(0, Math.min.apply(null, rows.map(function (r) { return finite(r.reward_low) ? r.reward_low : 0; })));
    var hi = Math.max(1, Math.max.apply(null, rows.map(function (r) { return finite(r.reward_high) ? r.reward_high : 1; })));
    function whisker(v, a, b, dlo, dhi) {
      var W = 130, x = function (t) { return 4 + (W - 8) * (t - dlo) / (dhi - dlo); };
      var svg = s("svg", { viewBox: "0 0 " + W + " 14", "class": "whisker-plot" }, s("line", { "class": "axis", x1: 4, x2: W - 4, y1: 7, y2: 7 }));
      if (dlo < 0) svg.appendChild(s("line", { "class": "zero", x1: x(0), x2: x(0), y1: 1, y2: 13 }));
      if (finite(a) && finite(b)) svg.appendChild(s("line", { "class": "whisker", x1: x(a), x2: x(b), y1: 7, y2: 7 }));
      if (finite(v)) svg.appendChild(s("circle", { "class": "dot", cx: x(v), cy: 7, r: 3.5 }));
      return svg;
    }
    var body = rows.map(function (r) {
      var k = "steps." + r.step_id + ".";
      return h("tr", {}, h("td", {}, r.step_id), h("td", { "class": "left" }, r.group),
        h("td", {}, num(r.shows, "int", k + "shows")), h("td", {}, num(r.completed, "int", k + "completed")),
        h("td", {}, num(r.completion_rate, "pct", k + "completion_rate"), interval(r.completion_low, r.completion_high, "pct")),
        h("td", { "class": "plot" }, whisker(r.completion_rate, r.completion_low, r.completion_high, 0, 1)),
        h("td", {}, num(r.rewarded, "int", k + "rewarded")),
        h("td", {}, num(r.reward_mean, "f2", k + "reward_mean"), interval(r.reward_low, r.reward_high, "f2")),
        h("td", { "class": "plot" }, whisker(r.reward_mean, r.reward_low, r.reward_high, lo, hi)));
    });
    c.appendChild(h("table", {}, h("tr", {}, ["step", "group", "shows", "completed in window", "completion", "", "with outcome", "mean reward", ""].map(function (t, i) {
      return h("th", { "class": i === 1 ? "left" : null }, t);
    })), body));
    return c;
  }

  function experimentCard(e) {
    var c = card("full", "Experiment" + (e.name ? " " + e.name : ""));
    if (!e.report) { c.appendChild(h("p", { "class": "note" }, e.message)); return c; }
    var r = e.report, arms = Object.keys(r.arms);
    c.appendChild(h("p", {}, "Control arm ", h("b", {}, r.control), " (" + r.control_reason + "); users per arm: ",
      arms.map(function (a, i) { return [i ? ", " : "", a + " ", num(r.users[a], "int", "experiment.users." + a)]; }),
      ". First value = ", h("code", {}, r.first_value), "."));
    if (r.sample_ratio_mismatch) {
      c.appendChild(h("p", { "class": "alert", "data-k": "experiment.sample_ratio_mismatch", "data-v": "true", "data-fmt": "flag" },
        "Sample ratio mismatch: users per arm do not match the catalog's shares (chi-square p = ", num(r.sample_ratio.p_value, "p", "experiment.sample_ratio.p_value"),
        "). Check assignment and decision logging before trusting the comparisons."));
    }
    var metrics = Object.keys(r.arms[arms[0]]);
    var pctMetric = function (m) { return m !== "survey_score" && m !== "time_to_value_h"; };
    var perArm = h("table", {}, h("tr", {}, h("th", {}, "metric"), arms.map(function (a) { return h("th", {}, a + (a === r.control ? " (control)" : "")); })),
      metrics.map(function (m) {
        return h("tr", {}, h("td", {}, METRIC_LABELS[m] || m), arms.map(function (a) {
          var v = r.arms[a][m], k = "experiment.arms." + a + "." + m + ".", fmt = pctMetric(m) ? "pct" : "f2";
          return h("td", {}, num(v.value, fmt, k + "value"), interval(v.low, v.high, fmt, [k + "low", k + "high"]),
            h("span", { "class": "ci" }, " n=", num(v.n, "int", k + "n")));
        }));
      }));
    c.appendChild(perArm);
    c.appendChild(h("h2", { "class": "sub-heading" }, "Treatment - control ", h("span", { "class": "hint" },
      "(verdicts use Holm-adjusted p-values over all " + r.comparisons.length + " comparisons; alpha " + r.alpha + ")")));
    var body = r.comparisons.map(function (x, i) {
      var k = "experiment.comparisons." + i + ".", fmt = pctMetric(x.metric) ? "spct" : "sf2", cmp = x.comparison;
      var span = Math.max(Math.abs(cmp.low || 0), Math.abs(cmp.high || 0), Math.abs(cmp.diff || 0)) * 1.15 || 1;
      var W = 130, px = function (t) { return 4 + (W - 8) * (t + span) / (2 * span); };
      var cls = x.guardrail_worse ? "worse" : (x.significant ? "better" : "");
      var plot = s("svg", { viewBox: "0 0 " + W + " 14", "class": "whisker-plot forest" },
        s("line", { "class": "axis", x1: 4, x2: W - 4, y1: 7, y2: 7 }), s("line", { "class": "zero", x1: px(0), x2: px(0), y1: 0, y2: 14 }),
        s("g", { "class": cls }, finite(cmp.low) && finite(cmp.high) ? s("line", { "class": "whisker", x1: px(cmp.low), x2: px(cmp.high), y1: 7, y2: 7 }) : null,
          finite(cmp.diff) ? s("circle", { "class": "dot", cx: px(cmp.diff), cy: 7, r: 3.5 }) : null));
      var verdict = x.guardrail_worse ? h("span", { "class": "badge bad", "data-k": k + "guardrail_worse", "data-v": "true", "data-fmt": "flag" }, "GUARDRAIL WORSE")
        : x.significant ? h("span", { "class": "badge good", "data-k": k + "significant", "data-v": "true", "data-fmt": "flag" }, "significant")
        : h("span", { "class": "badge neutral", "data-k": k + "significant", "data-v": "false", "data-fmt": "flag" }, "no difference shown");
      return h("tr", { "class": x.guardrail_worse ? "flagged" : null }, h("td", {}, METRIC_LABELS[x.metric] || x.metric), h("td", { "class": "left" }, x.arm),
        h("td", {}, num(cmp.diff, fmt, k + "comparison.diff"), interval(cmp.low, cmp.high, fmt, [k + "comparison.low", k + "comparison.high"])),
        h("td", { "class": "plot" }, plot),
        h("td", {}, num(cmp.p_value, "p", k + "comparison.p_value")), h("td", {}, num(x.p_adjusted, "p", k + "p_adjusted")),
        h("td", { "class": "left" }, verdict));
    });
    c.appendChild(h("table", {}, h("tr", {}, ["metric", "arm", "difference", "", "p", "p (Holm)", "verdict"].map(function (t, i) {
      return h("th", { "class": i === 1 || i === 6 ? "left" : null }, t);
    })), body));
    return c;
  }

  function retentionCard(f) {
    var c = card("wide", "Retention by signup week", "(share of users active on day N; n/a: the data does not cover day N yet)");
    var days = ["D1", "D7", "D30"];
    var W = 520, H = 190, L = 40, R = 80, T = 8, B = 22;
    var all = [];
    f.cohorts.forEach(function (co) { days.forEach(function (d) { if (finite(co.retention[d])) all.push(co.retention[d]); }); });
    var sc = scale(Math.max.apply(null, all.concat([0.1])), 4), max = sc.max;
    var x = function (i) { return L + (W - L - R) * i / (days.length - 1); };
    var y = function (v) { return T + (H - T - B) * (1 - v / max); };
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "retention by signup week", "class": "chart-retention" });
    yAxis(svg, L, W - R, y, sc, function (v) { return Math.round(v * 100) + "%"; });
    days.forEach(function (d, i) { svg.appendChild(s("text", { x: x(i), y: H - 6, "text-anchor": "middle" }, d)); });
    function line(values, cls, color, label) {
      var pts = [];
      values.forEach(function (v, i) { if (finite(v)) pts.push(x(i).toFixed(1) + "," + y(v).toFixed(1)); });
      if (!pts.length) return;
      svg.appendChild(s("polyline", { "class": cls, points: pts.join(" "), stroke: color }, title(label)));
      values.forEach(function (v, i) { if (finite(v)) svg.appendChild(s("circle", { cx: x(i), cy: y(v), r: cls === "overall" ? 3.5 : 2.5, fill: color }, title(label + " " + days[i] + ": " + FORMATS.pct(v)))); });
    }
    f.cohorts.forEach(function (co, i) { line(days.map(function (d) { return co.retention[d]; }), "cohort", COHORT_COLORS[i % COHORT_COLORS.length], co.week + " (" + co.users + " users)"); });
    var overall = days.map(function (d) { return f.overall_retention[d]; });
    line(overall, "overall", "#1f2328", "all users");
    var lastIdx = -1; overall.forEach(function (v, i) { if (finite(v)) lastIdx = i; });
    if (lastIdx >= 0) svg.appendChild(s("text", { x: x(lastIdx) + 8, y: y(overall[lastIdx]) + 4, "class": "label-strong" }, "all " + FORMATS.pct(overall[lastIdx])));
    var rows = f.cohorts.map(function (co, i) {
      return h("tr", {}, h("td", {}, swatch(COHORT_COLORS[i % COHORT_COLORS.length]), " " + co.week), h("td", {}, num(co.users, "int", "funnel.cohorts." + i + ".users")),
        days.map(function (d) { return h("td", {}, num(co.retention[d], "pct", "funnel.cohorts." + i + ".retention." + d)); }));
    });
    rows.push(h("tr", { "class": "total" }, h("td", {}, h("b", {}, "all")), h("td", {}, num(f.users, "int", "funnel.users")),
      days.map(function (d) { return h("td", {}, h("b", {}, num(f.overall_retention[d], "pct", "funnel.overall_retention." + d))); })));
    c.appendChild(h("div", { "class": "split" }, h("div", {}, svg),
      h("table", {}, h("tr", {}, h("th", {}, "signup week"), h("th", {}, "users"), days.map(function (d) { return h("th", {}, d); })), rows)));
    return c;
  }

  function surveyCard(f) {
    var sv = f.survey, k = "funnel.survey.";
    var c = card("", "Survey scores");
    if (!sv.responses) { c.appendChild(h("p", { "class": "note" }, "No survey_response events with a numeric score.")); return c; }
    c.appendChild(h("div", { "class": "stats" },
      h("div", {}, h("span", { "class": "label" }, "mean score"), h("b", { "class": "big" }, num(sv.mean, "f2", k + "mean")), interval(sv.low, sv.high, "f2", [k + "low", k + "high"])),
      h("div", {}, h("span", { "class": "label" }, "responses"), h("b", { "class": "big" }, num(sv.responses, "int", k + "responses")))));
    var scores = Object.keys(sv.distribution);
    var W = 340, H = 140, L = 34, R = 6, T = 6, B = 22;
    var sc = scale(Math.max.apply(null, scores.map(function (x) { return sv.distribution[x]; })), 3), max = sc.max;
    var bw = (W - L - R) / scores.length;
    var y = function (n) { return T + (H - T - B) * (1 - n / max); };
    var svg = s("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "survey scores", "class": "chart-survey" });
    yAxis(svg, L, W - R, y, sc, function (n) { return Math.round(n); });
    scores.forEach(function (sc, i) {
      var n = sv.distribution[sc];
      svg.appendChild(s("rect", { "class": "survey-bar", x: (L + i * bw + bw * 0.15).toFixed(1), y: y(n).toFixed(1), width: (bw * 0.7).toFixed(1), height: (y(0) - y(n)).toFixed(1), rx: 2 }, title("score " + sc + ": " + n)));
      svg.appendChild(s("text", { x: L + (i + 0.5) * bw, y: H - 6, "text-anchor": "middle" }, sc));
    });
    c.appendChild(svg);
    c.appendChild(h("p", { "class": "note" }, scores.map(function (sc, i) { return [i ? " · " : "", "score " + sc + ": ", num(sv.distribution[sc], "int", k + "distribution." + sc)]; })));
    return c;
  }

  // -- loading ---------------------------------------------------------------------------------------------
  function setStatus(text) { document.getElementById("status").textContent = text; }

  function render(data) {
    var a = data.analytics, main = document.getElementById("main");
    var cards = [];
    if (a.error) {
      var err = card("full", "Analytics unavailable");
      err.appendChild(h("p", { "class": "error" }, a.error));
      cards.push(err, modelCard(data.live));
    } else {
      var f = a.funnel;
      cards.push(decisionsCard(a.decisions_over_time), modelCard(data.live), funnelCard(f), ttvCard(f, a.time_to_value_histogram),
        stepsCard(a.steps), experimentCard(a.experiment), retentionCard(f), surveyCard(f));
    }
    main.replaceChildren.apply(main, cards);
    main.hidden = false;
    document.getElementById("login").hidden = true;
    document.getElementById("signout").hidden = !data.auth.required;
    var f2 = a.funnel;
    setStatus((f2 ? "Data up to " + f2.end + " · " + f2.users.toLocaleString("en-US") + " users (erased users left out: " + f2.erased_left_out + ") · " : "") +
      "analytics computed " + utc(a.computed_at_ms) + " in " + a.compute_s.toFixed(2) + " s, kept " + Math.round(a.ttl_s) + " s" +
      (data.auth.required ? " · signed in as " + data.auth.caller : ""));
    document.body.setAttribute("data-state", "ready");
  }

  function showLogin(message) {
    document.getElementById("main").hidden = true;
    document.getElementById("main").replaceChildren();
    document.getElementById("login").hidden = false;
    document.getElementById("signout").hidden = true;
    document.getElementById("login-error").textContent = message || "";
    setStatus("Sign in with an admin API key.");
    document.body.setAttribute("data-state", message ? "refused" : "login");
    document.getElementById("key").focus();
  }

  function load() {
    var key = sessionStorage.getItem(KEY_STORE);
    if (authRequired && !key) { showLogin(""); return Promise.resolve(); }
    var headers = key ? { "Authorization": "Bearer " + key } : {};
    document.body.setAttribute("data-state", "loading");
    return fetch(dataUrl, { headers: headers, cache: "no-store", credentials: "omit" }).then(function (res) {
      return res.json().catch(function () { return { error: res.status + " " + res.statusText }; }).then(function (body) {
        if (res.status === 401 || res.status === 403) { sessionStorage.removeItem(KEY_STORE); showLogin(body.error); return; }
        if (!res.ok) { if (res.status === 429 && authRequired) { showLogin(body.error); } else { setStatus("Error: " + body.error); } return; }
        render(body);
      });
    }).catch(function (e) { setStatus("Cannot reach the server: " + e); document.body.setAttribute("data-state", "error"); });
  }

  document.getElementById("login-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var input = document.getElementById("key");
    if (!input.value) return;
    sessionStorage.setItem(KEY_STORE, input.value.trim());
    input.value = "";
    load();
  });
  document.getElementById("signout").addEventListener("click", function () { sessionStorage.removeItem(KEY_STORE); showLogin(""); });
  document.getElementById("refresh").addEventListener("click", function () { load(); });
  document.addEventListener("visibilitychange", function () { if (!document.hidden && !document.getElementById("main").hidden) load(); });
  timer = setInterval(function () { if (!document.hidden && !document.getElementById("main").hidden) load(); }, REFRESH_MS);
  load();
}());
