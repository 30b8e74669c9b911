#!/bin/sh
# remote_write benchmark: a receiver outage of OUTAGE_SECS with nothing lost,
# and the sustained samples/s the server sends to a real receiver.
#
# A release `outrider-server` forwards to the real Prometheus (Debian's
# `prometheus --web.enable-remote-write-receiver`, its own TSDB under $WORK)
# while bench/loadgen's simulated agents report (steady phase: every agent
# sends one result per check every 10 s, each result a state and PERFDATA
# values, so AGENTS * CHECKS * (PERFDATA + 1) / 10 samples/s offered):
#
# 1. outage: the receiver's port is closed from the start; for OUTAGE_SECS
#    everything the server stores waits in its disk queue;
# 2. drain: Prometheus starts; the time until the queue is back to at most
#    one request gives the sustained send rate (samples the server sent
#    during the drain / drain time), with the steady load still arriving;
# 3. the loadgen's steady phase (OUTAGE_SECS + DRAIN_ALLOW_SECS) ends, with
#    the receiver up since the drain, and it stops the server (SIGTERM: the
#    batch in memory is queued); the server is started again on the same
#    data directory and sends what was queued;
# 4. count: every result and perfdata point the server stored (its SQLite
#    file) against the samples Prometheus holds; lost = stored - received,
#    and the server's own drop counters (the first run's read after the
#    drain: what it counts during its stop is not seen).
#
# Usage:   bench/remote_write.sh [OUTAGE_SECS]      (default 300)
# Env:     AGENTS=2000 CHECKS=5 PERFDATA=5  the offered load (6,000 samples/s)
#          DRAIN_ALLOW_SECS=300  steady load after the outage (the drain must
#                         end within it)
#          SKIP_BUILD=1   reuse target/release
#          WORK=/tmp/outrider-remote-write-bench  (wiped at start)
#          BIN=target/release
# Needs: prometheus, jq, curl, sqlite3, python3. Everything listens on
# 127.0.0.1; every wait is bounded; every process started here is stopped
# on exit.

set -u

