// Upload form: send the archive by XHR so the user sees a real byte progress bar, and show the
// server's errors next to the fields. Without JavaScript the same form posts normally.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;

  // Options that do not apply to the chosen kind are dimmed (they are still sent, and ignored):
  // image size is for images, clip length for speech; "Detect automatically" keeps both.
  const kind = form.elements.kind;
  const onlyFor = {image_size: "image", clip_seconds: "audio"};
  function showApplicable() {
    Object.keys(onlyFor).forEach(function (name) {
      const field = form.querySelector('[data-field="' + name + '"]');
      if (!field || !kind) return;
      const off = kind.value !== "auto" && kind.value !== "" && kind.value !== onlyFor[name];
      field.classList.toggle("not-applicable", off);
      field.title = off ? "Not used for this kind of dataset" : "";
    });
  }
  if (kind) {
    kind.addEventListener("change", showApplicable);
    showApplicable();
  }

  if (!window.XMLHttpRequest || !window.FormData) return;

  const fileInput = form.querySelector("input[type=file]");
  const submit = document.getElementById("upload-submit");
  const label = submit.textContent;  // the form's own words ("Upload", "Upload and predict")
  const cancel = document.getElementById("upload-cancel");
  const row = document.getElementById("upload-progress");
  const bar = row.querySelector("progress");
  const text = document.getElementById("upload-progress-text");
  const formError = document.getElementById("upload-error");
  let xhr = null;

  function size(bytes) {
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (bytes >= 1024 && i < units.length - 1) { bytes /= 1024; i++; }
    return (i === 0 ? bytes : bytes.toFixed(bytes < 10 ? 1 : 0)) + " " + units[i];
  }

  function showErrors(errors) {
    form.querySelectorAll("[data-error-for]").forEach(function (el) { el.hidden = true; el.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) { el.removeAttribute("aria-invalid"); });
    formError.hidden = true;
    let first = null;
    Object.keys(errors).forEach(function (field) {
      const message = errors[field].join(" ");
      const slot = form.querySelector('[data-error-for="' + field + '"]');
      const input = form.elements[field];
      if (slot && input) {
        slot.textContent = message;
        slot.hidden = false;
        input.setAttribute("aria-invalid", "true");
        if (input.closest("details")) input.closest("details").open = true;
        first = first || input;
      } else {
        formError.textContent = (formError.textContent ? formError.textContent + " " : "") + message;
        formError.hidden = false;
      }
    });
    if (first) first.focus();
  }

  function busy(on) {
    submit.disabled = on;
    submit.setAttribute("aria-busy", on ? "true" : "false");
    submit.textContent = on ? "Uploading…" : label;
    cancel.hidden = !on;
    row.hidden = !on;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const file = fileInput.files[0];
    const limit = Number(fileInput.dataset.maxBytes || 0);
    if (file && limit && file.size > limit) {  // the server says the same, but only after the upload
      showErrors({archive: [file.name + " is " + size(file.size) + "; the largest upload accepted is " + size(limit) + "."]});
      return;
    }
    xhr = new XMLHttpRequest();
    const started = Date.now();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      bar.value = e.loaded / e.total;
      const seconds = (Date.now() - started) / 1000;
      const rate = seconds > 0.5 ? " · " + size(e.loaded / seconds) + "/s" : "";
      text.textContent = Math.floor(100 * e.loaded / e.total) + " % · " + size(e.loaded) + " of " + size(e.total) + rate;
    });
    xhr.upload.addEventListener("load", function () {
      bar.removeAttribute("value");  // indeterminate while the server stores the file
      text.textContent = "Checking the archive…";
    });
    xhr.addEventListener("load", function () {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch (err) { data = null; }
      if (xhr.status === 201 && data && data.url) {
        window.location.assign(data.url);
        return;
      }
      busy(false);
      if (xhr.status === 400 && data && data.errors) {
        showErrors(data.errors);
      } else if (xhr.status === 413) {
        showErrors({__all__: ["The server refused the upload because it is too large."]});
      } else if (!data) {
        showErrors({__all__: ["The upload did not go through (HTTP " + xhr.status + "). Your session may have expired: reload the page and try again."]});
      } else {
        showErrors({__all__: ["The upload failed (HTTP " + xhr.status + "). Please try again."]});
      }
    });
    xhr.addEventListener("error", function () {
      busy(false);
      showErrors({__all__: ["The connection was lost during the upload. Please try again."]});
    });
    xhr.addEventListener("abort", function () {
      busy(false);
      text.textContent = "";
      showErrors({});
    });
    busy(true);
    bar.value = 0;
    text.textContent = "0 %";
    xhr.send(new FormData(form));
  });

  cancel.addEventListener("click", function () { if (xhr) xhr.abort(); });
})();
