// Microphone recording on a speech model's page, all in the page: getUserMedia + Web Audio capture
// (an AudioWorklet; a ScriptProcessor where worklets are unavailable), a level meter and the time
// recorded, a stop by itself after data-max-seconds, then mono 16 kHz 16-bit PCM WAV made here
// (low-pass + resample + encode), handed to predict.js as a file ("perceptor:recorded" on the
// form), which posts it like an uploaded one. The server needs no FFmpeg: it reads the WAV.
// Where there is no microphone, or the user says no, a message says so and uploading still works.
// Every .recorder box on the page works this way (the predict form's, and the in-browser inference
// form's): its button, meter, timer and alert are found inside it, its recording goes to its form.
// State for browser tests: window.perceptorRecorders[box id] = {state, seconds, peak, inputRate,
// method, recordings, error}; window.perceptorRecorder is the first box's (the predict form's).
document.querySelectorAll(".recorder").forEach(function (box) {
  "use strict";
  const form = box.closest("form");
  if (!form) return;
  const button = box.querySelector("button");
  const meter = box.querySelector("meter");
  const clock = box.querySelector("[role=timer]");
  const errorBox = box.querySelector("[role=alert]");
  const MAX_SECONDS = parseFloat(box.dataset.maxSeconds) || 3;
  const RATE = 16000;  // what the models take (ml.audio.SAMPLE_RATE); the server would resample anyway
  const state = {
    state: "idle", seconds: 0, peak: 0, inputRate: null, method: "", recordings: 0, error: "",
  };
  (window.perceptorRecorders = window.perceptorRecorders || {})[box.id] = state;
  window.perceptorRecorder = window.perceptorRecorder || state;
  let session = null;  // {stream, context, nodes, chunks, samples, timer}

  box.hidden = false;
  const AudioContextClass = window.AudioContext || window.webkitAudioContext;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia || !AudioContextClass) {
    // Browsers offer the microphone only to secure pages: https, or http://localhost.
    showError(window.isSecureContext === false
      ? "Recording needs a secure page (https:// or localhost), so the browser offers no microphone here. Upload a file instead."
      : "This browser cannot record audio. Upload a file instead.");
    button.disabled = true;
    return;
  }

  function showError(message) {
    state.error = message;
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function setState(name) {
    state.state = name;
    const recording = name === "recording";
    button.setAttribute("aria-pressed", String(recording));
    button.textContent = recording ? "Stop" : name === "idle" ? "Record" : "…";
    button.disabled = name === "starting" || name === "encoding";
    button.setAttribute("aria-busy", String(button.disabled));
    if (!recording) meter.value = 0;
  }

  function describe(error) {
    switch (error && error.name) {
      case "NotAllowedError":
      case "SecurityError":
        return "Microphone access was denied. Allow it for this site in the browser's settings, or upload a file instead.";
      case "NotFoundError":
      case "OverconstrainedError":
        return "No microphone was found. Connect one, or upload a file instead.";
      case "NotReadableError":
      case "AbortError":
        return "The microphone could not be started (another application may be using it). Upload a file instead.";
      default:
        return "The microphone could not be started" + (error && error.name ? " (" + error.name + ")" : "") +
          ". Upload a file instead.";
    }
  }

  // --- Capture ------------------------------------------------------------------------------------
  // The worklet averages the channels and posts blocks of 128 samples to the page.
  const WORKLET = `
    class PerceptorTap extends AudioWorkletProcessor {
      process(inputs) {
        const channels = inputs[0];
        if (channels && channels.length) {
          const mono = new Float32Array(channels[0].length);
          for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
          this.port.postMessage(mono, [mono.buffer]);
        }
        return true;
      }
    }
    registerProcessor("perceptor-tap", PerceptorTap);`;

  async function tap(context, source, onBlock) {
    // A silent sink: nodes not connected towards the destination may never be run.
    const sink = context.createGain();
    sink.gain.value = 0;
    sink.connect(context.destination);
    if (context.audioWorklet && window.AudioWorkletNode) {
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
      try {
        await context.audioWorklet.addModule(url);
        const node = new AudioWorkletNode(context, "perceptor-tap", { numberOfOutputs: 1, outputChannelCount: [1] });
        node.port.onmessage = (event) => onBlock(event.data);
        source.connect(node);
        node.connect(sink);
        state.method = "audioworklet";
        return [node, sink];
      } catch (e) {
        // e.g. a Content-Security-Policy without blob: for workers; the old node still works
      } finally {
        URL.revokeObjectURL(url);
      }
    }
    const node = context.createScriptProcessor(4096, 1, 1);
    node.onaudioprocess = (event) => {
      const input = event.inputBuffer;
      const mono = new Float32Array(input.length);
      for (let c = 0; c < input.numberOfChannels; c++) {
        const data = input.getChannelData(c);
        for (let i = 0; i < mono.length; i++) mono[i] += data[i] / input.numberOfChannels;
      }
      onBlock(mono);
    };
    source.connect(node);
    node.connect(sink);
    state.method = "scriptprocessor";
    return [node, sink];
  }

  async function start() {
    showError("");
    setState("starting");
    let stream = null;
    let context = null;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        // The raw signal: the models were trained on clips without echo cancelling or gain riding.
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      context = new AudioContextClass();
      if (context.state === "suspended") await context.resume();
      const current = { stream, context, nodes: [], chunks: [], samples: 0, peak: 0, timer: null };
      session = current;
      const source = context.createMediaStreamSource(stream);
      current.nodes = [source, ...(await tap(context, source, (block) => onBlock(current, block)))];
      state.inputRate = context.sampleRate;
      state.seconds = 0;
      current.timer = setInterval(() => draw(current), 100);
      stream.getAudioTracks().forEach((track) => track.addEventListener("ended", () => stop()));
      setState("recording");
    } catch (error) {
      if (stream) stream.getTracks().forEach((track) => track.stop());
      if (context) context.close().catch(() => {});
      session = null;
      setState("idle");
      showError(describe(error));
    }
  }

  function onBlock(current, block) {
    if (session !== current || state.state !== "recording") return;
    current.chunks.push(block);
    current.samples += block.length;
    let peak = 0;
    for (let i = 0; i < block.length; i++) { const a = Math.abs(block[i]); if (a > peak) peak = a; }
    current.peak = Math.max(peak, current.peak * 0.9);  // the meter falls back slowly
    state.peak = Math.max(state.peak, peak);
    state.seconds = current.samples / current.context.sampleRate;
    if (state.seconds >= MAX_SECONDS) stop();
  }

  function draw(current) {
    clock.textContent = state.seconds.toFixed(1) + " s";
    meter.value = Math.min(1, current.peak);
  }

  async function stop() {
    const current = session;
    if (!current || state.state !== "recording") return;
    setState("encoding");
    clearInterval(current.timer);
    draw(current);
    current.nodes.forEach((node) => node.disconnect());
    current.stream.getTracks().forEach((track) => track.stop());
    const rate = current.context.sampleRate;
    current.context.close().catch(() => {});
    session = null;
    const samples = concat(current.chunks, current.samples);
    if (!samples.length) {
      setState("idle");
      showError("Nothing was recorded: the microphone sent no sound. Try again, or upload a file.");
      return;
    }
    const wave = resample(samples, rate, RATE);
    const file = new File([encodeWav(wave, RATE)], "recording.wav", { type: "audio/wav" });
    state.recordings += 1;
    setState("idle");
    form.dispatchEvent(new CustomEvent("perceptor:recorded", { detail: { file, seconds: wave.length / RATE } }));
  }

  button.addEventListener("click", () => {
    if (state.state === "recording") stop();
    else if (state.state === "idle") { state.peak = 0; state.seconds = 0; start(); }
  });

  // --- Signal processing ------------------------------------------------------------------------
  function concat(chunks, total) {
    const out = new Float32Array(total);
    let offset = 0;
    for (const chunk of chunks) { out.set(chunk, offset); offset += chunk.length; }
    return out;
  }

  // Windowed-sinc low-pass below the new Nyquist frequency (no aliasing of 8-24 kHz into the
  // speech band), evaluated only where output samples fall, linearly interpolated between taps.
  function resample(input, from, to) {
    if (from === to) return input;
    const ratio = from / to;
    const length = Math.max(1, Math.floor(input.length / ratio));
    const out = new Float32Array(length);
    if (ratio < 1) {  // upsampling (a microphone below 16 kHz): interpolation is enough
      for (let i = 0; i < length; i++) {
        const t = i * ratio, k = Math.floor(t), f = t - k;
        out[i] = input[k] * (1 - f) + (k + 1 < input.length ? input[k + 1] : 0) * f;
      }
      return out;
    }
    const half = 32;
    const cutoff = 0.45 / ratio;  // cycles per input sample, a little under the new Nyquist (0.5 / ratio)
    const taps = new Float32Array(2 * half + 1);
    let sum = 0;
    for (let n = -half; n <= half; n++) {
      const x = 2 * cutoff * n;
      const sinc = n === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const hamming = 0.54 + 0.46 * Math.cos(Math.PI * n / half);
      taps[n + half] = 2 * cutoff * sinc * hamming;
      sum += taps[n + half];
    }
    for (let n = 0; n < taps.length; n++) taps[n] /= sum;  // unity gain at 0 Hz
    const filtered = (k) => {
      let acc = 0;
      for (let n = -half; n <= half; n++) {
        const j = k - n;
        if (j >= 0 && j < input.length) acc += taps[n + half] * input[j];
      }
      return acc;
    };
    for (let i = 0; i < length; i++) {
      const t = i * ratio, k = Math.floor(t), f = t - k;
      out[i] = f ? filtered(k) * (1 - f) + filtered(k + 1) * f : filtered(k);
    }
    return out;
  }

  // RIFF/WAVE, PCM format 1, mono, 16-bit little-endian.
  function encodeWav(wave, rate) {
    const buffer = new ArrayBuffer(44 + wave.length * 2);
    const view = new DataView(buffer);
    const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
    text(0, "RIFF");
    view.setUint32(4, 36 + wave.length * 2, true);
    text(8, "WAVE");
    text(12, "fmt ");
    view.setUint32(16, 16, true);  // size of the fmt chunk
    view.setUint16(20, 1, true);  // PCM
    view.setUint16(22, 1, true);  // mono
    view.setUint32(24, rate, true);
    view.setUint32(28, rate * 2, true);  // bytes per second
    view.setUint16(32, 2, true);  // bytes per frame
    view.setUint16(34, 16, true);  // bits per sample
    text(36, "data");
    view.setUint32(40, wave.length * 2, true);
    for (let i = 0; i < wave.length; i++) {
      const s = Math.max(-1, Math.min(1, wave[i]));
      view.setInt16(44 + 2 * i, s < 0 ? s * 0x8000 : s * 0x7fff, true);
    }
    return buffer;
  }

  // For tests and the curious: the same encoder the recorder uses.
  state.encodeWav = encodeWav;
  state.resample = resample;
});
