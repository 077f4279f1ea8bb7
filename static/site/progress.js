// Polls each unfinished instance's status and moves its progress bar until the work ends.
(function () {
  "use strict";
  var POLL_MS = 1000;

  function update(box, status) {
    var progress = status.progress;
    box.querySelector('[data-role="state"]').textContent = status.state_label;
    box.querySelector('[data-role="state"]').className = "state state-" + status.state;
    box.querySelector('[data-role="bar"]').style.width = progress.percent + "%";
    box.querySelector(".progress").setAttribute("aria-valuenow", progress.percent);
    box.querySelector('[data-role="step"]').textContent =
      progress.current ? progress.current + " (" + progress.done + "/" + progress.total + ")" : "";
    box.dataset.finished = progress.finished ? "1" : "0";
  }

  function poll(box) {
    if (box.dataset.finished === "1") return;
    fetch(box.dataset.statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (status) { if (status) update(box, status); })
      .catch(function () {})
      .then(function () { if (box.dataset.finished !== "1") setTimeout(function () { poll(box); }, POLL_MS); });
  }

  document.querySelectorAll("[data-status-url]").forEach(poll);
})();
