// Keyboard shortcuts for the review page: a key clicks the element whose data-key it is
// (1, 2, 3 decide; a letter picks a reason; r releases; n takes the next item; c claims;
// u undoes your last decision; v reveals the picture; / goes to the note).
// Typing in a field never triggers a shortcut; Escape leaves the field.
// Pictures start blurred: a click on one, or v, reveals it for this item only.
// A confirmed mismatch without a required reason is stopped here, before the server refuses it.
(function () {
  "use strict";
  var submitting = false;
  document.addEventListener("submit", function (event) {
    if (submitting) { event.preventDefault(); return; }  // one decision per key press
    var button = event.submitter;
    var reasons = document.getElementById("reasons");
    if (button && button.value === "confirmed_mismatch" && reasons &&
        reasons.getAttribute("data-required") === "true" &&
        !reasons.querySelector("input[name=reason]:checked")) {
      event.preventDefault();
      reasons.classList.add("missing");
      var first = reasons.querySelector("input[name=reason]");
      if (first) first.focus();
      return;
    }
    submitting = true;
  });
  window.addEventListener("pageshow", function () { submitting = false; });
  function reveal() {
    var shield = document.getElementById("shield");
    if (shield) shield.classList.add("revealed");
  }
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (target && (target.id === "reveal" || target.id === "picture")) reveal();
  });
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target && target.name === "reason") {
      var reasons = document.getElementById("reasons");
      if (reasons) reasons.classList.remove("missing");
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      if (event.key === "Escape") target.blur();
      if (target.type !== "radio" || event.key.length !== 1) return;
    }
    var element = null;
    document.querySelectorAll("[data-key]").forEach(function (candidate) {
      if (!element && candidate.getAttribute("data-key") === event.key) element = candidate;
    });
    if (!element) return;
    event.preventDefault();
    if (element.tagName === "TEXTAREA" || (element.tagName === "INPUT" && element.type !== "radio")) {
      element.focus();
    } else {
      element.click();
      if (element.type === "radio") element.blur();
    }
  });
})();
