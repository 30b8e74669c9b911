#!/bin/sh
# Server benchmark: RUNS runs of bench/loadgen against a
# release build of outrider-server on loopback, then the median (and
# min-max) of each figure over the runs. Extra arguments go to
# outrider-loadgen (e.g. --agents 2000 --steady-secs 20).
#
#   bench/server.sh                 # 3 runs, 10,000 agents, default phases
#   RUNS=5 bench/server.sh --burst-secs 60
#   SKIP_BUILD=1 bench/server.sh    # reuse target/release
#
# Every run is bounded (the harness has a hard time cap) and uses a fresh
# temporary data directory; logs go to $WORK (default /tmp/outrider-server-bench).
set -u

main() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    runs=${RUNS:-3}
    work=${WORK:-/tmp/outrider-server-bench}
    mkdir -p "$work" || return 1
    if [ -z "${SKIP_BUILD:-}" ]; then
        (cd "$root" && cargo build --locked --release -p outrider-server -p outrider-loadgen) || return 1
    fi
    target=${CARGO_TARGET_DIR:-$root/target}
    : > "$work/summaries.txt"
    i=1
    while [ "$i" -le "$runs" ]; do
        echo "== run $i of $runs"
        "$target/release/outrider-loadgen" --server-bin "$target/release/outrider-server" "$@" \
            > "$work/run-$i.log" 2>&1
        status=$?
        cat "$work/run-$i.log"
        [ "$status" -eq 0 ] || echo "run $i failed with status $status"
        grep '^SUMMARY' "$work/run-$i.log" >> "$work/summaries.txt"
        i=$((i + 1))
    done
    echo "== median (min-max) over $(wc -l < "$work/summaries.txt") runs"
    for key in scrape_ms connect_s rss_idle_kib rss_steady_kib rss_burst_kib rss_storm_kib hwm_kib \
        steady_samples_per_s burst_samples_per_s storm_s lost failures; do
        tr ' ' '\n' < "$work/summaries.txt" | sed -n "s/^$key=//p" | sort -n | awk -v k="$key" '
            { v[NR] = $1 }
            END {
                if (NR == 0) { print k ": no data"; exit }
                m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                printf "%s: %s (%s-%s)\n", k, m, v[1], v[NR]
            }'
    done
    grep -o 'rpc=n=[0-9]* p50=[0-9.]*ms p99=[0-9.]*ms max=[0-9.]*ms errors=[0-9]*' "$work/summaries.txt"
}

main "$@" || exit 1
