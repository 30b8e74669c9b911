#!/bin/sh
# Hot-swap benchmark: the real agent library, a real
# `outrider-server` and a real stub (`outrider-agent --prefix`) on loopback.
#
# Two builds of the same library (the release .so with a different trailer
# appended: ELF ignores trailing bytes, each copy has its own SHA-256) are
# published alternately as s1, s2, s3, ... on channel `bench`; after each
# publish the harness waits until the stub's state.json says that version is
# `current` (probation passed) before publishing the next one. Ten checks at
# the server's minimum interval (1 s) make ~10 results per second.
#
# Measured at the receiving end (the server's SQLite `results` table):
# gaps between consecutive results across all checks, per-check interval
# excess, seq holes (lost), (check, started_at_ms) duplicates. Measured on the
# stub process: VmRSS, Pss, fds, threads after the warm-up swap and after the
# last swap; the PID must not change.
#
# Usage:   bench/swap.sh [SWAPS]        (default 200 measured swaps)
#          bench/swap.sh report         re-print the report of the last run in $WORK
# Env:     SKIP_BUILD=1  do not run `cargo build --locked --release --workspace`
#          TIME_LIMIT_SECS=1800  stop swapping after this long (reported)
#          CONTROL_SECS=30  no-swap control window before the swaps
#          WORK=/tmp/outrider-swap-bench  work directory (wiped at start)
# Needs: sqlite3, jq, sha256sum. Everything listens on 127.0.0.1 only; every
# wait is bounded; every process started here is stopped on exit.

set -u

