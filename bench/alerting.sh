#!/bin/sh
# Alerting's cost: server CPU and memory under 10,000 simulated agents × 10
# checks reporting every 10 s, with the alert engine and without it
# (`outrider-server --no-alerting`), side by side in one run.
#
# Each run is one bench/loadgen run (`outrider-loadgen --steady-only`):
# a fresh release server, 10,000 agents connect, 60 s of steady load (one
# batch of 10 results per agent per 10 s: 10,000 results/s), stop. The
# figures are the server's CPU time over the steady window (user + system,
# from /proc/PID/stat, as % of one core) and its VmRSS. Runs alternate
# A B B A … (on, off, off, on) so slow drift on a shared machine falls on
# both sides; the median (and min-max) of each side is printed.
#
#   bench/alerting.sh                # 2 pairs (4 runs, ≈ 90 s each)
#   PAIRS=3 bench/alerting.sh --agents 2000
#   SKIP_BUILD=1 bench/alerting.sh   # reuse target/release
#
# Extra arguments go to outrider-loadgen. Every run is bounded by the
# loadgen's own hard cap; logs go to $WORK (default /tmp/outrider-alerting-bench).
set -u

main() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    pairs=${PAIRS:-2}
    work=${WORK:-/tmp/outrider-alerting-bench}
    mkdir -p "$work" || return 1
    if [ -z "${SKIP_BUILD:-}" ]; then
        (cd "$root" && cargo build --locked --release -p outrider-server -p outrider-loadgen) || return 1
    fi
    target=${CARGO_TARGET_DIR:-$root/target}
    : >"$work/on.txt"
    : >"$work/off.txt"
    i=1
    while [ "$i" -le "$pairs" ]; do
        if [ $((i % 2)) -eq 1 ]; then order="on off"; else order="off on"; fi
        for mode in $order; do
            if [ "$mode" = off ]; then flag=--server-arg=--no-alerting; else flag=; fi
            echo "== pair $i, alerting $mode"
            # shellcheck disable=SC2086 # $flag is one word or none
            "$target/release/outrider-loadgen" --server-bin "$target/release/outrider-server" \
                --agents 10000 --checks 10 --steady-secs 60 --steady-only $flag "$@" \
                >"$work/run-$i-$mode.log" 2>&1
            status=$?
            tail -n 3 "$work/run-$i-$mode.log"
            [ "$status" -eq 0 ] || echo "run $i ($mode) failed with status $status"
            grep '^STEADY' "$work/run-$i-$mode.log" >>"$work/$mode.txt"
        done
        i=$((i + 1))
    done
    for mode in on off; do
        echo "== alerting $mode: median (min-max) over $(wc -l <"$work/$mode.txt") runs"
        for key in server_cpu_pct rss_idle_kib rss_steady_kib hwm_kib steady_results_per_s harness_cpu_pct failures; do
            tr ' ' '\n' <"$work/$mode.txt" | sed -n "s/^$key=//p" | sort -n | awk -v k="$key" '
                { v[NR] = $1 }
                END {
                    if (NR == 0) { print k ": no data"; exit }
                    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                    printf "%s: %s (%s-%s)\n", k, m, v[1], v[NR]
                }'
        done
    done
}

main "$@" || exit 1
