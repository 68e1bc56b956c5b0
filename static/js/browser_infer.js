// "Run in your browser" on a model page: the model's ONNX export run by onnxruntime-web (the WASM
// build, served from our static files, one thread since the page is not cross-origin isolated) in
// its proxy worker, next to the server's answer to the same file. The worker keeps compiling the
// runtime, optimising the graph and inference off the page's thread: a big model does not freeze
// scrolling, the buttons or the recorder's level meter while it loads or runs. The input is
// prepared like the server prepares it (ml/images.py decode_image, ml/audio.py decode_audio +
// fit_length), so a file already at the model's size (an image of H×W pixels, a 16 kHz mono clip)
// gets the same probabilities to float rounding (Chromium decodes positive 16-bit samples as
// x/32767, libsndfile as x/32768: under one step of 16-bit audio); other sizes go through the
// browser's resampler, not Pillow's or torchaudio's, and may differ slightly.
// Inputs: a file; for images a camera snapshot, for speech a recording (recorder.js, which sends
// "perceptor:recorded" to this form). The session is created once, on first use.
// State for browser tests: window.perceptorBrowser = {state ("idle", "running", "ready"), loadMs,
// fetchMs, modelBytes, runs, last: {file, browser, server, agreement}, error, input() (what the
// model was given last)}.
(function () {
  "use strict";
  const form = document.getElementById("browser-form");
  if (!form) return;
  const audio = form.dataset.kind === "audio";
  const el = (id) => document.getElementById(id);
  const spec = JSON.parse(el("browser-input-spec").textContent);
  const classes = JSON.parse(el("browser-classes").textContent);
  const input = el("browser-file");
  const status = el("browser-status");
  const errorBox = el("browser-error");
  const results = el("browser-results");
  const agreement = el("browser-agreement");
  const TOP_K = 5;  // what the server returns (webapp/registry/services.py TOP_K)
  const TIMED_RUNS = 5;  // the latency shown is the median of these, after the run that answers
  const state = (window.perceptorBrowser = {
    state: "idle", loadMs: null, fetchMs: null, modelBytes: null, runs: 0, last: null, error: "",
  });
  let session = null;
  let loading = null;
  let lastInput = null;  // {type, data, dims, fit}: what the model was given last
  let previewUrl = null;

  function setStatus(text) { status.textContent = text; }

  function showError(message) {
    state.error = message;
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function megabytes(bytes) { return (bytes / 1048576).toFixed(1) + " MB"; }  // as Django's filesizeformat

  function describe(error) { return error && error.message ? error.message : String(error); }

  function ms(value) { return value < 10 ? value.toFixed(2) + " ms" : value.toFixed(0) + " ms"; }

  function median(values) {
    const sorted = [...values].sort((a, b) => a - b);
    const mid = sorted.length >> 1;
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
  }

  // --- The session --------------------------------------------------------------------------------
  function load() {
    if (!loading) loading = createSession().catch((error) => { loading = null; throw error; });
    return loading;
  }

  async function createSession() {
    if (typeof WebAssembly !== "object" || typeof ort === "undefined") {
      throw new Error("this browser cannot run WebAssembly, or the runtime did not load");
    }
    ort.env.wasm.wasmPaths = { mjs: form.dataset.ortMjs, wasm: form.dataset.ortWasm };
    // Threads need SharedArrayBuffer, which browsers only give cross-origin isolated pages.
    ort.env.wasm.numThreads = window.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    ort.env.wasm.proxy = true;  // a Worker started from ort.wasm.min.js itself (same origin: no blob URL)
    setStatus("Loading the model (" + megabytes(parseInt(form.dataset.modelBytes, 10)) + ") into this page…");
    const start = performance.now();
    const response = await fetch(form.dataset.modelUrl, { credentials: "same-origin" });
    if (!response.ok) throw new Error("the model file could not be downloaded (HTTP " + response.status + ")");
    const bytes = new Uint8Array(await response.arrayBuffer());
    state.fetchMs = performance.now() - start;
    state.modelBytes = bytes.length;  // before create(): the proxy transfers the buffer to its worker
    const created = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    state.loadMs = performance.now() - start;
    setStatus("Model loaded in " + ms(state.loadMs) + " (" + megabytes(state.modelBytes) + " downloaded in " +
      ms(state.fetchMs) + "), running on WebAssembly in a background worker with " + ort.env.wasm.numThreads +
      " thread" + (ort.env.wasm.numThreads > 1 ? "s" : "") + ".");
    session = created;
    return created;
  }

  // --- Images: like ml.images.decode_image --------------------------------------------------------
  async function imageTensor(file) {
    let bitmap;
    try {
      // No colour management: Pillow hands the server the file's own values, not display ones.
      bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    } catch (e) {
      throw new Error("not an image this browser can read");
    }
    const height = spec.height, width = spec.width, channels = spec.channels;
    const canvas = el("browser-seen");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.fillStyle = "#fff";  // transparency is composited on white, as the server does
    context.fillRect(0, 0, width, height);
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";  // averages when shrinking, like Pillow's bilinear filter
    context.drawImage(bitmap, 0, 0, width, height);  // squashed, not cropped
    canvas.hidden = false;
    bitmap.close();
    const rgba = context.getImageData(0, 0, width, height).data;
    const plane = width * height;
    const pixels = new Uint8Array(channels * plane);
    for (let i = 0; i < plane; i++) {
      const r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
      if (channels === 1) {
        // Pillow's convert("L"): ITU-R 601 luma in 16-bit fixed point, rounded.
        pixels[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
      } else {
        pixels[i] = r;
        pixels[plane + i] = g;
        pixels[2 * plane + i] = b;
      }
    }
    if (channels === 1) {  // show what the model saw
      const gray = context.createImageData(width, height);
      for (let i = 0; i < plane; i++) gray.data.set([pixels[i], pixels[i], pixels[i], 255], 4 * i);
      context.putImageData(gray, 0, 0);
    }
    return { type: "uint8", data: pixels, dims: [1, channels, height, width], fit: "" };
  }

  // --- Speech: like ml.audio.decode_audio + fit_length ----------------------------------------------
  async function waveTensor(file) {
    const rate = spec.sample_rate;
    let buffer;
    try {
      // decodeAudioData resamples to the context's rate.
      buffer = await new OfflineAudioContext(1, 1, rate).decodeAudioData(await file.arrayBuffer());
    } catch (e) {
      throw new Error("not an audio file this browser can decode");
    }
    if (!buffer.length) throw new Error("empty clip: it has no samples");
    const wave = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const data = buffer.getChannelData(c);
      for (let i = 0; i < wave.length; i++) wave[i] += data[i];
    }
    let peak = 0;
    for (let i = 0; i < wave.length; i++) {
      wave[i] /= buffer.numberOfChannels;
      peak = Math.max(peak, Math.abs(wave[i]));
    }
    if (!Number.isFinite(peak)) throw new Error("the clip contains NaN or infinite samples");
    if (peak > 1) for (let i = 0; i < wave.length; i++) wave[i] /= peak;  // float files beyond ±1
    const [fitted, how] = fitLength(wave, spec.clip_samples);
    return { type: "float32", data: fitted, dims: [1, fitted.length], fit: how };
  }

  // ml.audio.fit_length: shorter clips are zero-padded on both sides (centred); longer ones keep
  // the window with the most energy, near-ties going to the most central window.
  function fitLength(wave, length) {
    const n = wave.length;
    if (n === length) return [wave, ""];
    if (n < length) {
      const out = new Float32Array(length);
      out.set(wave, Math.floor((length - n) / 2));
      return [out, "padded"];
    }
    const cumulative = new Float64Array(n + 1);
    for (let i = 0; i < n; i++) cumulative[i + 1] = cumulative[i] + wave[i] * wave[i];
    const windows = n - length + 1;
    let best = -Infinity;
    for (let s = 0; s < windows; s++) best = Math.max(best, cumulative[s + length] - cumulative[s]);
    const threshold = best - Math.max(best, 1e-30) * 1e-9;
    const centre = (n - length) / 2;
    let start = 0, distance = Infinity;
    for (let s = 0; s < windows; s++) {
      if (cumulative[s + length] - cumulative[s] >= threshold && Math.abs(s - centre) < distance) {
        start = s;
        distance = Math.abs(s - centre);
      }
    }
    return [wave.slice(start, start + length), "trimmed"];
  }

  // --- Running --------------------------------------------------------------------------------------
  // Probabilities -> top 5, best first; ties keep class order, like the server's stable sort.
  function top(probabilities) {
    return Array.from(probabilities, (p, i) => i)
      .sort((a, b) => probabilities[b] - probabilities[a] || a - b)
      .slice(0, TOP_K)
      .map((i) => ({ label: classes[i], probability: probabilities[i] }));
  }

  async function run(prepared) {
    // A fresh copy per run: the proxy transfers each input's buffer to its worker, detaching it here.
    const feeds = { [session.inputNames[0]]: new ort.Tensor(prepared.type, prepared.data.slice(), prepared.dims) };
    const start = performance.now();
    const outputs = await session.run(feeds);
    const elapsed = performance.now() - start;
    state.runs += 1;
    return { probabilities: Float32Array.from(outputs[session.outputNames[0]].data), ms: elapsed };
  }

  async function inBrowser(file) {
    lastInput = null;
    const prepareStart = performance.now();
    const prepared = await (audio ? waveTensor(file) : imageTensor(file));
    const prepareMs = performance.now() - prepareStart;
    lastInput = prepared;
    const first = await run(prepared);
    const times = [];
    for (let i = 0; i < TIMED_RUNS; i++) times.push((await run(prepared)).ms);
    return {
      predictions: top(first.probabilities), probabilities: Array.from(first.probabilities),
      firstMs: first.ms, medianMs: median(times), runsMs: times, prepareMs, fit: prepared.fit,
    };
  }

  async function onServer(file) {
    const data = new FormData();
    data.set("csrfmiddlewaretoken", form.querySelector("[name=csrfmiddlewaretoken]").value);
    data.set("file", file, file.name);
    const start = performance.now();
    let response, body = null;
    try {
      response = await fetch(form.dataset.predictUrl, {
        method: "POST", body: data, headers: { Accept: "application/json" }, credentials: "same-origin",
      });
      try { body = await response.json(); } catch (e) { /* not JSON: a proxy error page */ }
    } catch (e) {
      return { error: "Could not reach the server. Check your connection and try again." };
    }
    const elapsed = performance.now() - start;
    if (!response.ok || !body || body.error) {
      return { error: (body && body.error) || "Prediction failed (HTTP " + response.status + ")." };
    }
    return { predictions: body.predictions, ms: elapsed };
  }

  function fill(list, predictions) {
    list.replaceChildren(...(predictions || []).map((p) => {
      const li = document.createElement("li");
      li.className = "prediction";
      li.dataset.label = p.label;
      li.dataset.probability = String(p.probability);
      li.textContent = p.label + " — " + (p.probability * 100).toFixed(1) + " %";
      return li;
    }));
  }

  function showSource(file, caption) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    const preview = el(audio ? "browser-audio" : "browser-preview");
    preview.src = previewUrl;
    preview.hidden = false;
    if (!audio) el("browser-seen").hidden = true;  // until this file's pixels are drawn
    el("browser-source").textContent = caption;
    fill(el("browser-list"), []);
    fill(el("server-list"), []);
    el("browser-latency").textContent = el("server-latency").textContent = "";
    el("server-error").hidden = true;
    agreement.hidden = true;
    results.hidden = false;
  }

  function compare(browser, server) {
    if (!browser || !server.predictions) return null;
    const same = browser.predictions[0].label === server.predictions[0].label;
    let maxDiff = 0;
    for (const p of server.predictions) {
      maxDiff = Math.max(maxDiff, Math.abs(browser.probabilities[classes.indexOf(p.label)] - p.probability));
    }
    const points = maxDiff * 100;
    agreement.textContent = same
      ? "Both pick “" + browser.predictions[0].label + "”; the probabilities differ by " +
        (points < 1e-4 ? "less than 0.0001" : "at most " + points.toFixed(points < 0.01 ? 4 : 2)) + " percentage points."
      : "They disagree: the browser picks “" + browser.predictions[0].label + "”, the server “" +
        server.predictions[0].label + "”.";
    agreement.className = "message " + (same ? "success" : "warning");
    agreement.hidden = false;
    return { top1: same, maxDiff };
  }

  // Both answers for one file: first in this browser, then from the server (one after the other,
  // so neither's latency includes the other's work).
  async function classify(file, caption) {
    if (state.state === "running") return state.last;
    showError("");
    showSource(file, caption || file.name);
    state.state = "running";
    results.setAttribute("aria-busy", "true");
    input.disabled = true;
    let browser = null;
    try {
      await load();
    } catch (error) {
      setStatus("");
      showError("The model could not be loaded in this browser: " + describe(error));
    }
    if (session) {
      try {
        browser = await inBrowser(file);
        fill(el("browser-list"), browser.predictions);
        el("browser-latency").textContent = "Inference " + ms(browser.medianMs) + " (median of " + TIMED_RUNS +
          " runs; the first took " + ms(browser.firstMs) + "), preparing the input " + ms(browser.prepareMs) +
          (browser.fit === "padded" ? ". The clip was shorter than the model's window, so it was padded with silence."
            : browser.fit === "trimmed" ? ". The clip was longer than the model's window, so it heard the loudest part." : ".");
      } catch (error) {
        showError(file.name + ": " + describe(error));
      }
    }
    const server = await onServer(file);
    fill(el("server-list"), server.predictions);
    el("server-error").textContent = server.error || "";
    el("server-error").hidden = !server.error;
    el("server-latency").textContent = server.ms ? "Round trip " + ms(server.ms) + " (upload, decoding and inference)." : "";
    results.removeAttribute("aria-busy");
    input.disabled = false;
    state.last = { file: file.name, browser, server, agreement: compare(browser, server) };
    state.state = session ? "ready" : "idle";
    return state.last;
  }

  state.input = () => (lastInput ? Array.from(lastInput.data) : null);

  form.hidden = status.hidden = false;  // without JavaScript nothing here can run
  // A file the browser cannot show (or play): no broken icon.
  const preview = el(audio ? "browser-audio" : "browser-preview");
  preview.addEventListener("error", () => { if (preview.getAttribute("src")) preview.hidden = true; });
  input.addEventListener("change", () => { if (input.files[0]) classify(input.files[0]); });
  form.addEventListener("submit", (event) => event.preventDefault());
  form.addEventListener("perceptor:recorded", (event) => {
    const { file, seconds } = event.detail;
    input.value = "";
    classify(file, "Your recording (" + seconds.toFixed(1) + " s)");
  });

  // --- Camera snapshots (images) ------------------------------------------------------------------
  const cameraRow = el("browser-camera-row");
  if (cameraRow && navigator.mediaDevices && navigator.mediaDevices.getUserMedia && navigator.mediaDevices.enumerateDevices) {
    const cameraButton = el("browser-camera");
    const snap = el("browser-snap");
    const video = el("browser-video");
    let stream = null;

    const stopCamera = () => {
      if (stream) stream.getTracks().forEach((track) => track.stop());
      stream = null;
      video.srcObject = null;
      video.hidden = snap.hidden = true;
      cameraButton.textContent = "Use the camera";
    };

    navigator.mediaDevices.enumerateDevices().then((devices) => {
      cameraRow.hidden = !devices.some((device) => device.kind === "videoinput");
    }).catch(() => {});

    cameraButton.addEventListener("click", async () => {
      if (stream) { stopCamera(); return; }
      showError("");
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
        video.srcObject = stream;
        await video.play();
        video.hidden = snap.hidden = false;
        cameraButton.textContent = "Stop the camera";
      } catch (error) {
        stopCamera();
        showError(error && error.name === "NotAllowedError"
          ? "Camera access was denied. Allow it for this site in the browser's settings, or choose a file instead."
          : "The camera could not be started" + (error && error.name ? " (" + error.name + ")" : "") + ". Choose a file instead.");
      }
    });

    snap.addEventListener("click", () => {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      // A lossless PNG: the server and the browser start from exactly the same pixels.
      canvas.toBlob((blob) => {
        input.value = "";
        classify(new File([blob], "snapshot.png", { type: "image/png" }), "Camera snapshot (" + canvas.width + " × " + canvas.height + ")");
      }, "image/png");
    });
  }
})();
