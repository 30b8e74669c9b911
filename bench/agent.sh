#!/bin/sh
# Agent benchmark: the real agent library, published to a
# real `outrider-server` and run by the real stub (`outrider-agent --prefix`)
# on loopback, release builds.
#
# Phases:
#  1. idle: 20 checks (a tiny sh plugin, 30 s interval), connected; after a
#     warm-up, VmRSS / Pss of the stub process (library inside) and its CPU
#     time over IDLE_SECS from /proc/PID/stat (utime+stime; plugin children
#     are counted separately from cutime+cstime, they are not the agent).
#  2. load: the idle checks removed, 17 checks at 1 s (1,020 runs a minute);
#     then ROUNDS rounds of two WINDOW_SECS windows side by side (the machine
#     is shared, so A B A B rather than one long run of each):
#     A = the 17 checks alone, B = the 17 plus an 18th check whose plugin
#     sleeps for an hour (timeout 3,600 s: it holds a process slot for the
#     whole window; the check is removed after each B window, which kills it).
#
# Scheduling lag, per result of the 1 s checks, from `started_at_ms` in the
# server's SQLite `results` table: each check's runs sit on a grid
# `offset + k × 1000 ms` (the scheduler never drifts); k is the run's index
# rounded from its start, offset the earliest `start − k × 1000` of that
# check in the phase, lag = start − k × 1000 − offset. Every sample is kept;
# p50 / p99 / max and the count are reported, plus results per minute,
# seq holes and duplicates counted at the server.
#
# Usage:   bench/agent.sh     (≈ WARMUP + IDLE + 2 × ROUNDS × (WINDOW + 5 s) + 1 min)
# Env:     SKIP_BUILD=1  do not build (uses target/release as it is)
#          IDLE_SECS=60 WARMUP_SECS=30 ROUNDS=3 WINDOW_SECS=45
#          WORK=/tmp/outrider-agent-bench  work directory (wiped at start)
# Needs: sqlite3, jq. Listens on 127.0.0.1 only; every wait is bounded;
# every process started here is stopped on exit.

set -u

