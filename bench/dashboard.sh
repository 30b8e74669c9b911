#!/bin/sh
# Dashboard benchmark (docs/benchmarks.md, "Dashboard: 10,000 agents, a
# browser, 20 tabs"), in one run against one release server:
#
# 1. outrider-loadgen --scripted starts the server and AGENTS simulated
#    agents x CHECKS checks (one batch of CHECKS results every 10 s each),
#    then obeys commands on a FIFO (bench/loadgen/src/scripted.rs);
# 2. pages: a login with the admin token (curl, cookie jar), FETCHES
#    fetches of the fleet page (time to first byte, bytes), and the
#    x-outrider-statements header of every page;
# 3. presence: headless Chromium (chromedriver, WebDriver over curl) shows
#    the fleet page; a MutationObserver records Date.now() of each row's
#    presence change; DROPS agents shown on it drop their connection one by
#    one; a sample is the browser's "down" minus the loadgen's drop time
#    (same machine, same clock);
# 4. idle: two browsers on a freshly loaded fleet page for IDLE_SECS
#    while the agents report; each one's JS heap after a forced gc(), one
#    every IDLE_FAST s, the other every IDLE_SLOW s, so growth that follows
#    the samples (a WebDriver `execute` each) tells from growth that
#    follows the clock;
# 5. ingest: the agents in burst mode (each sends its next batch once the
#    last is acked); PAIRS rounds of three WINDOW_SECS windows, in the
#    order none, curl, Chromium and the reverse in every other round: no
#    dashboard, TABS streams of curl (SSE clients on the fleet page's own
#    filtered stream, with the session cookie), TABS real Chromium tabs on
#    the fleet page (TAB_BROWSERS browsers: over HTTP/1.1 a browser holds
#    at most 6 connections to one host, so one browser cannot keep 20
#    streams open); CHURN agents a second (not on the tabs' page) drop and
#    come back in every arm; results/s acked by the server, its CPU
#    seconds per 1,000 results, and per round the ratio of each arm to
#    that round's no-dashboard window.
#
#   bench/dashboard.sh                      # builds, then the full run (about 32 min)
#   SKIP_BUILD=1 bench/dashboard.sh         # reuse target/release
#   AGENTS=1000 IDLE_SECS=60 PAIRS=1 SKIP_BUILD=1 bench/dashboard.sh   # a smoke run
#
# Bounded: every wait has a timeout, the loadgen stops by itself after
# --scripted-secs, and the EXIT trap stops every child (browser, driver,
# stream clients, loadgen and with it the server). Results and logs go to
# $WORK (default /tmp/outrider-dashboard-bench): summary.txt holds the figures.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

AGENTS=${AGENTS:-10000}
CHECKS=${CHECKS:-10}
FETCHES=${FETCHES:-30}
DROPS=${DROPS:-25}
IDLE_SECS=${IDLE_SECS:-600}
IDLE_FAST=${IDLE_FAST:-10}
IDLE_SLOW=${IDLE_SLOW:-60}
TABS=${TABS:-20}
PAIRS=${PAIRS:-6}
WINDOW_SECS=${WINDOW_SECS:-20}
CHURN=${CHURN:-1}
TAB_BROWSERS=${TAB_BROWSERS:-4}
WARMUP_SECS=${WARMUP_SECS:-30}
WORK=${WORK:-/tmp/outrider-dashboard-bench}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}

LOADGEN_PID=
DRIVER_PID=
SID=
# The second idle browser: chromedriver pid, session URL.
SLOW_DRIVER=
SLOW_SESSION=
SSE_PIDS=
# The tab browsers of the ingest arm: chromedriver pids, session URLs.
TAB_DRIVERS=
TAB_SESSIONS=

