// Predict form on a model page: posts the file with fetch, shows what was sent (the image, or a
// player for a clip), the top label and a horizontal bar chart of the top 5; for a speech model
// also the spectrogram of what the model heard. recorder.js hands over microphone recordings with
// a "perceptor:recorded" event on the form ({detail: {file, seconds}}). Without JavaScript the form
// posts normally and the server renders the same elements (registry/model_detail_predict.html).
// State for browser tests: window.perceptorPredict = {busy, requests, last, error}.
(function () {
  "use strict";
  const form = document.getElementById("predict-form");
  if (!form) return;
  const audio = form.dataset.kind === "audio";
  const el = (id) => document.getElementById(id);
  const input = el("predict-file");
  const button = el("predict-submit");
  const errorBox = el("prediction-error");
  const results = el("predictions");
  const preview = el(audio ? "prediction-audio" : "prediction-preview");
  const spectrogram = el("prediction-spectrogram");  // speech models only
  const note = el("prediction-note");
  const fileCaption = el("prediction-file");
  const topLabel = el("top-label");
  const list = el("prediction-list");
  const canvas = el("prediction-chart");
  const MISSING = audio ? "Choose an audio file to upload, or record one." : "Choose an image file to upload.";
  const state = (window.perceptorPredict = { busy: false, requests: 0, last: null, error: "" });
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

  function showHeard(heard) {
    if (!spectrogram) return;
    spectrogram.hidden = !heard;
    if (heard) spectrogram.src = heard.spectrogram; else spectrogram.removeAttribute("src");
    note.textContent = (heard && heard.note) || "";
    note.hidden = !note.textContent;
  }

  function clearPredictions() {
    list.replaceChildren();
    topLabel.textContent = "";
    showHeard(null);
    if (chart) { chart.destroy(); chart = null; }
  }

  function showError(message) {
    state.error = message;
    errorBox.textContent = message;
    errorBox.hidden = !message;
    if (message) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
  }

  // What was sent, shown (or played) from the browser's own copy.
  function showSource(blob, caption) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(blob);
    preview.src = previewUrl;
    preview.hidden = false;
    fileCaption.textContent = caption;
    clearPredictions();  // the old bars belong to the old file
    results.hidden = false;
  }

  // A file the browser cannot show or play (often the very file the server will refuse): no broken icon.
  preview.addEventListener("error", () => { if (preview.getAttribute("src")) preview.hidden = true; });

  // Server-rendered results (the no-JavaScript path after a reload) still get their chart.
  const initial = Array.from(list.querySelectorAll("li.prediction")).map((li) => ({
    label: li.dataset.label, probability: parseFloat(li.dataset.probability),
  }));
  if (initial.length) drawChart(initial);

  input.addEventListener("change", () => {
    const file = input.files[0];
    showError("");
    if (file) showSource(file, file.name);
  });

  async function send(file) {
    button.setAttribute("aria-busy", "true");
    button.disabled = true;
    results.setAttribute("aria-busy", "true");
    state.busy = true;
    state.requests += 1;
    showError("");
    try {
      const data = new FormData(form);  // carries csrfmiddlewaretoken
      data.set("file", file, file.name);
      const response = await fetch(form.action, {
        method: "POST",
        body: data,
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      let body = null;
      try { body = await response.json(); } catch (e) { /* not JSON: a proxy error page */ }
      state.last = body;
      if (!response.ok || !body || body.error) {
        clearPredictions();
        showError((body && body.error) || "Prediction failed (HTTP " + response.status + "). Try again.");
        return;
      }
      showPredictions(body.predictions);
      showHeard(body.heard || null);
    } catch (e) {
      showError("Could not reach the server. Check your connection and try again.");
    } finally {
      button.removeAttribute("aria-busy");
      button.disabled = false;
      results.removeAttribute("aria-busy");
      state.busy = false;
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) { showError(MISSING); return; }
    send(input.files[0]);
  });

  // A recording from recorder.js: shown and sent like a chosen file.
  form.addEventListener("perceptor:recorded", (event) => {
    const { file, seconds } = event.detail;
    input.value = "";  // the form now stands for the recording, not an earlier file
    showError("");
    showSource(file, "Your recording (" + seconds.toFixed(1) + " s)");
    send(file);
  });
})();
