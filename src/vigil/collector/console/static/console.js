/* Vigil console: show <time datetime> in the browser's time zone and count SLA timers
 * down live. Progressive: without JavaScript the UTC text the server rendered stays. */
(function () {
  "use strict";
  function pad(n) { return n < 10 ? "0" + n : "" + n; }
  function local(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function span(s) {
    s = Math.floor(Math.abs(s));
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
      m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + r + "s";
    return r + "s";
  }
  var zone = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "local time";
  function times(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      if (t.dataset.local) return;
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      t.title = t.textContent;
      t.textContent = local(d) + " " + zone;
      t.dataset.local = "1";
    });
  }
  function timers() {
    var now = Date.now();
    document.querySelectorAll(".sla[data-due]").forEach(function (e) {
      var left = (new Date(e.dataset.due).getTime() - now) / 1000;
      if (left < 0) {
        e.classList.add("breached");
        e.textContent = "breached " + span(-left) + " ago";
      } else {
        e.textContent = span(left) + " left";
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    times(document);
    timers();
    setInterval(timers, 1000);
  });
  document.addEventListener("htmx:afterSwap", function (ev) { times(ev.target); timers(); });
})();
