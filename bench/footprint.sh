#!/bin/sh
# Agent footprint side by side (lean agent): the outrider stub + library
# with 20 checks, and Debian's collectd, zabbix-agent,
# prometheus-node-exporter and NRPE, started by hand on the same machine in
# one run; then run-now latency of the same plugin (check_load) through
# `outrider run` and through `check_nrpe`, interleaved A B A B.
#
# Memory: after WARMUP_SECS, VmRSS (/proc/PID/status) and Pss
# (/proc/PID/smaps_rollup) of every process of each agent, summed (zabbix_agentd
# is a main process plus collector and listener children; the others are one
# process), sampled every 2 s for MEMORY_SECS: median VmRSS (min–max) and
# median Pss. Sampled, not read once, because the stub gives back idle pages
# 30 s after each update check and faults some back in at the next one
# (stub/src/memory.rs): one reading would land anywhere on that sawtooth.
# Plugin children are not an agent's memory and are not counted. For the
# stub, RssAnon / RssFile and the largest mappings by Rss (at the end of the
# window) are printed too, so a change can be traced to heap, stacks or code
# pages.
#
# Latency: each sample is the wall time of the operator's command, process
# start included: `outrider run <agent> load` (CLI → server → websocket →
# agent → plugin → back) and `check_nrpe -H 127.0.0.1 -p PORT -c check_load`
# (TLS to nrpe → plugin → back). SAMPLES of each, interleaved; p50 / p99 / max.
#
# The stub looks for updates every UPDATE_INTERVAL_SECS (10 s), so the
# swaps below are picked up without waiting; the default is 15 min
# (UPDATE_INTERVAL_SECS=900 SWAPS=0 measures the agent as installed).
#
# Swaps: then SWAPS hot swaps (the release library with a different trailer
# appended each time, published as b2, b3, ...; each waited for until
# state.json says it is current), and the stub's figures after each
# (sampled as above for SWAP_SECS after a 10 s settle), since idle memory
# used to grow with every swap.
#
# Usage:   bench/footprint.sh
# Env:     DIST=1 (measure what we ship: stub, library and CLI built by
#          packaging/build into target/dist — profile `dist`, portable —
#          the server still from target/release; default: all four from
#          the release profile in target/release),
#          DIST_DIR=dir (with DIST=1: where the stub, library and CLI are;
#          default target/dist, for an A/B of two builds),
#          SERVER_BIN=path (with DIST=1: the server to run; it is not
#          measured, only answers the agent and `outrider run`),
#          SKIP_BUILD=1 (use target/release and target/dist as they are),
#          WARMUP_SECS=60, MEMORY_SECS=60, SAMPLES=30, SWAPS=3, SWAP_SECS=30,
#          UPDATE_INTERVAL_SECS=10,
#          WORK=/tmp/outrider-footprint-bench (wiped at start)
# Needs:   collectd-core zabbix-agent prometheus-node-exporter
#          nagios-nrpe-server nagios-nrpe-plugin monitoring-plugins-basic
#          (apt-get install; their services need not run: each is started here
#          in the foreground with its own config under WORK, on loopback,
#          and stopped on exit), sqlite3, jq.

set -u

WARMUP_SECS=${WARMUP_SECS:-60}
MEMORY_SECS=${MEMORY_SECS:-60}
SWAP_SECS=${SWAP_SECS:-30}
UPDATE_INTERVAL_SECS=${UPDATE_INTERVAL_SECS:-10}
SAMPLES=${SAMPLES:-30}
SWAPS=${SWAPS:-3}
WORK=${WORK:-/tmp/outrider-footprint-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
TOKEN=bench-enrollment-token
PLUGINS=/usr/lib/nagios/plugins
LOAD_ARGS="-w 1000,1000,1000 -c 2000,2000,2000"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

OTHER_PIDS=

stop_all() {
    for pid in $OTHER_PIDS; do
        kill -TERM "$pid" 2>/dev/null
    done
    cleanup
    for pid in $OTHER_PIDS; do
        kill -KILL "$pid" 2>/dev/null
    done
}

# free_port: a loopback TCP port nobody listens on now, below 32768
# (zabbix_agentd refuses higher ones).
free_port() {
    python3 -c '
import random, socket
for port in random.sample(range(20000, 32000), 200):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
'
}

# pids_of PID: PID and its descendants.
pids_of() {
    echo "$1"
    # shellcheck disable=SC2013 # the file is a list of words (pids)
    for child in $(cat "/proc/$1/task/"*/children 2>/dev/null); do
        pids_of "$child"
    done
}

# sample PID [PID...]: one line "VmRSS Pss processes", summed over the
# processes, in KiB.
sample() {
    rss=0 pss=0 n=0
    for pid in "$@"; do
        r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        p=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null)
        rss=$((rss + ${r:-0})) pss=$((pss + ${p:-0})) n=$((n + 1))
    done
    echo "$rss $pss $n"
}