# Everything this run started, youngest first.
finish() {
    # shellcheck disable=SC2086 # a list of pids
    [ -z "$SSE_PIDS" ] || stop_pids $SSE_PIDS
    close_tabs
    [ -z "$SLOW_SESSION" ] || curl -s -m 10 -X DELETE "$SLOW_SESSION" >/dev/null 2>&1
    [ -z "$SLOW_DRIVER" ] || stop_pids "$SLOW_DRIVER"
    [ -z "$SID" ] || curl -s -m 10 -X DELETE "$WD/session/$SID" >/dev/null 2>&1
    [ -z "$DRIVER_PID" ] || stop_pids "$DRIVER_PID"
    if [ -n "$LOADGEN_PID" ]; then
        # The end of its input is `stop`: goodbyes, then the server's SIGTERM.
        exec 3>&-
        i=0
        while kill -0 "$LOADGEN_PID" 2>/dev/null && [ $i -lt 900 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        stop_pids "$LOADGEN_PID"
    fi
}

cmd() { echo "$*" >&3; }

# answer PATTERN TIMEOUT: the first line of the loadgen's output matching
# the extended regex PATTERN, waiting for it.
answer() {
    wait_for "loadgen: $1" "$2" grep -Eq "$1" "$WORK/loadgen.log"
    grep -E "$1" "$WORK/loadgen.log" | head -n 1
}

# count TAG: a COUNT line of the loadgen (acked samples, CPU seconds).
count() {
    cmd "count $1"
    answer "^COUNT $1 " 20
}

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# stats FILE: n, min, p50, p95, max of the numbers in FILE.
stats() {
    printf 'n=%s min=%s p50=%s p95=%s max=%s' "$(wc -l <"$1" | tr -d ' ')" \
        "$(pct "$1" 0)" "$(pct "$1" 0.5)" "$(pct "$1" 0.95)" "$(pct "$1" 1)"
}

out() { echo "$*" | tee -a "$WORK/summary.txt"; }

# median FILE: the median of the numbers in FILE (the mean of the middle
# two of an even count).
median() {
    sort -n "$1" | awk '{ v[NR] = $1 } END { if (NR == 0) { print "n/a"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# wd METHOD PATH [JSON]: one WebDriver call in the session.
wd() {
    body=${3:-'{}'}
    curl -s -m 60 -X "$1" -H 'Content-Type: application/json' -d "$body" "$WD/session/$SID$2"
}

# js SCRIPT [ARGS_JSON]: runs SCRIPT in the page; prints the JSON answer.
js() {
    wd POST /execute/sync "$(jq -cn --arg s "$1" --argjson a "${2:-[]}" '{script: $s, args: $a}')"
}

goto() { wd POST /url "$(jq -cn --arg u "$DASH$1" '{url: $u}')" >/dev/null; }

# Records every presence change of a fleet row (id, text, Date.now()) in
# window.__bench; returns when this page was loaded (a reload, after a
# `reset`, starts a new record).
OBSERVER='
if (!window.__bench) {
  var bench = { loadedAt: Date.now(), changes: [] }, last = {};
  var scan = function () {
    var rows = document.querySelectorAll("tr.agent");
    for (var i = 0; i < rows.length; i++) {
      var p = rows[i].querySelector(".presence");
      var v = p ? p.textContent.trim() : "";
      if (last[rows[i].id] !== undefined && last[rows[i].id] !== v) {
        bench.changes.push([rows[i].id, v, Date.now()]);
      }
      last[rows[i].id] = v;
    }
  };
  scan();
  new MutationObserver(scan).observe(document.body, { childList: true, subtree: true });
  window.__bench = bench;
}
return window.__bench.loadedAt;'

# start_browser PROFILE: chromedriver and a logged-in headless Chromium
# on the fleet page; sets WD, SID and DRIVER_PID.
start_browser() {
    port=$(free_port)
    WD="http://127.0.0.1:$port"
    chromedriver --port="$port" >"$WORK/chromedriver-$1.log" 2>&1 &
    DRIVER_PID=$!
    wait_for chromedriver 20 curl -sf -o /dev/null "$WD/status"
    mkdir -p "$WORK/$1"
    caps=$(jq -cn --arg dir "--user-data-dir=$WORK/$1" '{capabilities: {alwaysMatch: {
        "goog:chromeOptions": {binary: "/usr/bin/chromium", args: [
          "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
          "--disable-background-networking", "--disable-component-update",
          "--disable-sync", "--no-first-run", "--window-size=1280,900",
          "--enable-precise-memory-info", "--js-flags=--expose-gc", $dir]}}}}')
    SID=$(curl -s -m 60 -X POST -H 'Content-Type: application/json' -d "$caps" "$WD/session" |
        jq -r '.value.sessionId // empty')
    [ -n "$SID" ] || die "no WebDriver session; see $WORK/chromedriver-$1.log"
    goto /login
    js 'document.getElementById("token").value = arguments[0];
        document.getElementById("login").click(); return 1;' "$(jq -cn --arg t "$ADMIN" '[$t]')" >/dev/null
    wait_for "the browser's login" 30 on_fleet_page
}

