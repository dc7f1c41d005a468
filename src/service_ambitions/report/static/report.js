/* service-ambitions report: the filter box of the index. Plain script, no network, no library.
   Services rows are hidden when they do not match; heatmap rows are faded (an SVG keeps its layout). */
(function () {
  "use strict";
  var box = document.getElementById("filter");
  if (!box) {
    return;
  }
  var services = Array.prototype.slice.call(document.querySelectorAll("#service-table tbody tr"));
  var items = Array.prototype.slice.call(document.querySelectorAll("[data-filter]"));
  var count = document.getElementById("filter-count");
  var texts = services.map(function (row) {
    return row.textContent.toLowerCase();
  });
  var itemTexts = items.map(function (node) {
    return node.getAttribute("data-filter").toLowerCase();
  });

  function matches(text, terms) {
    for (var i = 0; i < terms.length; i += 1) {
      if (text.indexOf(terms[i]) === -1) {
        return false;
      }
    }
    return true;
  }

  function apply() {
    var terms = box.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    services.forEach(function (row, index) {
      var visible = matches(texts[index], terms);
      row.hidden = !visible;
      shown += visible ? 1 : 0;
    });
    items.forEach(function (node, index) {
      var visible = matches(itemTexts[index], terms);
      if (node.namespaceURI === "http://www.w3.org/2000/svg") {
        node.classList.toggle("faded", !visible);
      } else {
        node.hidden = !visible;
      }
    });
    count.textContent = terms.length ? shown + " of " + services.length + " services" : services.length + " services";
  }

  box.parentNode.hidden = false;
  box.addEventListener("input", apply);
  apply();
})();
