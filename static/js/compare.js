// Compare jobs: validation accuracy and loss per epoch, one line per job, in the job's colour (the
// page's tables use the same colours). Data: the "compare-series" JSON the page embeds.
(function () {
  "use strict";

  const source = document.getElementById("compare-series");
  if (!source || !window.PerceptorCharts) return;
  const runs = JSON.parse(source.textContent);
  const xMax = Math.max(1, ...runs.flatMap((run) => run.points.map((p) => p.epoch)));

  function lines(key, scale) {
    return runs.map((run) => ({
      label: run.label,
      color: run.color,
      points: run.points.filter((p) => p[key] != null).map((p) => ({ x: p.epoch, y: p[key] * scale })),
    }));
  }

  PerceptorCharts.runsChart(document.getElementById("compare-accuracy"),
    { yTitle: "Validation accuracy", percent: true, xMax: xMax }, lines("val_acc", 100));
  PerceptorCharts.runsChart(document.getElementById("compare-loss"),
    { yTitle: "Validation loss", xMax: xMax }, lines("val_loss", 1));
})();
