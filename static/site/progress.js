// Polls each instance's status while an operation is under way: the bar, the current step and the state move live;
// a failure shows its reason. When work the page started ends, the page reloads once to show its results.
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
      progress.current ? status.operation + ": " + progress.current + " (" + progress.done + "/" + progress.total + ")" : "";
    var failure = box.querySelector('[data-role="failure"]');
    if (failure) {
      failure.textContent = progress.failure || "";
      failure.hidden = !progress.failure;
    }
    var address = document.querySelector('[data-role="address"]');
    if (address && status.address && status.state === "running" && !address.querySelector("a")) {
      var link = document.createElement("a");
      link.href = status.address;
      link.textContent = status.address;
      address.textContent = "";
      address.appendChild(link);
    }
    var wasRunning = box.dataset.finished === "0";
    box.dataset.finished = progress.finished ? "1" : "0";
    // The work this page watched has ended: show its results (backups, versions, actions) once.
    // (A finished provision needs no reload: its state and address were updated in place.)
    if (wasRunning && progress.finished && box.dataset.reload === "1" && status.operation !== "Provision") {
      window.location.reload();
    }
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