# summary FILE: "median VmRSS (min–max), median Pss" of FILE's samples.
summary() {
    n=$(wc -l <"$1")
    rss_med=$(cut -d' ' -f1 "$1" | sort -n | sed -n "$(((n + 1) / 2))p")
    rss_min=$(cut -d' ' -f1 "$1" | sort -n | head -1)
    rss_max=$(cut -d' ' -f1 "$1" | sort -n | tail -1)
    pss_med=$(cut -d' ' -f2 "$1" | sort -n | sed -n "$(((n + 1) / 2))p")
    echo "$rss_med $rss_min $rss_max $pss_med $n"
}

# sample_agents SECS: every 2 s for SECS, a sample of each agent into
# $WORK/mem-<agent>.txt.
sample_agents() {
    : >"$WORK/mem-outrider.txt" && : >"$WORK/mem-collectd.txt" && : >"$WORK/mem-zabbix.txt"
    : >"$WORK/mem-node.txt" && : >"$WORK/mem-nrpe.txt"
    end=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$end" ]; do
        sample "$AGENT_PID" >>"$WORK/mem-outrider.txt"
        # shellcheck disable=SC2046 # word lists of pids
        sample $(pids_of "$COLLECTD_PID") >>"$WORK/mem-collectd.txt"
        # shellcheck disable=SC2046
        sample $(pids_of "$ZABBIX_PID") >>"$WORK/mem-zabbix.txt"
        # shellcheck disable=SC2046
        sample $(pids_of "$NODE_PID") >>"$WORK/mem-node.txt"
        # shellcheck disable=SC2046
        sample $(pids_of "$NRPE_PID") >>"$WORK/mem-nrpe.txt"
        sleep 2
    done
}

# figures NAME FILE: one line of the table from FILE's samples.
figures() {
    # shellcheck disable=SC2046 # five numbers
    set -- "$1" $(summary "$2") "$(tail -1 "$2" | cut -d' ' -f3)"
    printf '%-26s %8s KiB VmRSS (%s-%s) %8s KiB Pss  (%s samples, %s process%s)\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$([ "$7" = 1 ] || echo es)"
}

# stub_window SECS: the stub's figures sampled for SECS, one line.
stub_window() {
    : >"$WORK/mem-window.txt"
    end=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$end" ]; do
        sample "$AGENT_PID" >>"$WORK/mem-window.txt"
        sleep 2
    done
    # shellcheck disable=SC2046 # five numbers
    set -- $(summary "$WORK/mem-window.txt")
    echo "VmRSS median $1 KiB ($2-$3), Pss median $4 KiB, $(proc_figures | cut -d' ' -f3-)"
}

# time_ms COMMAND...: wall time of COMMAND in ms (its output discarded);
# fails if COMMAND does.
time_ms() {
    t0=$(date +%s%N)
    "$@" >/dev/null 2>&1 || return 1
    echo $((($(date +%s%N) - t0) / 1000000))
}

start_collectd() {
    cat >"$WORK/collectd.conf" <<EOF
Interval 10
BaseDir "$WORK/collectd"
PIDFile "$WORK/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin load
LoadPlugin interface
LoadPlugin df
LoadPlugin disk
LoadPlugin processes
LoadPlugin swap
LoadPlugin uptime
LoadPlugin csv
<Plugin csv>
  DataDir "$WORK/collectd/csv"
</Plugin>
EOF
    mkdir -p "$WORK/collectd"
    collectd -f -C "$WORK/collectd.conf" >"$WORK/collectd.log" 2>&1 &
    COLLECTD_PID=$!
    OTHER_PIDS="$OTHER_PIDS $COLLECTD_PID"
}

start_zabbix() {
    ZABBIX_PORT=$(free_port)
    cat >"$WORK/zabbix_agentd.conf" <<EOF
PidFile=$WORK/zabbix_agentd.pid
LogType=console
Server=127.0.0.1
ListenIP=127.0.0.1
ListenPort=$ZABBIX_PORT
ServerActive=
Hostname=bench
AllowRoot=1
EOF
    zabbix_agentd -f -c "$WORK/zabbix_agentd.conf" >"$WORK/zabbix.log" 2>&1 &
    ZABBIX_PID=$!
    OTHER_PIDS="$OTHER_PIDS $ZABBIX_PID"
}

start_node_exporter() {
    NODE_PORT=$(free_port)
    prometheus-node-exporter --web.listen-address="127.0.0.1:$NODE_PORT" >"$WORK/node.log" 2>&1 &
    NODE_PID=$!
    OTHER_PIDS="$OTHER_PIDS $NODE_PID"
}

