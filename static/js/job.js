// The live job page. Everything that changes comes over the websocket /ws/jobs/<id>/: first a
// "history" message (the job and its whole curve, from the database), then "progress" and
// "status" messages. The socket reconnects with backoff; every (re)connect starts with history,
// so a missed message is repaired by the next one. Points are deduplicated by (kind, step).
// State for browser tests: window.perceptorJob = {job, status, phase, points, connection, ...}.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;

  const FINISHED = ["succeeded", "failed", "cancelled"];
  const LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };
  const CLOSE_NOT_FOUND = 4404;
  const el = (id) => document.getElementById(id);

  const initial = JSON.parse(el("job-snapshot").textContent);
  const state = (window.perceptorJob = {
    job: initial,
    status: initial.status,
    phase: null, // {message, progress} while the job prepares its data (see renderJob)
    points: [], // every point drawn, in arrival order
    connection: "connecting", // connecting | live | retrying | closed | not-found
    historyLoaded: false,
    messages: 0,
  });
  const seen = new Set();

  const epochs = () => state.job.epochs || 1;
  const lossChart = window.PerceptorCharts && PerceptorCharts.trainingChart(el("loss-chart"), { yTitle: "Loss", xMax: epochs() });
  const accChart = window.PerceptorCharts && PerceptorCharts.trainingChart(el("accuracy-chart"), { yTitle: "Accuracy", percent: true, xMax: epochs() });

  // --- Formatting -------------------------------------------------------------------------------
  function duration(seconds) {
    if (seconds == null || !isFinite(seconds)) return "";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + " min";
  }
  const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });

  // --- Rendering the job ------------------------------------------------------------------------
  // phase: work before the first step ({message, progress}: synthetic voices being spoken), sent
  // with progress messages while it lasts; its bar and words stand in for training's.
  function renderJob(job, phase) {
    state.job = job;
    state.status = job.status;
    state.phase = job.status === "running" && phase ? phase : null;
    const finished = FINISHED.includes(job.status);
    const badge = el("job-status");
    badge.className = "badge status-" + job.status;
    badge.textContent = job.cancel_requested && !finished ? "Cancelling" : LABELS[job.status] || job.status;

    const progress = state.phase ? state.phase.progress || 0 : job.status === "succeeded" ? 1 : job.progress || 0;
    el("job-progress").value = progress;
    const parts = [Math.floor(progress * 100) + " %"];
    if (state.phase) parts.push(state.phase.message);
    else if (job.status === "running" && job.eta_s != null) parts.push(duration(job.eta_s) + " left");
    if (job.status === "queued") {
      let waiting = job.queue_position ? "#" + job.queue_position + " in the queue" : "waiting for a worker";
      if (job.starts_in_s != null) waiting += ", starts in about " + duration(job.starts_in_s);
      parts.push(waiting);
    }
    el("job-progress-text").textContent = parts.join(" · ");

    el("job-epoch").textContent = job.epoch + " / " + (job.epochs || "?");
    el("job-speed").textContent = job.samples_per_s ? number.format(job.samples_per_s) : "—";
    el("job-device").textContent = job.device || "—";
    el("job-attempts").textContent = job.attempts + " / " + job.max_attempts;
    el("job-queue").textContent = job.queue_position ? "#" + job.queue_position : "—";
    renderNotices(job.notices || []);
    el("job-resume-form").hidden = !job.can_resume;
    el("job-retry-form").hidden = !(job.status === "cancelled" || job.status === "failed");

    const error = el("job-error");
    error.hidden = !job.error;
    error.textContent = job.error || "";

    const cancelForm = el("job-cancel-form");
    if (cancelForm) {
      cancelForm.hidden = finished;
      const button = el("job-cancel");
      if (job.cancel_requested && !finished) {
        button.disabled = true;
        button.setAttribute("aria-busy", "true");
        button.textContent = "Cancelling…";
      }
    }
    const modelLink = el("job-model-link");
    if (job.model_id) {
      modelLink.href = root.dataset.modelUrl.replace(/0\/$/, job.model_id + "/");
      modelLink.hidden = false;
    }
    PerceptorCharts.setXMax(lossChart, job.epochs);
    PerceptorCharts.setXMax(accChart, job.epochs);
  }

  // Notices: resumes after a crash, a batch size halved after the GPU ran out of memory.
  function renderNotices(notices) {
    const list = el("job-notices");
    list.hidden = notices.length === 0;
    list.replaceChildren(
      ...notices.map((n) => {
        const item = document.createElement("li");
        const when = document.createElement("small");
        when.className = "muted";
        when.textContent = n.at + " ";
        item.append(when, n.message);
        return item;
      })
    );
  }

  // --- Curves -----------------------------------------------------------------------------------
  // x is the epoch, fractional within an epoch: step points sit between the epoch ends.
  function xOf(point) {
    const total = state.job.total_steps;
    return total ? (point.step * epochs()) / total : point.epoch;
  }

  function addPoint(point) {
    const key = point.kind + ":" + point.step;
    if (seen.has(key)) return false;
    seen.add(key);
    state.points.push(point);
    const x = xOf(point);
    if (lossChart) {
      lossChart.data.datasets[0].data.push({ x: x, y: point.train_loss });
      accChart.data.datasets[0].data.push({ x: x, y: point.train_acc * 100 });
      if (point.val_loss != null) lossChart.data.datasets[1].data.push({ x: x, y: point.val_loss });
      if (point.val_acc != null) accChart.data.datasets[1].data.push({ x: x, y: point.val_acc * 100 });
    }
    return true;
  }

  function resetPoints() {
    seen.clear();
    state.points = [];
    for (const chart of [lossChart, accChart]) if (chart) chart.data.datasets.forEach((d) => (d.data = []));
  }

  // A run resumed from its checkpoint repeats the steps after it: forget what was drawn past it.
  function rewindTo(step) {
    const kept = state.points.filter((p) => p.step <= step);
    if (kept.length === state.points.length) return;
    resetPoints();
    kept.forEach(addPoint);
    redraw();
  }

  function redraw() {
    if (lossChart) {
      lossChart.update("none");
      accChart.update("none");
    }
  }

  // --- The socket -------------------------------------------------------------------------------
  let socket = null;
  let attempt = 0;
  let retryTimer = null;

  function setConnection(value, text) {
    state.connection = value;
    el("job-live-state").textContent = text;
  }

  function onMessage(event) {
    const message = JSON.parse(event.data);
    state.messages += 1;
    if (message.type === "history") {
      attempt = 0;
      renderJob(message.job); // first, so that x positions use this job's total_steps
      resetPoints();
      message.points.forEach(addPoint);
      state.historyLoaded = true;
      redraw();
    } else if (message.type === "progress") {
      renderJob(message.job, message.phase);
      if (message.point && addPoint(message.point)) redraw();
    } else if (message.type === "status") {
      renderJob(message.job);
      if (message.rewind_to_step != null) rewindTo(message.rewind_to_step);
    }
    if (FINISHED.includes(state.status)) {
      setConnection("closed", "Finished: nothing more to stream.");
      socket.close(1000);
    } else {
      setConnection("live", "Live.");
    }
  }

  function connect() {
    retryTimer = null;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + root.dataset.wsPath);
    socket.onmessage = onMessage;
    socket.onclose = (event) => {
      if (state.connection === "closed") return;
      if (event.code === CLOSE_NOT_FOUND) {
        setConnection("not-found", "This job is not available for live updates.");
        return;
      }
      // Backoff: 1, 2, 4 … 30 s, with jitter so that a restarted server is not hit all at once.
      const delay = Math.min(30000, 1000 * 2 ** attempt) * (0.75 + Math.random() / 2);
      attempt += 1;
      setConnection("retrying", "Connection lost — retrying in " + Math.ceil(delay / 1000) + " s…");
      retryTimer = setTimeout(connect, delay);
    };
  }

  renderJob(initial);
  connect();
  // Reconnect at once when the tab comes back (laptop lid, phone screen) instead of waiting.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && retryTimer) {
      clearTimeout(retryTimer);
      connect();
    }
  });
})();
