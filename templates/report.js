// Enhancements only: the content, the status and model filters and the overlay choices
// all work without JavaScript.
(function () {
  "use strict";
  var records = Array.prototype.slice.call(document.querySelectorAll(".record"));
  var search = document.getElementById("filter-name");
  var counter = document.getElementById("shown-count");
  document.documentElement.classList.add("js");
  Array.prototype.forEach.call(document.querySelectorAll(".js-only"), function (element) {
    element.hidden = false;
  });

  // Counts from the filters' state, not from computed styles: asking the style of 1,000
  // hidden records one by one would take seconds.
  function updateCount() {
    var hiding = Array.prototype.filter
      .call(document.querySelectorAll(".filters [data-hides]"), function (box) {
        return !box.checked;
      })
      .map(function (box) {
        return box.getAttribute("data-hides");
      });
    var shown = records.filter(function (record) {
      return !record.hidden && !hiding.some(function (name) {
        return record.classList.contains(name);
      });
    }).length;
    counter.textContent = shown + " of " + records.length + " records shown";
  }

  function filterByName() {
    var query = search.value.trim().toLowerCase();
    records.forEach(function (record) {
      var test = (record.getAttribute("data-test") || "").toLowerCase();
      record.hidden = query !== "" && test.indexOf(query) === -1;
    });
    updateCount();
  }

  // Any map of the grid can be laid over the image: it becomes the record's "clicked" choice.
  // The cell's own background, scaled from the cell's width to the stage's: this holds for
  // layers whose maps have another size than the last layer's, too.
  function showInOverlay(cell) {
    var record = cell.closest(".record");
    var stage = record.querySelector(".stage");
    var custom = record.querySelector(".choice.custom");
    var label = custom.nextElementSibling;
    var layer = stage.querySelector(".layers > :last-child");
    var style = getComputedStyle(cell);
    function scaled(value) {
      return value
        .split(" ")
        .map(function (part) {
          return (parseFloat(part) * stage.clientWidth) / cell.clientWidth + "px";
        })
        .join(" ");
    }
    layer.style.backgroundPosition = scaled(style.backgroundPosition);
    layer.style.backgroundSize = scaled(style.backgroundSize);
    custom.hidden = false;
    label.hidden = false;
    label.textContent = cell.title.split(":")[0];
    custom.checked = true;
  }

  // One tab stop per grid (its first map); arrow keys move between maps, Enter shows one.
  Array.prototype.forEach.call(document.querySelectorAll(".grid tbody"), function (body) {
    var first = body.querySelector(".map");
    if (first) {
      first.tabIndex = 0;
    }
  });

  function moveFocus(cell, key) {
    var td = cell.parentElement;
    var row = td.parentElement;
    var rows = row.parentElement.rows;
    var r = row.sectionRowIndex + (key === "ArrowDown") - (key === "ArrowUp");
    var c = td.cellIndex + (key === "ArrowRight") - (key === "ArrowLeft");
    var target = rows[r] && rows[r].cells[c] && rows[r].cells[c].querySelector(".map");
    if (target) {
      cell.tabIndex = -1;
      target.tabIndex = 0;
      target.focus();
    }
  }

  document.addEventListener("click", function (event) {
    var cell = event.target.closest(".grid .map");
    if (cell) {
      showInOverlay(cell);
    }
  });
  document.addEventListener("keydown", function (event) {
    var active = document.activeElement;
    var onMap = active.matches(".grid .map");
    if (onMap && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      showInOverlay(active);
    } else if (onMap && /^Arrow(Up|Down|Left|Right)$/.test(event.key)) {
      event.preventDefault();
      moveFocus(active, event.key);
    } else if (event.key === "/" && !/^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
      event.preventDefault();
      search.focus();
    }
  });
  search.addEventListener("input", filterByName);
  document.querySelector(".filters").addEventListener("change", updateCount);
  updateCount();
})();
