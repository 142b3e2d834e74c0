// The dashboard's live parts. Every element with `data-live` is redrawn
// from that URL (a fragment the server renders) every `data-live-every`
// milliseconds. The pages are complete without this script; with it they
// stay current without a reload.
(function () {
  "use strict";

  // A region is left alone while someone types in it: a redraw would
  // throw their input away.
  function busy(region) {
    var active = document.activeElement;
    return region.getAttribute("data-live-dirty") === "1" ||
      (active !== null && region.contains(active) &&
        /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName));
  }

  function signedOut() {
    var banner = document.getElementById("live-status");
    if (banner !== null) {
      banner.textContent = "Your session has ended: reload the page to sign in again.";
      banner.hidden = false;
    }
  }

  function start(region) {
    var url = region.getAttribute("data-live");
    var every = parseInt(region.getAttribute("data-live-every") || "2000", 10);
    region.addEventListener("input", function () {
      region.setAttribute("data-live-dirty", "1");
    });

    function later() {
      window.setTimeout(tick, every);
    }

    function tick() {
      if (document.hidden || busy(region)) {
        later();
        return;
      }
      fetch(url, {
        headers: { "X-Dashboard-Live": "1" },
        credentials: "same-origin",
        cache: "no-store"
      }).then(function (response) {
        if (response.status === 401) {
          signedOut();
          return null;
        }
        if (!response.ok) {
          throw new Error("status " + response.status);
        }
        var version = response.headers.get("X-Live-Version");
        return response.text().then(function (html) {
          return { html: html, version: version };
        });
      }).then(function (fragment) {
        if (fragment === null) {
          return;
        }
        // Replaced only when its content changed, and not under the hands
        // of someone typing in it.
        var current = region.getAttribute("data-live-version");
        if ((fragment.version === null || fragment.version !== current) && !busy(region)) {
          region.innerHTML = fragment.html;
          if (fragment.version !== null) {
            region.setAttribute("data-live-version", fragment.version);
          }
        }
        region.setAttribute("data-live-updated", String(Date.now()));
        region.removeAttribute("data-live-error");
        later();
      }).catch(function (error) {
        region.setAttribute("data-live-error", String(error));
        later();
      });
    }

    later();
  }

  document.querySelectorAll("[data-live]").forEach(start);
})();
