// Quant Hub's own glue: the press-and-hold Kill All button, the time-to-live
// countdown and the websocket status badge. htmx does everything else.
(function () {
  "use strict";

  // Press and hold: the button fires "hold-confirmed" (its hx-trigger) only after
  // data-hold-ms of continuous pressing; releasing or leaving earlier cancels.
  function armHold(button) {
    if (button.dataset.armed) return;
    button.dataset.armed = "1";
    var holdMs = parseInt(button.dataset.holdMs || "2000", 10);
    var timer = null;
    var started = 0;

    function cancel() {
      if (timer !== null) {
        clearTimeout(timer);
        timer = null;
      }
      button.classList.remove("holding");
    }
    function start(event) {
      if (event.type === "keydown" && event.key !== " " && event.key !== "Enter") return;
      if (event.type === "keydown" && event.repeat) return;
      event.preventDefault();
      cancel();
      started = Date.now();
      button.classList.add("holding");
      timer = setTimeout(function () {
        timer = null;
        button.classList.remove("holding");
        button.classList.add("confirmed");
        button.dataset.heldMs = String(Date.now() - started);
        htmx.trigger(button, "hold-confirmed");
      }, holdMs);
    }
    button.addEventListener("pointerdown", start);
    button.addEventListener("keydown", start);
    ["pointerup", "pointerleave", "pointercancel", "keyup", "blur"].forEach(function (name) {
      button.addEventListener(name, cancel);
    });
    button.addEventListener("contextmenu", function (e) { e.preventDefault(); });
  }

  function armAll(root) {
    (root || document).querySelectorAll(".hold-button").forEach(armHold);
  }

  // Time-to-live cells count down between pushes.
  function tick() {
    document.querySelectorAll(".ttl[data-ttl]").forEach(function (el) {
      var left = Math.max(parseInt(el.dataset.ttl, 10) - 1, 0);
      el.dataset.ttl = String(left);
      el.textContent = Math.floor(left / 60) + ":" + String(left % 60).padStart(2, "0");
    });
  }

  function setConnection(state, text) {
    var el = document.getElementById("connection");
    if (!el) return;
    el.dataset.state = state;
    el.querySelector(".text").textContent = text;
  }

  document.addEventListener("DOMContentLoaded", function () {
    armAll(document);
    setInterval(tick, 1000);
  });
  // An expiry picker (or any select marked data-autosubmit) submits its form on change.
  document.addEventListener("change", function (e) {
    if (e.target.matches && e.target.matches("select[data-autosubmit]") && e.target.form) e.target.form.submit();
  });
  // A refused action (403, 404, 409 …) says so instead of doing nothing.
  function toast(text) {
    var el = document.getElementById("toast");
    if (!el) return;
    el.textContent = text;
    el.hidden = false;
    clearTimeout(el._timer);
    el._timer = setTimeout(function () { el.hidden = true; }, 8000);
  }
  document.addEventListener("htmx:responseError", function (e) {
    var xhr = e.detail.xhr;
    var text = (xhr.responseText || "").replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
    toast((xhr.status === 403 ? "Refused: " : "Failed (" + xhr.status + "): ") + (text || xhr.statusText).slice(0, 200));
  });
  document.addEventListener("htmx:sendError", function () { toast("The server could not be reached."); });
  document.addEventListener("htmx:load", function (e) { armAll(e.target); });
  document.addEventListener("htmx:oobAfterSwap", function (e) { armAll(e.target); });
  document.addEventListener("htmx:afterSwap", function (e) { armAll(e.target); });
  document.addEventListener("htmx:wsOpen", function () { setConnection("open", "live"); });
  document.addEventListener("htmx:wsClose", function () { setConnection("closed", "disconnected, retrying…"); });
  document.addEventListener("htmx:wsError", function () { setConnection("closed", "connection error"); });
})();
