// repeaterd console: live refresh. A page that marks itself with
// data-refresh="<seconds>" on <main> is fetched again on that period while
// the tab is visible, and each element marked data-live is swapped for its
// namesake in the new copy (open <details> kept open); forms and everything
// else stay as they are.
(function () {
  "use strict";
  var main = document.querySelector("main[data-refresh]");
  if (!main) { return; }
  var period = Math.max(1, parseInt(main.getAttribute("data-refresh"), 10) || 2) * 1000;
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Console-Refresh": "1" } })
      .then(function (answer) {
        if (answer.redirected || !answer.ok) { throw new Error("refresh: " + answer.status); }
        return answer.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var next = fresh.getElementById(old.id);
          if (!next) { return; }
          // A <details> the reader opened stays open across the swap.
          old.querySelectorAll("details[open][id]").forEach(function (opened) {
            var again = next.querySelector("#" + CSS.escape(opened.id));
            if (again) { again.open = true; }
          });
          old.replaceWith(next);
        });
        var stamp = document.getElementById("refreshed");
        if (stamp) { stamp.textContent = new Date().toLocaleTimeString(); }
      })
      .catch(function () { /* keep the last copy; the next tick tries again */ })
      .then(function () { busy = false; });
  }
  window.setInterval(refresh, period);
})();
