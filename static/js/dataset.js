// Dataset list: a demo button (a form marked data-busy="…") says so while its request runs and
// cannot be sent twice. The request only creates the dataset; a worker generates and ingests it,
// and the dataset's page shows that progress.
(function () {
  "use strict";
  document.querySelectorAll("form[data-busy]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      const button = form.querySelector("button[type=submit]");
      if (form.dataset.sent) { event.preventDefault(); return; }
      form.dataset.sent = "1";
      if (button) {
        button.dataset.label = button.textContent;
        button.setAttribute("aria-busy", "true");
        button.textContent = form.dataset.busy;
      }
    });
  });
  // Back from the dataset page (bfcache): the button works again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    document.querySelectorAll("form[data-busy][data-sent]").forEach(function (form) {
      delete form.dataset.sent;
      const button = form.querySelector("button[type=submit]");
      if (button && button.dataset.label) {
        button.removeAttribute("aria-busy");
        button.textContent = button.dataset.label;
      }
    });
  });
})();
