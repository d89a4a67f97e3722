/* Portico admin dashboard: draws the embedded series with the vendored uPlot. No network calls. */
(function () {
  "use strict";

  var source = document.getElementById("dashboard-data");
  if (!source) {
    return; // empty state: the page says so itself
  }
  var data = JSON.parse(source.textContent);
  var charts = [];

  function fail(message) {
    var nodes = document.querySelectorAll(".chart");
    for (var i = 0; i < nodes.length; i++) {
      nodes[i].textContent = message;
      nodes[i].className = "chart empty";
    }
  }

  if (typeof window.uPlot !== "function") {
    fail("The chart library did not load.");
    return;
  }
  var uPlot = window.uPlot;
  var style = getComputedStyle(document.documentElement);

  function cssVar(name, fallback) {
    var value = style.getPropertyValue(name).trim();
    return value || fallback;
  }

  var palette = [];
  for (var c = 0; c < 8; c++) {
    palette.push(cssVar("--c" + c, "#3451b2"));
  }
  var muted = cssVar("--muted", "#667085");
  var line = cssVar("--line", "#e3e6eb");

  function colour(i) {
    return palette[i % palette.length];
  }

  function tint(hex, alpha) {
    var m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex);
    if (!m) {
      return "transparent";
    }
    return "rgba(" + parseInt(m[1], 16) + "," + parseInt(m[2], 16) + "," + parseInt(m[3], 16) + "," + alpha + ")";
  }

  function compact(v) {
    if (v == null) {
      return "—";
    }
    var a = Math.abs(v);
    if (a >= 1e9) { return +(v / 1e9).toFixed(1) + "G"; }
    if (a >= 1e6) { return +(v / 1e6).toFixed(1) + "M"; }
    if (a >= 1e4) { return +(v / 1e3).toFixed(1) + "k"; }
    return String(+v.toFixed(2));
  }

  var formats = {
    count: compact,
    percent: function (v) { return v == null ? "—" : +v.toFixed(1) + " %"; },
    ms: function (v) {
      if (v == null) { return "—"; }
      if (v >= 1000) { return +(v / 1000).toFixed(2) + " s"; }
      return (v >= 100 ? Math.round(v) : +v.toFixed(1)) + " ms";
    },
    usd: function (v) {
      if (v == null) { return "—"; }
      if (v === 0) { return "$0"; }
      return "$" + (Math.abs(v) >= 1 ? v.toFixed(2) : String(+v.toPrecision(3)));
    }
  };

  // Where uPlot draws no dots (dense data), still mark values with no neighbour: a line cannot show them.
  function isolated(u, seriesIdx, show) {
    if (show) {
      return null;
    }
    var ys = u.data[seriesIdx];
    var idxs = [];
    for (var i = 0; i < ys.length; i++) {
      if (ys[i] != null && (i === 0 || ys[i - 1] == null) && (i === ys.length - 1 || ys[i + 1] == null)) {
        idxs.push(i);
      }
    }
    return idxs;
  }

  function zeroBased(u, min, max) {
    if (max == null || max <= 0) {
      return [0, 1];
    }
    return [0, max * 1.12];
  }

  function build(target, unit, series, lines) {
    var fmt = formats[unit];
    var opts = {
      width: Math.max(target.clientWidth, 200),
      height: 220,
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
      legend: { show: true, live: true },
      // x runs to the end of the last (current) bucket, so its dots are not cut at the edge.
      scales: { x: { time: true, range: function (u, min, max) { return [data.x[0], data.x[data.x.length - 1] + data.step]; } },
                y: { range: zeroBased } },
      axes: [
        { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 } },
        {
          stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 }, size: 64,
          values: function (u, splits) { return splits.map(fmt); }
        }
      ],
      series: [{ label: "UTC" }].concat(lines.map(function (l) {
        var s = {
          label: l.label,
          stroke: l.colour,
          width: l.dash ? 1.5 : 2,
          spanGaps: !!l.spanGaps,
          value: function (u, v) { return fmt(v); }
        };
        if (l.dash) { s.dash = l.dash; }
        if (l.fill) { s.fill = tint(l.colour, 0.08); }
        if (l.points) { s.points = { size: 5, fill: l.colour, stroke: l.colour, filter: isolated }; }
        return s;
      }))
    };
    var plot = new uPlot(opts, [data.x].concat(series), target);
    charts.push({ plot: plot, target: target });
  }

  function perProvider(metric, extra) {
    var series = [];
    var lines = [];
    data.providers.forEach(function (p, i) {
      series.push(data.series[metric][p]);
      lines.push(Object.assign({ label: p, colour: colour(i) }, extra || {}));
    });
    return { series: series, lines: lines };
  }

  function draw(id, unit, spec) {
    var target = document.getElementById(id);
    if (target) {
      build(target, unit, spec.series, spec.lines);
    }
  }

  draw("chart-requests", "count", perProvider("requests", { fill: true }));
  draw("chart-errors", "percent", perProvider("error_rate", { points: true }));
  var latency = { series: [], lines: [] };
  data.providers.forEach(function (p, i) {
    latency.series.push(data.series.p95_ms[p], data.series.p50_ms[p]);
    latency.lines.push({ label: p + " p95", colour: colour(i), points: true },
                       { label: p + " p50", colour: colour(i), points: true, dash: [5, 4] });
  });
  draw("chart-latency", "ms", latency);
  draw("chart-tokens", "count", perProvider("tokens", { fill: true }));
  draw("chart-cost", "usd", perProvider("cost_usd", { fill: true }));

  var pending = null;
  window.addEventListener("resize", function () {
    if (pending) {
      clearTimeout(pending);
    }
    pending = setTimeout(function () {
      charts.forEach(function (c) {
        c.plot.setSize({ width: Math.max(c.target.clientWidth, 200), height: 220 });
      });
    }, 100);
  });
}());