SWAPS=${1:-200}
TIME_LIMIT_SECS=${TIME_LIMIT_SECS:-1800}
CONTROL_SECS=${CONTROL_SECS:-30}
WORK=${WORK:-/tmp/outrider-swap-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
TOKEN=bench-enrollment-token
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

publish() { # publish VERSION FILE
    cli release publish --channel bench --keys "$WORK/keys" --version "$1" --deltas 0 "$2" \
        >>"$WORK/publish.log" 2>&1 || die "publish $1 failed (see $WORK/publish.log)"
}

# sample LABEL: one line of process figures of the stub.
sample() {
    maps=$(grep -c 'agent\.' "/proc/$AGENT_PID/maps")
    echo "$1 pid=$AGENT_PID $(proc_figures) agent_lib_map_lines=$maps"
}

# gaps NAME FROM_MS TO_MS: distribution of consecutive gaps over all checks
# c0..c9, and of each check's own interval, for results started in [FROM, TO].
gaps() {
    sqlite3 "$DB" "SELECT started_at_ms - LAG(started_at_ms) OVER (ORDER BY started_at_ms, seq)
        FROM results WHERE check_name GLOB 'c[0-9]' AND started_at_ms BETWEEN $2 AND $3" |
        sed '/^$/d' >"$WORK/gaps-$1.txt"
    sqlite3 "$DB" "SELECT started_at_ms - LAG(started_at_ms) OVER (PARTITION BY check_name ORDER BY started_at_ms, seq)
        FROM results WHERE check_name GLOB 'c[0-9]' AND started_at_ms BETWEEN $2 AND $3" |
        sed '/^$/d' >"$WORK/intervals-$1.txt"
    n=$(wc -l <"$WORK/gaps-$1.txt")
    echo "$1: all-checks gap ms p50=$(pct "$WORK/gaps-$1.txt" 0.5) p99=$(pct "$WORK/gaps-$1.txt" 0.99) max=$(pct "$WORK/gaps-$1.txt" 1) n=$n"
    n=$(wc -l <"$WORK/intervals-$1.txt")
    over=$(awk '$1 > 1500' "$WORK/intervals-$1.txt" | wc -l)
    echo "$1: per-check interval ms p50=$(pct "$WORK/intervals-$1.txt" 0.5) p99=$(pct "$WORK/intervals-$1.txt" 0.99) max=$(pct "$WORK/intervals-$1.txt" 1) n=$n over_1500ms=$over"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    # shellcheck disable=SC3045 # dash and bash both have it
    ulimit -n 4096 2>/dev/null
    need_tools sqlite3 jq sha256sum
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "cargo build --locked --release --workspace"
        (cd "$ROOT" && cargo build --locked --release --workspace) || die "release build failed"
    fi
    need_binaries "run cargo build --release --workspace"

    rm -rf "$WORK"
    mkdir -p "$WORK/libs"
    cp "$BIN/liboutrider_agent.so" "$WORK/libs/a.so"
    cp "$BIN/liboutrider_agent.so" "$WORK/libs/b.so"
    printf 'outrider-bench-swap build A\n' >>"$WORK/libs/a.so"
    printf 'outrider-bench-swap build B\n' >>"$WORK/libs/b.so"
    sha256sum "$WORK/libs/a.so" "$WORK/libs/b.so" >&2

    start_server

    "$BIN/outrider" keys init --dir "$WORK/keys" >"$WORK/keys.log" 2>&1 || die "keys init failed"
    # A plugin with Nagios perfdata; ten checks at the 1 s minimum = ~10 results/s.
    printf '#!/bin/sh\necho "OK - bench | value=1;;;;"\n' >"$WORK/plugin.sh"
    chmod 755 "$WORK/plugin.sh"
    for i in 0 1 2 3 4 5 6 7 8 9; do
        cli checks add "c$i" --interval-secs 1 --timeout-secs 5 -- "$WORK/plugin.sh" >/dev/null ||
            die "checks add c$i failed"
    done

    publish s1 "$WORK/libs/a.so"
    start_stub "update_interval_secs = 1
probation_secs = 30
stop_timeout_secs = 10"
    wait_for "s1 to be current" 60 current_is s1

    # Warm-up: one swap, then settle, then the first sample.
    publish s2 "$WORK/libs/b.so"
    wait_for "s2 to be current" 60 current_is s2
    sleep 2
    before=$(sample before)
    log "$before"
    control_from=$(now_ms)
    log "control window: ${CONTROL_SECS}s without swaps"
    sleep "$CONTROL_SECS"
    control_to=$(now_ms)

    start_s=$(date +%s)
    done_swaps=0
    n=3
    : >"$WORK/swap-times.txt"
    while [ $done_swaps -lt "$SWAPS" ]; do
        if [ $(($(date +%s) - start_s)) -ge "$TIME_LIMIT_SECS" ]; then
            log "time limit of ${TIME_LIMIT_SECS}s reached after $done_swaps swaps"
            break
        fi
        if [ $((n % 2)) -eq 1 ]; then lib=a; else lib=b; fi
        t0=$(now_ms)
        publish "s$n" "$WORK/libs/$lib.so"
        t1=$(now_ms)
        wait_for "s$n to be current" 60 current_is "s$n"
        t2=$(now_ms)
        echo "s$n publish_ms=$((t1 - t0)) publish_to_current_ms=$((t2 - t1))" >>"$WORK/swap-times.txt"
        kill -0 "$AGENT_PID" 2>/dev/null || die "the stub exited"
        done_swaps=$((done_swaps + 1))
        [ $((done_swaps % 10)) -eq 0 ] && log "$done_swaps swaps (s$n)"
        n=$((n + 1))
    done
    swaps_to=$(now_ms)
    swaps_from=$control_to
    sleep 2
    after=$(sample after)
    log "$after"
    sleep 3 # let the last results reach the server
    stop_stub

    cat >"$WORK/run.env" <<EOF
DB='$DB'
SWAPS=$SWAPS
commit='$(git -C "$ROOT" rev-parse --short HEAD) (binaries built $(date -u -r "$BIN/outrider-agent" +%H:%M:%SZ))'
done_swaps=$done_swaps
control_from=$control_from
control_to=$control_to
swaps_from=$swaps_from
swaps_to=$swaps_to
before='$before'
after='$after'
EOF
    report
}

# ms_of_log_lines PATTERN: epoch ms of each stub log line matching PATTERN
# (the log's RFC 3339 UTC timestamps, same host clock as started_at_ms).
ms_of_log_lines() {
    sed 's/\x1b\[[0-9;]*m//g' "$WORK/stub.log" | grep "$1" | cut -c1-26 |
        while read -r ts; do
            echo $(($(date -u -d "${ts%.*}Z" +%s) * 1000 + $(echo "${ts#*.}" | cut -c1-3 | sed 's/^0*//;s/^$/0/')))
        done
}

# Prints the report of the run in $WORK (also: `bench/swap.sh report`).
report() {
    # shellcheck disable=SC1091
    . "$WORK/run.env"
    awk '{ split($3, a, "="); print a[2] }' "$WORK/swap-times.txt" >"$WORK/swap-ms.txt"
    # Per swap: "hot swap starting" (old generation about to stop) and the
    # next "generation started"; the swap's own collection gap is the first
    # result started after the new start minus the last started before the stop.
    ms_of_log_lines 'hot swap starting' >"$WORK/swap-start.txt"
    ms_of_log_lines 'generation started' | tail -n +2 >"$WORK/gen-start.txt"
    paste -d, "$WORK/swap-start.txt" "$WORK/gen-start.txt" | awk -F, -v f="$swaps_from" -v t="$swaps_to" \
        '$1 >= f && $1 <= t && $2 != ""' >"$WORK/swaps.csv"
    awk -F, '{ print $2 - $1 }' "$WORK/swaps.csv" >"$WORK/handover-ms.txt"
    sqlite3 :memory: >"$WORK/swap-gap-ms.txt" <<EOF
ATTACH '$DB' AS s;
CREATE TABLE swaps(stop_ms INTEGER, start_ms INTEGER);
.mode csv
.import $WORK/swaps.csv swaps
.mode list
SELECT (SELECT MIN(started_at_ms) FROM s.results WHERE check_name GLOB 'c[0-9]' AND started_at_ms >= start_ms)
     - (SELECT MAX(started_at_ms) FROM s.results WHERE check_name GLOB 'c[0-9]' AND started_at_ms <= stop_ms)
FROM swaps;
EOF
    rows=$(sqlite3 "$DB" "SELECT COUNT(*) FROM results WHERE check_name GLOB 'c[0-9]' AND started_at_ms BETWEEN $swaps_from AND $swaps_to")
    # shellcheck disable=SC2154 # commit comes from run.env
    cat <<EOF

== outrider hot-swap benchmark, $(date -u +%Y-%m-%d) ==
commit: $commit
measured swaps: $done_swaps of $SWAPS requested (plus 1 warm-up swap), $((swaps_to - swaps_from)) ms
publish -> current (state.json) per swap ms: p50=$(pct "$WORK/swap-ms.txt" 0.5) p99=$(pct "$WORK/swap-ms.txt" 0.99) max=$(pct "$WORK/swap-ms.txt" 1)
stop old -> new generation started (stub log) ms: p50=$(pct "$WORK/handover-ms.txt" 0.5) p99=$(pct "$WORK/handover-ms.txt" 0.99) max=$(pct "$WORK/handover-ms.txt" 1) n=$(wc -l <"$WORK/handover-ms.txt")
$before
$after
rss growth KiB: $(($(echo "$after" | sed 's/.*rss_kib=\([0-9]*\).*/\1/') - $(echo "$before" | sed 's/.*rss_kib=\([0-9]*\).*/\1/')))
pss growth KiB: $(($(echo "$after" | sed 's/.*pss_kib=\([0-9]*\).*/\1/') - $(echo "$before" | sed 's/.*pss_kib=\([0-9]*\).*/\1/')))
$(gaps control "$control_from" "$control_to")
$(gaps swaps "$swaps_from" "$swaps_to")
swaps: gap across each swap (last result before stop -> first after start) ms: p50=$(pct "$WORK/swap-gap-ms.txt" 0.5) p99=$(pct "$WORK/swap-gap-ms.txt" 0.99) max=$(pct "$WORK/swap-gap-ms.txt" 1) n=$(wc -l <"$WORK/swap-gap-ms.txt")
swaps: results c0..c9 = $rows, expected 10/s x $(((swaps_to - swaps_from) / 1000)) s = $(((swaps_to - swaps_from) / 100)); per-check intervals < 500 ms (a run repeated early): $(awk '$1 < 500' "$WORK/intervals-swaps.txt" | wc -l)
agents in store: $(sqlite3 "$DB" "SELECT COUNT(DISTINCT fingerprint) FROM results")
seq range (whole run): $(sqlite3 "$DB" "SELECT MIN(seq) || '..' || MAX(seq) || ' rows=' || COUNT(*) || ' lost(holes)=' || (MAX(seq) - MIN(seq) + 1 - COUNT(*)) FROM results")
duplicated (same check and started_at_ms): $(sqlite3 "$DB" "SELECT COUNT(*) FROM (SELECT 1 FROM results GROUP BY fingerprint, check_name, started_at_ms HAVING COUNT(*) > 1)")
update-event results (outrider.update): $(sqlite3 "$DB" "SELECT COUNT(*) FROM results WHERE check_name = 'outrider.update'")
stub log: hot swaps started=$(grep -c 'hot swap starting' "$WORK/stub.log") probation passed=$(grep -c 'probation passed' "$WORK/stub.log") re-executing=$(grep -c 're-executing' "$WORK/stub.log") still mapped=$(grep -c 'still mapped' "$WORK/stub.log") rolling back=$(grep -c 'rolling back' "$WORK/stub.log") WARN=$(grep -c 'WARN' "$WORK/stub.log") ERROR=$(grep -c 'ERROR' "$WORK/stub.log")
EOF
}

if [ "${1:-}" = report ]; then
    report
    exit 0
fi

main "$@" || exit 1