# open_tabs N: N fleet pages in TAB_BROWSERS browsers (new windows).
open_tabs() {
    per=$(( ($1 + TAB_BROWSERS - 1) / TAB_BROWSERS ))
    opened=0 b=0
    while [ $opened -lt "$1" ]; do
        start_browser "tabs-$RUN-$b"
        TAB_DRIVERS="$TAB_DRIVERS $DRIVER_PID"
        TAB_SESSIONS="$TAB_SESSIONS $WD/session/$SID"
        opened=$((opened + 1))
        w=1
        while [ $w -lt "$per" ] && [ $opened -lt "$1" ]; do
            handle=$(wd POST /window/new '{"type":"window"}' | jq -r .value.handle)
            wd POST /window "$(jq -cn --arg h "$handle" '{handle: $h}')" >/dev/null
            goto /
            opened=$((opened + 1))
            w=$((w + 1))
        done
        b=$((b + 1))
    done
    DRIVER_PID=''
    SID=''
}

# tab_activity: over every open tab of the ingest arm, the live events
# received, the rows received that the page does not show, and the page
# refetches (XHR), summed: "frames strays refetches".
tab_activity() {
    for s in $TAB_SESSIONS; do
        for h in $(curl -s -m 30 "$s/window/handles" | jq -r '.value[]'); do
            curl -s -m 30 -X POST -H 'Content-Type: application/json' \
                -d "$(jq -cn --arg h "$h" '{handle: $h}')" "$s/window" >/dev/null
            curl -s -m 30 -X POST -H 'Content-Type: application/json' -d '{"script":
                "var b = document.body; return [Number(b.getAttribute(\"data-live-frames\") || 0), Number(b.getAttribute(\"data-live-strays\") || 0), performance.getEntriesByType(\"resource\").filter(function (e) { return e.initiatorType === \"xmlhttprequest\"; }).length];",
                "args": []}' "$s/execute/sync" | jq -r '.value | "\(.[0]) \(.[1]) \(.[2])"'
        done
    done | awk '{ f += $1; s += $2; r += $3 } END { printf "%d %d %d\n", f, s, r }'
}

close_tabs() {
    for s in $TAB_SESSIONS; do
        curl -s -m 10 -X DELETE "$s" >/dev/null 2>&1
    done
    # shellcheck disable=SC2086
    [ -z "$TAB_DRIVERS" ] || stop_pids $TAB_DRIVERS
    TAB_DRIVERS=''
    TAB_SESSIONS=''
}

# browser_cpu: CPU seconds used so far by the running Chromium processes
# (all of the machine's: other Chromiums running count too).
browser_cpu() {
    for pid in $(pgrep -x chromium); do
        cat "/proc/$pid/stat" 2>/dev/null
    done | awk -v hz="$(getconf CLK_TCK)" '{ s += $14 + $15 } END { printf "%.2f\n", s / hz }'
}

on_fleet_page() { js 'return document.getElementById("fleet") ? 1 : 0;' | grep -q '"value":1'; }