IDLE_SECS=${IDLE_SECS:-60}
ROUNDS=${ROUNDS:-3}
WINDOW_SECS=${WINDOW_SECS:-45}
WARMUP_SECS=${WARMUP_SECS:-30}
WORK=${WORK:-/tmp/outrider-agent-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
TOKEN=bench-enrollment-token
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

results_of() { sqlite3 "$DB" "SELECT COUNT(*) FROM results WHERE check_name GLOB '$1'" 2>/dev/null; }
has_results() { [ "$(results_of "$1")" -gt 0 ] 2>/dev/null; }

# memory LABEL: process figures of the stub (the library runs inside it).
memory() { echo "$1: $(proc_figures)"; }

# ticks: "self children" CPU clock ticks of the stub (fields 14+15, 16+17;
# the command name in field 2 has no spaces here).
ticks() { awk '{ print $14 + $15, $16 + $17 }' "/proc/$AGENT_PID/stat"; }

# lag NAME FROM_MS TO_MS: appends the lag of every 1 s check's start in the
# window against its grid to lag-NAME.txt; prints the window's figures.
lag() {
    sqlite3 "$DB" "
        WITH r AS (SELECT check_name c, started_at_ms s FROM results
                   WHERE check_name GLOB 'l[0-9]*' AND started_at_ms BETWEEN $2 AND $3),
             f AS (SELECT c, MIN(s) s0 FROM r GROUP BY c),
             k AS (SELECT r.c, r.s, CAST(ROUND((r.s - f.s0) / 1000.0) AS INTEGER) k FROM r JOIN f USING (c)),
             o AS (SELECT c, MIN(s - k * 1000) off FROM k GROUP BY c)
        SELECT k.s - k.k * 1000 - o.off FROM k JOIN o USING (c);" >"$WORK/window.txt"
    cat "$WORK/window.txt" >>"$WORK/lag-$1.txt"
    per_min=$(sqlite3 "$DB" "SELECT ROUND(COUNT(*) * 60000.0 / ($3 - $2)) FROM results
        WHERE check_name GLOB 'l[0-9]*' AND started_at_ms BETWEEN $2 AND $3")
    echo "$1 window: lag ms p50=$(pct "$WORK/window.txt" 0.5) p99=$(pct "$WORK/window.txt" 0.99) max=$(pct "$WORK/window.txt" 1) n=$(wc -l <"$WORK/window.txt") results/min=$per_min loadavg=$(cut -d' ' -f1 /proc/loadavg)"
}

# summary NAME: all samples of a condition.
summary() {
    echo "$1 (all windows): lag ms p50=$(pct "$WORK/lag-$1.txt" 0.5) p99=$(pct "$WORK/lag-$1.txt" 0.99) max=$(pct "$WORK/lag-$1.txt" 1) n=$(wc -l <"$WORK/lag-$1.txt")"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    # shellcheck disable=SC3045 # dash and bash both have it
    ulimit -n 4096 2>/dev/null
    need_tools sqlite3 jq
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "cargo build --locked --release (server, cli, stub, agent library)"
        (cd "$ROOT" && cargo build --locked --release -p outrider-server -p outrider-cli \
            -p outrider-agent-stub -p outrider-agent-lib) || die "release build failed"
    fi
    need_binaries "run the release build"

    rm -rf "$WORK"
    mkdir -p "$WORK"
    start_server

    "$BIN/outrider" keys init --dir "$WORK/keys" >"$WORK/keys.log" 2>&1 || die "keys init failed"
    printf '#!/bin/sh\necho "OK - bench | value=1;;;;"\n' >"$WORK/plugin.sh"
    printf '#!/bin/sh\nexec sleep 3600\n' >"$WORK/hang.sh"
    chmod 755 "$WORK/plugin.sh" "$WORK/hang.sh"
    i=0
    while [ $i -lt 20 ]; do
        cli checks add "i$i" --interval-secs 30 --timeout-secs 10 -- "$WORK/plugin.sh" >/dev/null ||
            die "checks add i$i failed"
        i=$((i + 1))
    done
    cli release publish --channel bench --keys "$WORK/keys" --version b1 --deltas 0 \
        "$BIN/liboutrider_agent.so" >"$WORK/publish.log" 2>&1 || die "publish failed"
    start_stub ""
    wait_for "b1 to be current" 120 current_is b1
    wait_for "results of the idle checks" 60 has_results 'i[0-9]*'

    log "phase 1: idle with 20 checks; warm-up ${WARMUP_SECS}s, then ${IDLE_SECS}s of CPU"
    sleep "$WARMUP_SECS"
    mem_idle=$(memory "idle, 20 checks at 30 s")
    log "$mem_idle"
    t=$(ticks)
    self0=${t% *} child0=${t#* }
    t0=$(now_ms)
    sleep "$IDLE_SECS"
    t=$(ticks)
    self1=${t% *} child1=${t#* }
    t1=$(now_ms)
    hz=$(getconf CLK_TCK)
    cpu_idle=$(awk -v s="$((self1 - self0))" -v c="$((child1 - child0))" -v ms="$((t1 - t0))" -v hz="$hz" \
        'BEGIN { printf "agent %.3f%% of a core, plugin children %.3f%% (over %.1f s)", 100 * s / hz / (ms / 1000), 100 * c / hz / (ms / 1000), ms / 1000 }')
    log "idle CPU: $cpu_idle"

    log "phase 2: 17 checks at 1 s; $ROUNDS rounds of ${WINDOW_SECS}s without / with a hung plugin"
    i=0
    while [ $i -lt 20 ]; do cli checks remove "i$i" >/dev/null || die "checks remove i$i failed"; i=$((i + 1)); done
    i=0
    while [ $i -lt 17 ]; do
        cli checks add "l$i" --interval-secs 1 --timeout-secs 5 -- "$WORK/plugin.sh" >/dev/null ||
            die "checks add l$i failed"
        i=$((i + 1))
    done
    wait_for "results of the 1 s checks" 60 has_results 'l16'
    : >"$WORK/lag-load.txt"
    : >"$WORK/lag-hang.txt"
    : >"$WORK/windows.txt"
    r=1
    while [ $r -le "$ROUNDS" ]; do
        sleep 5
        from=$(now_ms)
        sleep "$WINDOW_SECS"
        lag load "$from" "$(now_ms)" | tee -a "$WORK/windows.txt" >&2
        cli checks add hang --interval-secs 1 --timeout-secs 3600 -- "$WORK/hang.sh" >/dev/null ||
            die "checks add hang failed"
        wait_for "the hanging plugin to start" 30 pgrep -f "sleep 3600" >/dev/null
        sleep 3
        from=$(now_ms)
        sleep "$WINDOW_SECS"
        lag hang "$from" "$(now_ms)" | tee -a "$WORK/windows.txt" >&2
        cli checks remove hang >/dev/null || die "checks remove hang failed"
        r=$((r + 1))
    done
    mem_load=$(memory "after the load rounds")
    log "$mem_load"
    sleep 3 # the last results reach the server
    stop_stub

    cat <<EOF

== outrider agent benchmark, $(date -u +%Y-%m-%d) ==
commit: $(git -C "$ROOT" rev-parse --short HEAD) (library built $(date -u -r "$BIN/liboutrider_agent.so" +%H:%M:%SZ))
$mem_idle
idle CPU: $cpu_idle
$(cat "$WORK/windows.txt")
$(summary load)
$(summary hang)
$mem_load
seq holes (lost) / duplicates at the server: $(sqlite3 "$DB" "SELECT (MAX(seq) - MIN(seq) + 1 - COUNT(DISTINCT seq)) || ' / ' || (COUNT(*) - COUNT(DISTINCT seq)) FROM results")
skipped starts logged: $(grep -c 'was still running at its due time' "$WORK/stub.log") (a hung run ends by removal, not by finishing, so it logs none)
stub log: WARN=$(grep -c 'WARN' "$WORK/stub.log") ERROR=$(grep -c 'ERROR' "$WORK/stub.log")
EOF
}

main "$@" || exit 1
