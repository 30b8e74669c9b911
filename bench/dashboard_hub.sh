#!/bin/sh
# The dashboard's live hub with no tab open (docs/benchmarks.md, "Dashboard:
# 10,000 agents, a browser, 20 tabs", "What was learned"): AGENTS simulated
# agents x 10 checks steady (outrider-loadgen --scripted), WARMUP_SECS of
# warm-up, then CHURN_SECS with 2 drops a second; prints the server's CPU
# seconds per 1,000 results over the churn, and the newest frame number the
# hub gave out (the id of the `reset` a bogus Last-Event-ID gets): before
# the streams were filtered every one was a row rendered for nobody.
#
#   SERVER=/path/to/outrider-server bench/dashboard_hub.sh   # another build
#
# Bounded: every wait has a timeout and the loadgen stops by itself.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

AGENTS=${AGENTS:-2000}
WARMUP_SECS=${WARMUP_SECS:-60}
CHURN_SECS=${CHURN_SECS:-60}
WORK=${WORK:-/tmp/outrider-dashboard-hub-bench}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release}
SERVER=${SERVER:-$BIN/outrider-server}
LOADGEN_PID=

finish() {
    if [ -n "$LOADGEN_PID" ]; then
        exec 3>&-
        stop_pids "$LOADGEN_PID"
    fi
}

field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# answer PATTERN TIMEOUT: the first loadgen line matching PATTERN.
answer() {
    wait_for "loadgen: $1" "$2" grep -Eq "$1" "$WORK/loadgen.log"
    grep -E "$1" "$WORK/loadgen.log" | head -n 1
}

main() {
    need_tools curl awk
    for f in "$SERVER" "$BIN/outrider-loadgen"; do
        [ -x "$f" ] || die "$f is missing: build the release binaries first"
    done
    rm -rf "$WORK"
    mkdir -p "$WORK" || return 1
    mkfifo "$WORK/control"
    trap finish EXIT
    trap 'exit 1' INT TERM
    "$BIN/outrider-loadgen" --server-bin "$SERVER" --scripted \
        --scripted-secs $((WARMUP_SECS + CHURN_SECS + 300)) --keep-dir "$WORK/server" \
        --agents "$AGENTS" --checks 10 --agents-per-ip 100 <"$WORK/control" >"$WORK/loadgen.log" 2>&1 &
    LOADGEN_PID=$!
    exec 3>"$WORK/control"
    ready=$(answer '^READY ' 300)
    dash="http://$(field "$ready" dashboard)"
    sleep "$WARMUP_SECS"
    echo "count a" >&3
    a=$(answer '^COUNT a ' 20)
    n=$((AGENTS / 2))
    end=$(($(date +%s) + CHURN_SECS))
    while [ "$(date +%s)" -lt "$end" ]; do
        echo "drop $n 2" >&3
        echo "drop $((n + 1)) 2" >&3
        n=$((n + 2))
        sleep 1
    done
    echo "count b" >&3
    b=$(answer '^COUNT b ' 20)
    curl -s -m 10 -c "$WORK/jar" -o /dev/null --data-urlencode "token=$(cat "$WORK/server/admin.token")" "$dash/login"
    id=$(curl -s -N -m 3 -b "$WORK/jar" -H 'Last-Event-ID: x' "$dash/live" | sed -n 's/^id: *//p' | head -n 1)
    awk -v c0="$(field "$a" server_cpu_s)" -v c1="$(field "$b" server_cpu_s)" \
        -v s0="$(field "$a" acked_samples)" -v s1="$(field "$b" acked_samples)" -v id="$id" -v server="$SERVER" \
        'BEGIN { r = (s1 - s0) / 3; printf "%s: results %d, server CPU %.2f s, %.4f s per 1,000 results; newest frame id %s\n",
                 server, r, c1 - c0, (c1 - c0) / (r / 1000), id }'
    echo stop >&3
}

main "$@" || exit 1
