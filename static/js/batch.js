// Batch prediction page: poll the batch's status JSON about once a second and move the bar; when
// the batch ends, reload so that the page shows the result (CSV link, skipped files, error).
(function () {
  "use strict";
  const section = document.getElementById("batch-running");
  if (!section) return;
  const bar = document.getElementById("batch-progress");
  const text = document.getElementById("batch-progress-text");
  const phase = document.getElementById("batch-phase");
  const badge = document.getElementById("batch-status");
  const POLL_MS = 1000;

  function show(batch) {
    bar.max = Math.max(batch.total, 1);
    bar.value = batch.done;
    text.textContent = batch.done + " of " + batch.total + " files" +
      (batch.skipped ? " · " + batch.skipped + " skipped" : "");
    badge.textContent = batch.status_display;
    badge.className = "badge status-" + batch.status;
    if (batch.cancel_requested) phase.textContent = "Cancelling after the files in progress…";
    else if (batch.status === "running") phase.textContent = "Predicting the files…";
  }

  function poll() {
    fetch(section.dataset.statusUrl, {headers: {Accept: "application/json"}, credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (batch) {
        show(batch);
        if (batch.finished) window.location.reload();
        else window.setTimeout(poll, POLL_MS);
      })
      .catch(function () {
        // The server restarts, the network blips: try again, a little later.
        window.setTimeout(poll, 3 * POLL_MS);
      });
  }
  window.setTimeout(poll, POLL_MS);
})();
