// Keyboard shortcuts for the review page: a key clicks the element whose data-key it is
// (1, 2, 3 decide; r releases; n takes the next item; c claims; / goes to the note).
// Typing in a field never triggers a shortcut; Escape leaves the field.
(function () {
  "use strict";
  var submitting = false;
  document.addEventListener("submit", function (event) {
    if (submitting) { event.preventDefault(); return; }  // one decision per key press
    submitting = true;
  });
  window.addEventListener("pageshow", function () { submitting = false; });
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    var target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) {
      if (event.key === "Escape") target.blur();
      return;
    }
    var element = null;
    document.querySelectorAll("[data-key]").forEach(function (candidate) {
      if (!element && candidate.getAttribute("data-key") === event.key) element = candidate;
    });
    if (!element) return;
    event.preventDefault();
    if (element.tagName === "TEXTAREA" || element.tagName === "INPUT") element.focus();
    else element.click();
  });
})();