start_nrpe() {
    NRPE_PORT=$(free_port)
    cat >"$WORK/nrpe.cfg" <<EOF
pid_file=$WORK/nrpe.pid
server_address=127.0.0.1
server_port=$NRPE_PORT
nrpe_user=nagios
nrpe_group=nagios
allowed_hosts=127.0.0.1
dont_blame_nrpe=0
command_timeout=60
log_file=$WORK/nrpe.log
command[check_load]=$PLUGINS/check_load $LOAD_ARGS
EOF
    nrpe -c "$WORK/nrpe.cfg" -f >"$WORK/nrpe.out" 2>&1 &
    NRPE_PID=$!
    OTHER_PIDS="$OTHER_PIDS $NRPE_PID"
}

stub_details() {
    awk '/^(RssAnon|RssFile|RssShmem|VmStk|Threads):/ {printf "%s %s%s  ", $1, $2, ($3 ? " " $3 : "")}' "/proc/$AGENT_PID/status"
    echo
    echo "largest mappings of the stub by Rss (KiB, mapping):"
    awk '/^[0-9a-f]+-[0-9a-f]+ / { name = ($6 == "" ? "[anon]" : $6) }
         /^Rss:/ { rss[name] += $2 }
         END { for (n in rss) if (rss[n] >= 64) printf "  %6d  %s\n", rss[n], n }' \
        "/proc/$AGENT_PID/smaps" | sort -rn | head -12
}

