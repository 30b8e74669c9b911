#!/bin/sh
# Multi-node benchmark (docs/benchmarks.md, "Several nodes on PostgreSQL:
# 10,000 agents"): starts a private PostgreSQL for the run (initdb + pg_ctl
# in a temporary directory, Unix socket only, PostgreSQL's default
# durability: fsync and synchronous_commit on), then RUNS times, in turn:
#   - bench/loadgen in cluster mode: NODES release outrider-server nodes on a
#     fresh database of that PostgreSQL (bench/loadgen/src/cluster.rs),
#     printing a CLUSTER line;
#   - bench/loadgen against one node on SQLite (as bench/server.sh),
#     printing a SUMMARY line, for the single-node figures beside them;
# then the median (min-max) of each figure. PostgreSQL is stopped and its
# directory removed on exit, whatever happens. Extra arguments go to both
# loadgen runs (e.g. --agents 300 --steady-secs 20).
#
#   bench/cluster.sh                          # 1 run each, 10,000 agents, 3 nodes
#   RUNS=3 bench/cluster.sh --steady-secs 60
#   SKIP_BUILD=1 SINGLE=0 bench/cluster.sh --agents 300   # reuse target/release, cluster only
#
# Environment: RUNS (1), NODES (3), SINGLE (1: also the SQLite runs),
# WORK (logs, /tmp/outrider-cluster-bench), PG_MAX_CONNECTIONS (200),
# OUTRIDER_PG_BINDIR (initdb and
# pg_ctl; default: pg_config --bindir, else the newest
# /usr/lib/postgresql/*/bin). Run as root, initdb and pg_ctl run as the
# `postgres` user through setpriv (they refuse root), as
# pgtest/src/lib.rs does.
set -u

pgdir=
as_pg=

cleanup() {
    if [ -n "$pgdir" ] && [ -d "$pgdir" ]; then
        if [ -f "$pgdir/data/postmaster.pid" ]; then
            $as_pg "$bindir/pg_ctl" stop -m fast -w -D "$pgdir/data" > /dev/null 2>&1
        fi
        rm -rf "$pgdir"
    fi
}

pg_bindir() {
    if [ -n "${OUTRIDER_PG_BINDIR:-}" ]; then
        echo "$OUTRIDER_PG_BINDIR"
        return
    fi
    d=$(pg_config --bindir 2>/dev/null)
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        echo "$d"
        return
    fi
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n | while read -r d; do
        [ -x "$d/initdb" ] && echo "$d"
    done | tail -n 1
}

start_pg() {
    bindir=$(pg_bindir)
    [ -n "$bindir" ] || { echo "no initdb found: set OUTRIDER_PG_BINDIR" >&2; return 1; }
    pgdir=$(mktemp -d /tmp/outrider-cluster-pg.XXXXXX) || return 1
    if [ "$(id -u)" -eq 0 ]; then
        uid=$(id -u postgres) && gid=$(id -g postgres) || { echo "no postgres user" >&2; return 1; }
        chown "$uid:$gid" "$pgdir" || return 1
        as_pg="setpriv --reuid=$uid --regid=$gid --clear-groups --"
    fi
    # Connections: each node's pool (16 by default) plus its bus listener
    # and leader sessions, the harness's count at the end, psql: 200 is
    # ample for 3 nodes.
    (cd "$pgdir" && $as_pg "$bindir/initdb" -A trust -U outrider -E UTF8 --locale=C -D "$pgdir/data") \
        > "$work/initdb.log" 2>&1 || { cat "$work/initdb.log"; return 1; }
    (cd "$pgdir" && $as_pg "$bindir/pg_ctl" start -w -t 60 -D "$pgdir/data" -l "$pgdir/log" \
        -o "-k '$pgdir' -p 5432 -c listen_addresses='' -c max_connections=${PG_MAX_CONNECTIONS:-200}") \
        > /dev/null || { cat "$pgdir/log"; return 1; }
    "$bindir/psql" -h "$pgdir" -p 5432 -U outrider -d postgres -Atc \
        "SELECT version(); SHOW fsync; SHOW synchronous_commit; SHOW max_connections" || return 1
}