pages() {
    out "== pages ($AGENTS agents x $CHECKS checks)"
    curl -s -m 30 -c "$WORK/jar" -o /dev/null --data-urlencode "token=$ADMIN" "$DASH/login"
    : >"$WORK/ttfb.txt"
    : >"$WORK/bytes.txt"
    i=0
    while [ $i -lt "$FETCHES" ]; do
        curl -s -m 30 -b "$WORK/jar" -o "$WORK/fleet.html" -D "$WORK/fleet.head" \
            -w '%{time_starttransfer} %{size_download} %{size_header}\n' "$DASH/" >"$WORK/fetch.txt"
        read -r t body head <"$WORK/fetch.txt"
        echo "$t" | awk '{ printf "%.1f\n", $1 * 1000 }' >>"$WORK/ttfb.txt"
        echo $((body + head)) >>"$WORK/bytes.txt"
        i=$((i + 1))
        sleep 0.2
    done
    grep -q 'id="fleet"' "$WORK/fleet.html" || die "the fleet page did not come (not logged in?)"
    out "fleet page time to first byte, ms: $(stats "$WORK/ttfb.txt")"
    out "fleet page bytes (headers + body): $(stats "$WORK/bytes.txt")"
    FP0=$(grep -o 'id="agent-[0-9a-f]*"' "$WORK/fleet.html" | head -n 1 | sed 's/id="agent-//; s/"//')
    # The fleet page's own live stream (its rows), without its start point.
    SCOPE=$(grep -o 'data-live-scope="[^"]*"' "$WORK/fleet.html" | head -n 1 |
        sed 's/^data-live-scope="//; s/"$//; s/&#38;/\&/g; s/&amp;/\&/g; s/&after=[^&]*//')
    [ -n "$SCOPE" ] || die "the fleet page names no live stream"
    out "fleet page live stream: $(echo "$SCOPE" | cut -c1-60)... ($(echo "$SCOPE" | tr ',' '\n' | wc -l) rows)"
    for page in / "/?page=100" "/?q=sim-0999" "/agents/$FP0" /checks /releases /alerts /hosts/new; do
        curl -s -m 30 -b "$WORK/jar" -o /dev/null -D "$WORK/page.head" \
            -w '%{time_starttransfer} %{size_download}\n' "$DASH$page" >"$WORK/fetch.txt"
        read -r t body <"$WORK/fetch.txt"
        n=$(tr -d '\r' <"$WORK/page.head" | sed -n 's/^x-outrider-statements: //Ip')
        code=$(head -n 1 "$WORK/page.head" | cut -d' ' -f2)
        out "page $page: status $code, statements $n, first byte $(echo "$t" | awk '{ printf "%.1f", $1 * 1000 }') ms, body $body bytes"
    done
}

presence() {
    out "== presence change to the browser ($DROPS drops)"
    goto /
    loaded=$(js "$OBSERVER" | jq -r .value)
    reloads=0
    : >"$WORK/presence.txt"
    k=0
    while [ $k -lt "$DROPS" ]; do
        # Agents 0..49 are the first fleet page (sorted by host name sim-00000, ...).
        cmd "drop $k 3"
        line=$(answer "^DROPPED $k " 20)
        fp=$(echo "$line" | cut -d' ' -f3)
        at=$(echo "$line" | cut -d' ' -f4)
        sleep 2.5
        now=$(js "$OBSERVER" | jq -r .value)
        if [ "$now" != "$loaded" ]; then
            reloads=$((reloads + 1))
            loaded=$now
            log "the page reloaded (a reset) around drop $k: sample lost"
        fi
        seen=$(js 'return window.__bench.changes;' |
            jq -r --arg id "agent-$fp" --argjson at "$at" \
                '[.value[] | select(.[0] == $id and .[1] == "down" and .[2] >= $at - 1000) | .[2]] | min // empty')
        if [ -n "$seen" ]; then
            echo $((seen - at)) >>"$WORK/presence.txt"
        else
            log "drop $k ($fp): no down seen within 2.5 s"
        fi
        sleep 1.5
        k=$((k + 1))
    done
    out "drop to 'down' in the browser, ms: $(stats "$WORK/presence.txt"); page reloads: $reloads; samples missing: $((DROPS - $(wc -l <"$WORK/presence.txt")))"
    js 'var e = performance.getEntriesByType("navigation")[0];
        var r = performance.getEntriesByType("resource");
        var t = e.transferSize; for (var i = 0; i < r.length; i++) { t += r[i].encodedBodySize; }
        return [e.transferSize, t, r.length];' | jq -c .value >"$WORK/transfer.json"
    out "browser: fleet document transferSize, that plus its assets' encoded sizes (a first visit), assets: $(cat "$WORK/transfer.json")"
}

# heap_sample FILE SECONDS: one sample of the current session's page into
# FILE: seconds, used and total JS heap after gc(), DOM elements, when the
# page was loaded, whether gc() exists.
heap_sample() {
    js 'if (window.gc) { window.gc(); }
        return [performance.memory.usedJSHeapSize, performance.memory.totalJSHeapSize,
                document.getElementsByTagName("*").length, window.__bench ? window.__bench.loadedAt : 0,
                window.gc ? 1 : 0];' |
        jq -r --arg el "$2" '.value | "\(.[0]) \(.[1]) \(.[2]) \(.[3]) \(.[4])" | "\($el) " + .' >>"$1"
}