main() {
    trap stop_all EXIT
    trap 'exit 130' INT TERM
    need_tools sqlite3 jq collectd zabbix_agentd prometheus-node-exporter nrpe python3
    for plugin in check_nrpe check_load; do
        [ -x "$PLUGINS/$plugin" ] ||
            die "$PLUGINS/$plugin is needed (nagios-nrpe-plugin, monitoring-plugins-basic)"
    done
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        if [ "${DIST:-0}" = 1 ]; then
            log "packaging/build (stub, agent library, cli; profile dist) and cargo build --release (server)"
            "$ROOT/packaging/build" --only outrider-agent-lib --only outrider-agent-stub \
                --only outrider-cli >/dev/null || die "dist build failed"
            (cd "$ROOT" && cargo build --locked --release -p outrider-server) || die "release build failed"
        else
            log "cargo build --locked --release (server, cli, stub, agent library)"
            (cd "$ROOT" && cargo build --locked --release -p outrider-server -p outrider-cli \
                -p outrider-agent-stub -p outrider-agent-lib) || die "release build failed"
        fi
    fi

    rm -rf "$WORK"
    mkdir -p "$WORK"
    if [ "${DIST:-0}" = 1 ]; then
        # One directory of the four, so bench/lib.sh runs them as it would
        # the release build.
        dist="${DIST_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/dist}"
        case $dist in /*) ;; *) dist="$ROOT/$dist" ;; esac
        mkdir -p "$WORK/bin"
        for f in outrider-agent liboutrider_agent.so outrider; do
            [ -e "$dist/$f" ] || die "$dist/$f is missing: run packaging/build"
            ln -s "$dist/$f" "$WORK/bin/$f"
        done
        ln -s "${SERVER_BIN:-$BIN/outrider-server}" "$WORK/bin/outrider-server"
        BIN="$WORK/bin"
        PROFILE_NAME="dist (packaging/build)"
    else
        PROFILE_NAME=release
    fi
    need_binaries "run the release build (or packaging/build for DIST=1)"
    start_server
    "$BIN/outrider" keys init --dir "$WORK/keys" >"$WORK/keys.log" 2>&1 || die "keys init failed"
    printf '#!/bin/sh\necho "OK - bench | value=1;;;;"\n' >"$WORK/plugin.sh"
    chmod 755 "$WORK/plugin.sh"
    i=0
    while [ $i -lt 19 ]; do
        cli checks add "i$i" --interval-secs 30 --timeout-secs 10 -- "$WORK/plugin.sh" >/dev/null ||
            die "checks add i$i failed"
        i=$((i + 1))
    done
    # shellcheck disable=SC2086 # LOAD_ARGS is a word list
    cli checks add load --interval-secs 30 --timeout-secs 10 -- "$PLUGINS/check_load" $LOAD_ARGS >/dev/null ||
        die "checks add load failed"
    cli release publish --channel bench --keys "$WORK/keys" --version b1 --deltas 0 \
        "$BIN/liboutrider_agent.so" >"$WORK/publish.log" 2>&1 || die "publish failed"
    start_stub "update_interval_secs = $UPDATE_INTERVAL_SECS"
    wait_for "b1 to be current" 120 current_is b1
    wait_for "a result of check load" 60 sh -c "[ \"\$(sqlite3 '$DB' \"SELECT COUNT(*) FROM results WHERE check_name = 'load'\")\" -gt 0 ]"
    AGENT_FP=$(cli --json agents | jq -r '.[0].fingerprint')

    start_collectd
    start_zabbix
    start_node_exporter
    start_nrpe
    wait_for "nrpe to answer" 30 sh -c "'$PLUGINS/check_nrpe' -H 127.0.0.1 -p $NRPE_PORT -c check_load >/dev/null 2>&1"
    wait_for "node exporter to answer" 30 curl -fs -o /dev/null "http://127.0.0.1:$NODE_PORT/metrics"
    log "all agents running; warm-up ${WARMUP_SECS}s"
    sleep "$WARMUP_SECS"
    # A scrape and a zabbix query, so each serves once before it is measured.
    curl -fs -o /dev/null "http://127.0.0.1:$NODE_PORT/metrics"
    log "sampling memory for ${MEMORY_SECS}s"
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    sample_agents "$MEMORY_SECS"
    {
        echo "== memory from ${WARMUP_SECS}s for ${MEMORY_SECS}s, $(date -u +%Y-%m-%dT%H:%MZ), load average $load_before =="
        figures "outrider stub + library" "$WORK/mem-outrider.txt"
        figures "collectd" "$WORK/mem-collectd.txt"
        figures "zabbix_agentd" "$WORK/mem-zabbix.txt"
        figures "prometheus-node-exporter" "$WORK/mem-node.txt"
        figures "nrpe" "$WORK/mem-nrpe.txt"
        echo "stub: $(stub_details)"
    } >"$WORK/memory.txt"
    cat "$WORK/memory.txt" >&2

    log "run-now latency: $SAMPLES samples each, interleaved"
    : >"$WORK/lat-outrider.txt"
    : >"$WORK/lat-nrpe.txt"
    i=0
    while [ $i -lt "$SAMPLES" ]; do
        time_ms cli run "$AGENT_FP" load >>"$WORK/lat-outrider.txt" || die "outrider run failed"
        time_ms "$PLUGINS/check_nrpe" -H 127.0.0.1 -p "$NRPE_PORT" -c check_load >>"$WORK/lat-nrpe.txt" ||
            die "check_nrpe failed"
        i=$((i + 1))
    done
    STUB_AFTER_RUNS="$(proc_figures)"
    log "$SWAPS hot swaps"
    mkdir -p "$WORK/libs"
    : >"$WORK/swaps.txt"
    s=2
    while [ $s -le $((SWAPS + 1)) ]; do
        cp "$BIN/liboutrider_agent.so" "$WORK/libs/b$s.so"
        printf 'outrider-bench-footprint build %s\n' "$s" >>"$WORK/libs/b$s.so"
        cli release publish --channel bench --keys "$WORK/keys" --version "b$s" --deltas 0 \
            "$WORK/libs/b$s.so" >>"$WORK/publish.log" 2>&1 || die "publish b$s failed"
        wait_for "b$s to be current" 180 current_is "b$s"
        sleep 10 # the new generation settles (connects, runs its checks)
        echo "after swap to b$s: $(stub_window "$SWAP_SECS")" >>"$WORK/swaps.txt"
        s=$((s + 1))
    done
    plain=$( (cd "$WORK" && for _ in 1 2 3 4 5 6 7 8 9 10; do time_ms "$PLUGINS/check_load" -w 1000,1000,1000 -c 2000,2000,2000; done) | sort -n | head -1)
    cat <<EOF

== outrider footprint benchmark, $(date -u +%Y-%m-%d) ==
commit: $(git -C "$ROOT" rev-parse --short HEAD), profile $PROFILE_NAME (library built $(date -u -r "$(readlink -f "$BIN/liboutrider_agent.so")" +%H:%M:%SZ), stub $(stat -L -c %s "$BIN/outrider-agent") B, library $(stat -L -c %s "$BIN/liboutrider_agent.so") B)
$(cat "$WORK/memory.txt")
run-now, ms (wall time of the command, process start included):
  outrider run <agent> load   p50=$(pct "$WORK/lat-outrider.txt" 0.5) p99=$(pct "$WORK/lat-outrider.txt" 0.99) max=$(pct "$WORK/lat-outrider.txt" 1) n=$(wc -l <"$WORK/lat-outrider.txt")
  check_nrpe -c check_load    p50=$(pct "$WORK/lat-nrpe.txt" 0.5) p99=$(pct "$WORK/lat-nrpe.txt" 0.99) max=$(pct "$WORK/lat-nrpe.txt" 1) n=$(wc -l <"$WORK/lat-nrpe.txt")
  check_load alone (fastest of 10): ${plain} ms
stub after the run-now samples, before the swaps: $STUB_AFTER_RUNS
$(cat "$WORK/swaps.txt")
EOF
}

main "$@" || exit 1