medians() {
    file=$1
    shift
    for key in "$@"; do
        tr ' ' '\n' < "$file" | sed -n "s/^$key=//p" | sort -n | awk -v k="$key" '
            { v[NR] = $1 }
            END {
                if (NR == 0) { print k ": no data"; exit }
                m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                printf "  %s: %s (%s-%s)\n", k, m, v[1], v[NR]
            }'
    done
}

main() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    runs=${RUNS:-1}
    nodes=${NODES:-3}
    work=${WORK:-/tmp/outrider-cluster-bench}
    mkdir -p "$work" || return 1
    if [ -z "${SKIP_BUILD:-}" ]; then
        (cd "$root" && cargo build --locked --release -p outrider-server -p outrider-loadgen -p outrider-cli) || return 1
    fi
    target=${CARGO_TARGET_DIR:-$root/target}
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    start_pg || return 1
    echo "load before the runs: $(cat /proc/loadavg)"
    : > "$work/cluster.txt"
    : > "$work/single.txt"
    i=1
    while [ "$i" -le "$runs" ]; do
        echo "== cluster run $i of $runs ($nodes nodes)"
        "$bindir/createdb" -h "$pgdir" -p 5432 -U outrider "bench$i" || return 1
        "$target/release/outrider-loadgen" --server-bin "$target/release/outrider-server" \
            --nodes "$nodes" --database "host=$pgdir port=5432 user=outrider dbname=bench$i" "$@" \
            > "$work/cluster-$i.log" 2>&1
        status=$?
        cat "$work/cluster-$i.log"
        [ "$status" -eq 0 ] || echo "cluster run $i failed with status $status"
        grep '^CLUSTER' "$work/cluster-$i.log" >> "$work/cluster.txt"
        echo "load after: $(cat /proc/loadavg)"
        if [ "${SINGLE:-1}" != 0 ]; then
            echo "== single-node (SQLite) run $i of $runs"
            "$target/release/outrider-loadgen" --server-bin "$target/release/outrider-server" \
                --cli-bin "$target/release/outrider" "$@" > "$work/single-$i.log" 2>&1
            status=$?
            cat "$work/single-$i.log"
            [ "$status" -eq 0 ] || echo "single-node run $i failed with status $status"
            grep '^SUMMARY' "$work/single-$i.log" >> "$work/single.txt"
            echo "load after: $(cat /proc/loadavg)"
        fi
        i=$((i + 1))
    done
    echo "== cluster: median (min-max) over $(wc -l < "$work/cluster.txt") runs"
    medians "$work/cluster.txt" connect_s steady_samples_per_s rss_max_kib burst_samples_per_s local_p50_ms local_p95_ms \
        local_p99_ms relayed_p50_ms relayed_p95_ms relayed_p99_ms added_p95_ms rpc_errors killed_agents \
        reconnect_s reacked_s kill_rpc_ok kill_rpc_failed kill_rpc_fail_p50_ms kill_rpc_fail_max_ms \
        lost on_two_nodes unacked failures
    grep -o 'rss_kib=[0-9/]*\|store=[a-z-]*' "$work/cluster.txt"
    if [ "${SINGLE:-1}" != 0 ]; then
        echo "== single node (SQLite): median (min-max) over $(wc -l < "$work/single.txt") runs"
        medians "$work/single.txt" connect_s rss_steady_kib hwm_kib steady_samples_per_s \
            burst_samples_per_s storm_s lost failures
        grep -o 'rpc=n=[0-9]* p50=[0-9.]*ms p99=[0-9.]*ms max=[0-9.]*ms errors=[0-9]*' "$work/single.txt"
    fi
}

main "$@" || exit 1
