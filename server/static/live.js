// Live updates of the dashboard (server/src/dashboard/live.rs): one
// EventSource per tab. A `row` event carries a rendered element with an id;
// the element of that id on the page is replaced. A row the page does not
// show but whose list it does (data-list) makes the list refetch itself
// (a new agent). A `reset` means events were lost: the page reloads; a
// `logout` that the session ended: to the login form.
// EventSource reconnects by itself, sending Last-Event-ID.
(function () {
  "use strict";
  // Content-Security-Policy violations (an inline style htmx or uPlot
  // might add) are counted on <body data-csp-violations>, naming the last
  // directive: the browser tests check there are none.
  document.addEventListener("securitypolicyviolation", function (event) {
    var body = document.body;
    var seen = Number(body.getAttribute("data-csp-violations") || "0") + 1;
    body.setAttribute("data-csp-violations", String(seen));
    body.setAttribute("data-csp-last", event.violatedDirective + " " + event.blockedURI);
  });

  var url = document.body.getAttribute("data-live");
  if (!url || !window.EventSource) {
    return;
  }
  var source = new EventSource(url);
  var refetching = false;
  var lastRefetch = 0;
  var pending = null;

  // At most one refetch a second: in a busy fleet many rows are not on
  // this page, and each costs the server a page's queries.
  function refetch(list) {
    if (refetching || pending || !window.htmx) {
      return;
    }
    var wait = lastRefetch + 1000 - Date.now();
    if (wait > 0) {
      pending = window.setTimeout(function () {
        pending = null;
        refetch(list);
      }, wait);
      return;
    }
    lastRefetch = Date.now();
    refetching = true;
    window.htmx
      .ajax("GET", window.location.href, {
        target: "#" + list.id,
        select: "#" + list.id,
        swap: "outerHTML",
      })
      .finally(function () {
        refetching = false;
      });
  }

  source.addEventListener("row", function (event) {
    var template = document.createElement("template");
    template.innerHTML = event.data.trim();
    var row = template.content.firstElementChild;
    if (!row || !row.id) {
      return;
    }
    var old = document.getElementById(row.id);
    if (old) {
      old.replaceWith(row);
      return;
    }
    var list = row.getAttribute("data-list");
    var shown = list && document.getElementById(list);
    if (shown) {
      refetch(shown);
    }
  });

  source.addEventListener("reset", function () {
    window.location.reload();
  });

  // The session ended (logout elsewhere, expiry): to the login form.
  source.addEventListener("logout", function () {
    source.close();
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
  });

  document.body.setAttribute("data-live-state", "open");
  source.addEventListener("open", function () {
    document.body.setAttribute("data-live-state", "open");
  });
  source.addEventListener("error", function () {
    document.body.setAttribute("data-live-state", "reconnecting");
    // CLOSED: the server answered the reconnect with something else than a
    // stream (the session ended meanwhile: a redirect to the login form).
    // EventSource gives up then; the page reloads and shows why.
    if (source.readyState === EventSource.CLOSED) {
      window.setTimeout(function () {
        window.location.reload();
      }, 5000);
    }
  });
})();
