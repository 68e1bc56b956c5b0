// Predict form on a model page: posts the image with fetch, shows a preview, the top label and a
// horizontal bar chart of the top 5. Without JavaScript the form posts normally and the server
// renders the same elements (templates/registry/model_detail_predict.html).
(function () {
  "use strict";
  const form = document.getElementById("predict-form");
  if (!form) return;
  const input = document.getElementById("predict-file");
  const button = document.getElementById("predict-submit");
  const errorBox = document.getElementById("prediction-error");
  const results = document.getElementById("predictions");
  const preview = document.getElementById("prediction-preview");
  const fileCaption = document.getElementById("prediction-file");
  const topLabel = document.getElementById("top-label");
  const list = document.getElementById("prediction-list");
  const canvas = document.getElementById("prediction-chart");
  let chart = null;
  let previewUrl = null;

  function percent(p) { return (p * 100).toFixed(1) + " %"; }

  function drawChart(predictions) {
    if (typeof Chart === "undefined") return;  // the list alone still says everything
    const labels = predictions.map((p) => p.label);
    const values = predictions.map((p) => p.probability * 100);
    if (chart) {
      chart.data.labels = labels;
      chart.data.datasets[0].data = values;
      chart.update();
      return;
    }
    chart = new Chart(canvas, {
      type: "bar",
      data: { labels, datasets: [{ label: "Probability (%)", data: values, backgroundColor: "#0172ad" }] },
      options: {
        indexAxis: "y",  // horizontal bars: long class names stay readable
        maintainAspectRatio: false,
        animation: { duration: 200 },
        scales: { x: { min: 0, max: 100, ticks: { callback: (v) => v + " %" } } },
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { label: (ctx) => ctx.parsed.x.toFixed(1) + " %" } },
        },
      },
    });
  }

  function showPredictions(predictions) {
    list.replaceChildren(...predictions.map((p) => {
      const li = document.createElement("li");
      li.className = "prediction";
      li.dataset.label = p.label;
      li.dataset.probability = String(p.probability);
      li.textContent = p.label + " — " + percent(p.probability);
      return li;
    }));
    topLabel.textContent = predictions.length ? predictions[0].label : "";
    results.hidden = false;
    drawChart(predictions);
  }

  function clearPredictions() {
    list.replaceChildren();
    topLabel.textContent = "";
    if (chart) { chart.destroy(); chart = null; }
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }

  // A file the browser cannot show (often the very file the server will refuse): no broken icon.
  preview.addEventListener("error", () => { preview.hidden = true; });

  // Server-rendered results (the no-JavaScript path after a reload) still get their chart.
  const initial = Array.from(list.querySelectorAll("li.prediction")).map((li) => ({
    label: li.dataset.label, probability: parseFloat(li.dataset.probability),
  }));
  if (initial.length) drawChart(initial);

  input.addEventListener("change", () => {
    const file = input.files[0];
    showError("");
    if (!file) return;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    preview.hidden = false;
    fileCaption.textContent = file.name;
    clearPredictions();  // the old bars belong to the old image
    results.hidden = false;
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!input.files.length) { showError("Choose an image file to upload."); return; }
    button.setAttribute("aria-busy", "true");
    button.disabled = true;
    results.setAttribute("aria-busy", "true");
    showError("");
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),  // carries csrfmiddlewaretoken
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      let body = null;
      try { body = await response.json(); } catch (e) { /* not JSON: a proxy error page */ }
      if (!response.ok || !body || body.error) {
        clearPredictions();
        showError((body && body.error) || "Prediction failed (HTTP " + response.status + "). Try again.");
        return;
      }
      fileCaption.textContent = body.file;
      showPredictions(body.predictions);
    } catch (e) {
      showError("Could not reach the server. Check your connection and try again.");
    } finally {
      button.removeAttribute("aria-busy");
      button.disabled = false;
      results.removeAttribute("aria-busy");
    }
  });
})();