# heap_summary FILE: the slope from the second sample on (the first is
# taken at load), per minute and per sample.
heap_summary() {
    awk 'NR > 1 { n++; x += $1; y += $2; xx += $1 * $1; xy += $1 * $2; if ($2 > max) max = $2; last = $2
           if (n == 1) { l0 = $5; first = $2; t1 = $1 }; if ($5 != l0) reloads++; l0 = $5; gcs += $6; tn = $1 }
         END { slope = (n * xy - x * y) / (n * xx - x * x); per = (n > 1) ? (tn - t1) / (n - 1) : 0
               printf "samples after load=%d first=%d end=%d max=%d bytes; slope %.0f bytes/min = %.0f bytes/sample (one every %d s); page reloads %d; gc() available in %d of %d samples\n",
                      n, first, last, max, slope * 60, slope * per, per, reloads, gcs, n }' "$1"
}

idle() {
    out "== idle tabs for $IDLE_SECS s: browser A sampled every $IDLE_FAST s, browser B every $IDLE_SLOW s"
    goto /
    js "$OBSERVER" >/dev/null
    fast_wd=$WD fast_sid=$SID fast_driver=$DRIVER_PID
    start_browser idle-slow
    js "$OBSERVER" >/dev/null
    slow_wd=$WD slow_sid=$SID
    SLOW_DRIVER=$DRIVER_PID SLOW_SESSION="$WD/session/$SID"
    WD=$fast_wd SID=$fast_sid DRIVER_PID=$fast_driver
    : >"$WORK/heap-fast.txt"
    : >"$WORK/heap-slow.txt"
    every=$((IDLE_SLOW / IDLE_FAST))
    t0=$(date +%s)
    k=0
    while :; do
        el=$((k * IDLE_FAST))
        WD=$fast_wd SID=$fast_sid
        heap_sample "$WORK/heap-fast.txt" "$el"
        if [ $((k % every)) -eq 0 ]; then
            WD=$slow_wd SID=$slow_sid
            heap_sample "$WORK/heap-slow.txt" "$el"
        fi
        [ "$el" -lt "$IDLE_SECS" ] || break
        k=$((k + 1))
        wait_s=$((t0 + k * IDLE_FAST - $(date +%s)))
        [ "$wait_s" -le 0 ] || sleep "$wait_s"
    done
    WD=$fast_wd SID=$fast_sid
    curl -s -m 10 -X DELETE "$SLOW_SESSION" >/dev/null
    stop_pids "$SLOW_DRIVER"
    SLOW_DRIVER='' SLOW_SESSION=''
    for b in fast slow; do
        out "browser $b: used JS heap at load (before the first gc): $(head -n 1 "$WORK/heap-$b.txt" | cut -d' ' -f2) bytes"
        out "browser $b: used JS heap: $(heap_summary "$WORK/heap-$b.txt")"
        out "browser $b: DOM elements at start/end: $(head -n 1 "$WORK/heap-$b.txt" | cut -d' ' -f4) / $(tail -n 1 "$WORK/heap-$b.txt" | cut -d' ' -f4)"
    done
}

# churn_for SECS: CHURN agents a second (indexes 1000 up, in turn) drop and
# come back 2 s later, so the streams carry rows in both arms.
churn_for() {
    end=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$end" ]; do
        j=0
        while [ $j -lt "$CHURN" ]; do
            cmd "drop $NEXT_CHURN 2"
            NEXT_CHURN=$((NEXT_CHURN + 1))
            [ $NEXT_CHURN -lt "$AGENTS" ] || NEXT_CHURN=$((AGENTS / 10))
            j=$((j + 1))
        done
        sleep 1
    done
}

