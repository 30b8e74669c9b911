// Live updates of the dashboard (server/src/dashboard/live.rs): one
// EventSource per tab, on a stream carrying only what the page shows. Its
// address is the page's list's data-live-scope (the fleet page: its rows,
// and the newest event id when it was rendered) or else the body's
// data-live. A `row` event carries a rendered element with an id; the
// element of that id on the page is replaced. A `list` event means an agent
// was added or removed: the list (data-refetch) refetches itself, at most
// once a second, and the stream reconnects for the rows it then shows. A
// `reset` means events were lost: the page reloads; a `logout` that the
// session ended: to the login form. EventSource reconnects by itself,
// sending Last-Event-ID. <body data-live-frames> counts the events
// received, data-live-strays the rows not on the page (the browser tests
// check what reaches a tab).
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

  var base = document.body.getAttribute("data-live");
  if (!base || !window.EventSource) {
    return;
  }
  var refetching = false;
  var lastRefetch = 0;
  var pending = null;

  function scope() {
    var list = document.querySelector("[data-live-scope]");
    return list ? list.getAttribute("data-live-scope") : base;
  }

  function counted(name) {
    var body = document.body;
    body.setAttribute(name, String(Number(body.getAttribute(name) || "0") + 1));
  }

  // At most one refetch a second: agents added in a burst (a fleet
  // enrolling) cost the server a page's queries each.
  function refetch() {
    var list = document.querySelector("[data-refetch]");
    if (!list || refetching || pending || !window.htmx) {
      return;
    }
    var wait = lastRefetch + 1000 - Date.now();
    if (wait > 0) {
      pending = window.setTimeout(function () {
        pending = null;
        refetch();
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

  function onRow(event) {
    counted("data-live-frames");
    var template = document.createElement("template");
    template.innerHTML = event.data.trim();
    var row = template.content.firstElementChild;
    var old = row && row.id && document.getElementById(row.id);
    if (old) {
      old.replaceWith(row);
    } else {
      // Not on this page: the server should not have sent it.
      counted("data-live-strays");
    }
  }

  function onList() {
    counted("data-live-frames");
    refetch();
  }

  function onReset() {
    window.location.reload();
  }

  // The session ended (logout elsewhere, expiry): to the login form.
  function onLogout() {
    source.close();
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
  }

  function onOpen() {
    document.body.setAttribute("data-live-state", "open");
  }

  function onError() {
    document.body.setAttribute("data-live-state", "reconnecting");
    // CLOSED: the server answered the reconnect with something else than a
    // stream (the session ended meanwhile: a redirect to the login form).
    // EventSource gives up then; the page reloads and shows why.
    if (source.readyState === EventSource.CLOSED) {
      window.setTimeout(function () {
        window.location.reload();
      }, 5000);
    }
  }

  function open(url) {
    var s = new EventSource(url);
    s.addEventListener("row", onRow);
    s.addEventListener("list", onList);
    s.addEventListener("reset", onReset);
    s.addEventListener("logout", onLogout);
    s.addEventListener("open", onOpen);
    s.addEventListener("error", onError);
    return s;
  }

  var current = scope();
  var source = open(current);
  document.body.setAttribute("data-live-state", "open");

  // The list was swapped (a refetch, the filter form): its rows changed,
  // and its new data-live-scope starts where the new rows were rendered.
  document.addEventListener("htmx:afterSettle", function () {
    var next = scope();
    if (next !== current) {
      source.close();
      current = next;
      source = open(next);
    }
  });
})();
