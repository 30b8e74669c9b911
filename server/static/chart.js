// Perfdata graphs of the agent page (server/src/dashboard/charts.rs): each
// <figure class="chart" data-series="URL"> is drawn with uPlot from its
// series, asked for with points = the figure's width in pixels, which the
// server downsamples to. No graph, no request.
(function () {
  "use strict";
  if (!window.uPlot || !window.fetch) {
    return;
  }

  function draw(figure) {
    var width = Math.max(200, Math.round(figure.clientWidth || 600));
    var url = figure.getAttribute("data-series") + "&points=" + width;
    window
      .fetch(url, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("the server answered " + response.status);
        }
        return response.json();
      })
      .then(function (series) {
        figure.textContent = "";
        var label = series.metric + (series.uom ? " (" + series.uom + ")" : "");
        var options = {
          width: width,
          height: 160,
          series: [{}, { label: label, stroke: "#3056d3", width: 1.5 }],
        };
        new window.uPlot(options, [series.t, series.v], figure);
        figure.setAttribute("data-points", String(series.t.length));
      })
      .catch(function (error) {
        figure.textContent = "No graph: " + error.message;
      });
  }

  var figures = document.querySelectorAll("figure.chart[data-series]");
  for (var i = 0; i < figures.length; i++) {
    draw(figures[i]);
  }
})();