# window none|curl|chromium: one measured window with that arm open.
window() {
    arm=$1 tabs=0
    [ "$arm" = none ] || tabs=$TABS
    if [ "$arm" = chromium ]; then
        open_tabs "$TABS"
        sleep 5
    fi
    if [ "$arm" = curl ]; then
        t=0
        while [ $t -lt "$tabs" ]; do
            curl -s -N -m $((WINDOW_SECS + 60)) -b "$WORK/jar" -H 'Accept: text/event-stream' \
                -o "$WORK/sse-$RUN-$t.txt" "$DASH$SCOPE" &
            SSE_PIDS="$SSE_PIDS $!"
            t=$((t + 1))
        done
    fi
    # The /metrics scrapes (every series of the fleet) stay outside the
    # measured window: each costs the server seconds of CPU.
    m0=$(curl -s -m 60 "$API/metrics" | sed -n 's/^outrider_ingested_results_total //p')
    churn_for 5
    a=$(count "w$RUN-start")
    c0=$(browser_cpu)
    churn_for "$WINDOW_SECS"
    b=$(count "w$RUN-end")
    c1=$(browser_cpu)
    m1=$(curl -s -m 60 "$API/metrics" | sed -n 's/^outrider_ingested_results_total //p')
    frames=- activity=-
    if [ "$arm" = curl ]; then
        # shellcheck disable=SC2086
        stop_pids $SSE_PIDS
        SSE_PIDS=
        frames=$(cat "$WORK"/sse-"$RUN"-*.txt | grep -c '^event: ')
    fi
    if [ "$arm" = chromium ]; then
        # Over the tabs' whole life (opened before the window).
        activity=$(tab_activity | tr ' ' '/')
        close_tabs
    fi
    ms=$(($(field "$b" unix_ms) - $(field "$a" unix_ms)))
    rate=$(awk -v s0="$(field "$a" acked_samples)" -v s1="$(field "$b" acked_samples)" -v ms="$ms" -v p=3 \
        'BEGIN { printf "%.0f", (s1 - s0) / p / (ms / 1000) }')
    pct_of() { awk -v c0="$1" -v c1="$2" -v ms="$ms" 'BEGIN { printf "%.1f", (c1 - c0) / (ms / 1000) * 100 }'; }
    cpu=$(pct_of "$(field "$a" server_cpu_s)" "$(field "$b" server_cpu_s)")
    # Server CPU seconds per 1,000 results: less sensitive to the machine's
    # load than the rate.
    per_k=$(awk -v c0="$(field "$a" server_cpu_s)" -v c1="$(field "$b" server_cpu_s)" \
        -v s0="$(field "$a" acked_samples)" -v s1="$(field "$b" acked_samples)" \
        'BEGIN { r = (s1 - s0) / 3; printf "%.4f", (r > 0) ? (c1 - c0) / (r / 1000) : 0 }')
    loadgen_cpu=$(pct_of "$(field "$a" harness_cpu_s)" "$(field "$b" harness_cpu_s)")
    chromium_cpu=$(pct_of "$c0" "$c1")
    out "window $RUN: arm=$arm tabs=$tabs load=$(cut -d' ' -f1 /proc/loadavg) results_per_s=$rate server_cpu_pct=$cpu loadgen_cpu_pct=$loadgen_cpu chromium_cpu_pct=$chromium_cpu window_ms=$ms server_counter_delta=$((${m1:-0} - ${m0:-0})) events_received_by_curl=$frames tabs_frames/strays/refetches=$activity server_cpu_s_per_1000_results=$per_k rss_kib=$(field "$b" rss_kib)"
    echo "$ROUND $arm $rate $cpu $per_k" >>"$WORK/windows.txt"
    RUN=$((RUN + 1))
}