OUTAGE_SECS=${1:-300}
AGENTS=${AGENTS:-2000}
CHECKS=${CHECKS:-5}
PERFDATA=${PERFDATA:-5}
DRAIN_ALLOW_SECS=${DRAIN_ALLOW_SECS:-300}
WORK=${WORK:-/tmp/outrider-remote-write-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
TOKEN=bench-enrollment-token
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

PROM_PID=
LOADGEN_PID=

stop_all() {
    # shellcheck disable=SC2086 # lists of PIDs
    stop_pids $LOADGEN_PID $PROM_PID
    cleanup
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# metric NAME_AND_LABELS: its value on the server's /metrics (0 if absent).
metric() {
    curl -fsS "$URL/metrics" | awk -v k="$1" '$1 == k { print $2; found = 1 } END { if (!found) print 0 }'
}

# query PROMQL: the single value of an instant query at Prometheus.
query() {
    curl -fsS --get "http://127.0.0.1:$PROM_PORT/api/v1/query" --data-urlencode "query=$1" |
        jq -r '.data.result[0].value[1] // "0"'
}

prom_ready() { curl -fsS "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1; }

start_prometheus() {
    mkdir -p "$WORK/prom"
    printf 'global: {}\nscrape_configs: []\n' >"$WORK/prom/prometheus.yml"
    prometheus --web.enable-remote-write-receiver --config.file "$WORK/prom/prometheus.yml" \
        --storage.tsdb.path "$WORK/prom/data" --web.listen-address "127.0.0.1:$PROM_PORT" \
        >"$WORK/prom/prometheus.log" 2>&1 &
    PROM_PID=$!
    wait_for "prometheus ready" 60 prom_ready
}

sent_more() { [ "$(metric outrider_remote_write_sent_samples_total)" -gt "$sent_before" ]; }
queued_some() { [ "$(metric outrider_remote_write_queued_samples)" -gt 0 ]; }
queue_drained() { [ "$(metric outrider_remote_write_queued_requests)" -le 1 ]; }
queue_empty() { [ "$(metric outrider_remote_write_queued_requests)" -eq 0 ]; }
server_ready() { test -s "$WORK/server/ready"; }
loadgen_done() { ! kill -0 "$LOADGEN_PID" 2>/dev/null; }

main() {
    need_tools prometheus jq curl sqlite3 python3
    if [ "${SKIP_BUILD:-}" != 1 ]; then
        log "building release binaries"
        (cd "$ROOT" && nice -n 19 cargo build --locked --release -p outrider-server -p outrider-loadgen) ||
            die "build failed"
    fi
    for f in outrider-server outrider-loadgen; do
        [ -x "$BIN/$f" ] || die "$BIN/$f is missing: build it (without SKIP_BUILD=1)"
    done
    rm -rf "$WORK"
    mkdir -p "$WORK/server"
    trap stop_all EXIT INT TERM
    PROM_PORT=$(free_port)
    write_url="http://127.0.0.1:$PROM_PORT/api/v1/write"
    offered=$((AGENTS * CHECKS * (PERFDATA + 1) / 10))
    steady=$((OUTAGE_SECS + DRAIN_ALLOW_SECS))
    log "offered load ${offered} samples/s; receiver $write_url closed for ${OUTAGE_SECS} s"

    "$BIN/outrider-loadgen" --server-bin "$BIN/outrider-server" --agents "$AGENTS" \
        --checks "$CHECKS" --perfdata "$PERFDATA" --steady-only --steady-secs "$steady" \
        --keep-dir "$WORK/server" --server-arg=--no-alerting \
        "--server-arg=--remote-write-url=$write_url" >"$WORK/loadgen.log" 2>&1 &
    LOADGEN_PID=$!
    wait_for "the loadgen's server" 60 server_ready
    URL="http://$(cat "$WORK/server/ready")"
    wait_for "samples queued" 300 queued_some
    outage_start=$(now_ms)
    log "server $URL is queueing; receiver down for ${OUTAGE_SECS} s"
    while [ $(($(now_ms) - outage_start)) -lt $((OUTAGE_SECS * 1000)) ]; do
        sleep 10
        log "queued: $(metric outrider_remote_write_queued_samples) samples, $(metric outrider_remote_write_queued_bytes) bytes"
    done
    backlog=$(metric outrider_remote_write_queued_samples)
    sent_before=$(metric outrider_remote_write_sent_samples_total)
    start_prometheus
    up=$(now_ms)
    # The rate counts from the first accepted request: before it the sender
    # may still wait out its backoff (at most 5 s).
    wait_for "a first accepted request" 30 sent_more
    first=$(now_ms)
    sent_first=$(metric outrider_remote_write_sent_samples_total)
    wait_for "the backlog to drain" "$DRAIN_ALLOW_SECS" queue_drained
    drained=$(now_ms)
    sent_after=$(metric outrider_remote_write_sent_samples_total)
    drain_ms=$((drained - up))
    send_ms=$((drained - first))
    rate=$(((sent_after - sent_first) * 1000 / (send_ms > 0 ? send_ms : 1)))
    log "backlog ${backlog} samples drained ${drain_ms} ms after the receiver came up: ${rate} samples/s sent"
    {
        curl -fsS "$URL/metrics" | grep '^outrider_remote_write_dropped_samples_total'
        curl -fsS "$URL/metrics" | grep '^outrider_remote_write_requests_total'
        curl -fsS "$URL/metrics" | grep '^outrider_remote_write_retries_total'
    } >"$WORK/first-run.txt"

    log "steady load goes on until the loadgen's phase ends and it stops the server"
    wait_for "the loadgen to stop" $((steady + 120)) loadgen_done
    LOADGEN_PID=
    grep '^STEADY' "$WORK/loadgen.log" >&2 || die "the loadgen failed (see $WORK/loadgen.log)"
    # The loadgen's server stops with it; start it again to send the rest.
    rm -f "$WORK/server/ready"
    "$BIN/outrider-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 --no-dashboard \
        --enrollment-token "$TOKEN" --ready-file "$WORK/server/ready" --no-alerting \
        "--remote-write-url=$write_url" >"$WORK/server2.log" 2>&1 &
    # shellcheck disable=SC2034 # read by cleanup in bench/lib.sh
    SERVER_PID=$!
    wait_for "the restarted server" 30 server_ready
    URL="http://$(cat "$WORK/server/ready")"
    wait_for "the restarted server's queue to empty" 300 queue_empty
    # What the stop queued, as the restarted server logged it at start.
    resent=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/server2.log" |
        sed -n 's/.*resending what the previous run queued.* samples=\([0-9]*\).*/\1/p' | head -1)
    resent=${resent:-0}
    log "restarted server sent the ${resent} samples it found queued"
    curl -fsS "$URL/metrics" | grep '^outrider_remote_write_dropped_samples_total' >"$WORK/second-run.txt"

    stored_results=$(sqlite3 "$WORK/server/outrider.db" 'SELECT count(*) FROM results')
    stored_points=$(sqlite3 "$WORK/server/outrider.db" 'SELECT count(*) FROM points')
    stored=$((stored_results + stored_points))
    received=$(query 'sum(count_over_time({__name__=~"outrider_check_state|outrider_perfdata"}[1d]))')
    lost=$((stored - received))
    dropped=$(awk '/^outrider_remote_write_dropped_samples_total/ { s += $2 } END { print s + 0 }' \
        "$WORK/first-run.txt" "$WORK/second-run.txt")
    cat <<EOF
RESULT outage_s=$OUTAGE_SECS offered_samples_per_s=$offered backlog_samples=$backlog drain_ms=$drain_ms first_2xx_ms=$((first - up)) sent_samples_per_s=$rate stored_samples=$stored received_samples=$received lost=$lost dropped=$dropped resent_after_restart=$resent
EOF
    cat "$WORK/first-run.txt"
}

main "$@" || exit 1
