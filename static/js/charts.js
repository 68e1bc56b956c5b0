// Shared Chart.js helpers for training curves: train and validation series on a linear epoch axis.
// Plain script (no build step); exposes window.PerceptorCharts. Needs vendor/chart.js loaded first.
(function () {
  "use strict";

  // Two colours that stay apart in light and dark schemes and for red-green colour blindness.
  const COLORS = { train: "#1d6fd6", val: "#e8590c" };

  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function series(label, color, pointRadius) {
    return {
      label: label,
      data: [],
      borderColor: color,
      backgroundColor: color,
      borderWidth: 2,
      pointRadius: pointRadius,
      pointHoverRadius: 5,
      tension: 0,
      spanGaps: true,
    };
  }

  // A line chart with a "Train" and a "Validation" series of {x: epoch, y: value} points.
  // options: {yTitle, percent (0..100 axis with a % suffix), xMax (number of epochs)}
  function trainingChart(canvas, options) {
    if (typeof Chart === "undefined") return null; // the numbers on the page still tell the story
    const text = cssVar("--pico-muted-color", "#666");
    const grid = cssVar("--pico-muted-border-color", "rgba(128,128,128,0.2)");
    const format = options.percent
      ? (v) => v.toFixed(1) + " %"
      : (v) => (Math.abs(v) >= 0.01 || v === 0 ? v.toFixed(3) : v.toExponential(2));
    return new Chart(canvas, {
      type: "line",
      data: { datasets: [series("Train", COLORS.train, 0), series("Validation", COLORS.val, 3)] },
      options: {
        animation: false, // points arrive several times a second: animating each would only lag
        parsing: false,
        normalized: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: {
            type: "linear",
            min: 0,
            max: options.xMax || undefined,
            title: { display: true, text: "Epoch", color: text },
            ticks: { color: text, precision: 0 },
            grid: { color: grid },
          },
          y: {
            min: options.percent ? 0 : undefined,
            max: options.percent ? 100 : undefined,
            beginAtZero: !options.percent,
            title: { display: true, text: options.yTitle, color: text },
            ticks: { color: text, callback: options.percent ? (v) => v + " %" : undefined },
            grid: { color: grid },
          },
        },
        plugins: {
          legend: { labels: { color: text, usePointStyle: true, boxHeight: 6 } },
          tooltip: {
            callbacks: {
              title: (items) => (items.length ? "Epoch " + items[0].parsed.x.toFixed(2) : ""),
              label: (item) => item.dataset.label + ": " + format(item.parsed.y),
            },
          },
        },
      },
    });
  }

  function setXMax(chart, xMax) {
    if (chart && xMax && chart.options.scales.x.max !== xMax) chart.options.scales.x.max = xMax;
  }

  // The same chart with one validation series per run ({label, color, points: [{x, y}]}): compare.js.
  function runsChart(canvas, options, runs) {
    const chart = trainingChart(canvas, options);
    if (!chart) return null;
    chart.data.datasets = runs.map((run) => Object.assign(series(run.label, run.color, 3), { data: run.points }));
    chart.update();
    return chart;
  }

  window.PerceptorCharts = { COLORS: COLORS, trainingChart: trainingChart, runsChart: runsChart, setXMax: setXMax };
})();