ingest() {
    out "== ingest, burst mode: none / $TABS curl streams / $TABS Chromium tabs, $PAIRS rounds of $WINDOW_SECS s windows (order reversed every other round), churn $CHURN drops/s"
    cmd burst
    answer '^OK burst' 10 >/dev/null
    sleep 10
    : >"$WORK/windows.txt"
    RUN=1
    NEXT_CHURN=$((AGENTS / 10))
    ROUND=1
    while [ $ROUND -le "$PAIRS" ]; do
        if [ $((ROUND % 2)) -eq 1 ]; then
            window none
            window curl
            window chromium
        else
            window chromium
            window curl
            window none
        fi
        ROUND=$((ROUND + 1))
    done
    cmd steady
    for arm in none curl chromium; do
        awk -v a="$arm" '$2 == a { print $3 }' "$WORK/windows.txt" >"$WORK/rate-$arm.txt"
        awk -v a="$arm" '$2 == a { print $4 }' "$WORK/windows.txt" >"$WORK/cpu-$arm.txt"
        awk -v a="$arm" '$2 == a { print $5 }' "$WORK/windows.txt" >"$WORK/perk-$arm.txt"
        out "$arm: results/s $(stats "$WORK/rate-$arm.txt"); server CPU % $(stats "$WORK/cpu-$arm.txt"); server CPU s per 1,000 results $(stats "$WORK/perk-$arm.txt")"
    done
    for arm in curl chromium; do
        # Per round: this arm's window against the same round's none.
        awk -v a="$arm" '$2 == "none" { none[$1] = $3; nk[$1] = $5 } $2 == a { mine[$1] = $3; mk[$1] = $5 }
            END { for (r in mine) if (none[r] > 0 && nk[r] > 0)
                    printf "%d %.1f %.1f\n", r, (mine[r] - none[r]) / none[r] * 100, (mk[r] - nk[r]) / nk[r] * 100 }' \
            "$WORK/windows.txt" | sort -n >"$WORK/paired-$arm.txt"
        awk '{ print $2 }' "$WORK/paired-$arm.txt" >"$WORK/paired-rate-$arm.txt"
        awk '{ print $3 }' "$WORK/paired-$arm.txt" >"$WORK/paired-perk-$arm.txt"
        out "$arm vs none, per round (round: results/s %, CPU s per 1,000 results %): $(awk '{ printf "%s: %+.1f/%+.1f  ", $1, $2, $3 }' "$WORK/paired-$arm.txt")"
        out "$arm vs none, median of the rounds: results/s $(median "$WORK/paired-rate-$arm.txt") %, CPU s per 1,000 results $(median "$WORK/paired-perk-$arm.txt") %"
    done
}

main() {
    need_tools curl jq chromium chromedriver python3 awk
    if [ -z "${SKIP_BUILD:-}" ]; then
        (cd "$ROOT" && cargo build --locked --release -p outrider-server -p outrider-loadgen) || return 1
    fi
    for f in outrider-loadgen outrider-server; do
        [ -x "$BIN/$f" ] || die "$BIN/$f is missing (run without SKIP_BUILD)"
    done
    rm -rf "$WORK"
    mkdir -p "$WORK" || return 1
    trap finish EXIT
    trap 'exit 1' INT TERM
    out "run $(date -u +%FT%TZ) commit $(git -C "$ROOT" rev-parse --short HEAD); load average $(cut -d' ' -f1-3 /proc/loadavg)"
    out "other processes over 5 % CPU: $(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 5 { printf "%s(%s%%) ", $2, $1 }')"
    mkfifo "$WORK/control"
    cap=$((IDLE_SECS + DROPS * 5 + PAIRS * 3 * (WINDOW_SECS + 40) + 900))
    "$BIN/outrider-loadgen" --server-bin "$BIN/outrider-server" --scripted --scripted-secs "$cap" \
        --keep-dir "$WORK/server" --agents "$AGENTS" --checks "$CHECKS" --agents-per-ip 100 \
        <"$WORK/control" >"$WORK/loadgen.log" 2>&1 &
    LOADGEN_PID=$!
    exec 3>"$WORK/control"
    ready=$(answer '^READY ' 400)
    API="http://$(field "$ready" api)"
    DASH="http://$(field "$ready" dashboard)"
    ADMIN=$(cat "$WORK/server/admin.token")
    out "$(grep 'connect:' "$WORK/loadgen.log")"
    log "dashboard $DASH; warming up ${WARMUP_SECS}s"
    sleep "$WARMUP_SECS"
    pages
    start_browser profile
    presence
    idle
    curl -s -m 10 -X DELETE "$WD/session/$SID" >/dev/null
    SID=
    stop_pids "$DRIVER_PID"
    DRIVER_PID=
    ingest
    out "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
    cmd stop
    answer '^STOPPED ' 120 | tee -a "$WORK/summary.txt"
    out "hub resets logged by the server: $(grep -c 'fell behind the event bus' "$WORK/server/server.log")"
}

main "$@" || exit 1
