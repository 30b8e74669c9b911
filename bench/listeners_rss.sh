#!/bin/sh
# The agent's memory with its StatsD/Graphite listeners on and off: the real
# release stub + library against a real server on loopback, once with
# `listeners = { statsd = "off", graphite = "off" }` and once with both on
# (non-default loopback ports, default flush_secs 10 and max_series), no
# checks. Each mode: enrol and load the published library, WARMUP_SECS, then
#   idle: VmRSS of the stub process (library inside) sampled every 2 s for
#         IDLE_SECS; median (min-max), and VmHWM at the end (the peak is
#         reset at the window's start by writing 5 to /proc/PID/clear_refs,
#         so it is this window's peak, not the start's; needs root or the
#         stub's owner);
#   load: a sender (python3, paced every 1 ms) sends RATE StatsD
#         datagrams/s for LOAD_SECS to the StatsD port (also when the
#         listeners are off, so the machine carries the same sender), each
#         datagram one of 100 counter names (`bench.c<N>:1|c`); VmRSS sampled
#         every 2 s meanwhile, and VmHWM at the end.
# With the listeners on, the datagrams the listener read
# (`outrider.listener.statsd.datagrams`, summed from the server's series)
# are compared with those sent, so the load really reached the agent.
# The load average is printed at each phase (the machine may be shared).
#
# Usage:   bench/listeners_rss.sh
# Env:     RATE=10000 LOAD_SECS=60 IDLE_SECS=30 WARMUP_SECS=40 (past the
#          stub's release of idle pages 30 s after its first update check)
#          STATSD_PORT=18125 GRAPHITE_PORT=12003
#          BIN=target/release (stub + library measured; built unless
#          SKIP_BUILD=1), SERVER_BIN and CLI_BIN (default: BIN's; the server is
#          not measured, a debug build does),
#          WORK=/tmp/outrider-listeners-rss-bench (wiped at start)
# Needs:   python3, jq, curl.
set -u
RATE=${RATE:-10000}
LOAD_SECS=${LOAD_SECS:-60}
IDLE_SECS=${IDLE_SECS:-30}
WARMUP_SECS=${WARMUP_SECS:-40}
STATSD_PORT=${STATSD_PORT:-18125}
GRAPHITE_PORT=${GRAPHITE_PORT:-12003}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
SERVER_BIN=${SERVER_BIN:-$BIN/outrider-server}
CLI_BIN=${CLI_BIN:-$BIN/outrider}
BASE=${WORK:-/tmp/outrider-listeners-rss-bench}
TOKEN=bench-enrollment-token
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SENDER_PID=
trap 'kill -TERM $SENDER_PID 2>/dev/null; cleanup' EXIT INT TERM

need_tools python3 jq curl
if [ -z "${SKIP_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --locked --release -p outrider-agent-lib -p outrider-agent-stub) ||
        die "build failed"
fi
for f in "$BIN/outrider-agent" "$BIN/liboutrider_agent.so" "$SERVER_BIN" "$CLI_BIN"; do
    [ -e "$f" ] || die "$f is missing"
done
rm -rf "$BASE"
mkdir -p "$BASE"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$AGENT_PID/status"; }
reset_peak() { echo 5 >"/proc/$AGENT_PID/clear_refs" || die "cannot reset VmHWM"; }

# sample SECS FILE: VmRSS every 2 s for SECS into FILE.
sample() {
    : >"$2"
    end=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$end" ]; do
        status_kib VmRSS >>"$2"
        sleep 2
    done
}
summary() { echo "median $(pct "$1" 0.5) KiB ($(sort -n "$1" | head -1)-$(sort -n "$1" | tail -1)), n=$(wc -l <"$1")"; }

api() { curl -sf -H "Authorization: Bearer $ADMIN" "$URL/api/v1/$1"; }
# listener_datagrams: the agent's own count of StatsD datagrams read, summed
# over its samples on the server (0 while none arrived).
listener_datagrams() {
    fp=$(api agents | jq -r '.[0].fingerprint')
    api "series/query?agent=$fp&check=outrider.samples&metric=outrider.listener.statsd.datagrams" |
        jq '[.points[].value // 0] | add // 0' 2>/dev/null || echo 0
}

for mode in off on; do
    WORK="$BASE/$mode"
    mkdir -p "$WORK"
    BIN_SAVED=$BIN
    BIN=$(dirname "$SERVER_BIN") start_server
    BIN=$BIN_SAVED
    "$CLI_BIN" keys init --dir "$WORK/keys" >"$WORK/keys.log" 2>&1 || die "keys init failed"
    "$CLI_BIN" --server "$URL" --token "$ADMIN" release publish --channel bench --keys "$WORK/keys" \
        --version b1 --deltas 0 "$BIN/liboutrider_agent.so" >"$WORK/publish.log" 2>&1 ||
        die "publish failed"
    if [ "$mode" = on ]; then
        listeners="listeners = { statsd = \"127.0.0.1:$STATSD_PORT\", graphite = \"127.0.0.1:$GRAPHITE_PORT\" }"
    else
        listeners='listeners = { statsd = "off", graphite = "off" }'
    fi
    start_stub "$listeners"
    wait_for "b1 to be current" 120 current_is b1
    log "mode $mode: stub pid $AGENT_PID runs b1; warm-up ${WARMUP_SECS}s"
    sleep "$WARMUP_SECS"
    log "mode $mode: idle window ${IDLE_SECS}s, load average $(loadavg)"
    reset_peak
    sample "$IDLE_SECS" "$WORK/idle.rss"
    idle_hwm=$(status_kib VmHWM)
    log "mode $mode: load window ${LOAD_SECS}s at $RATE datagrams/s, load average $(loadavg)"
    python3 - "$STATSD_PORT" "$RATE" "$LOAD_SECS" >"$WORK/sender.out" <<'PY' &
import socket, sys, time
port, rate, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
names = [b"bench.c%d:1|c" % i for i in range(100)]
sent, start = 0, time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= secs:
        break
    due = min(int(now * rate), int(secs * rate))
    while sent < due:
        try:
            s.sendto(names[sent % 100], ("127.0.0.1", port))
        except OSError:
            pass  # nobody listening (listeners off): ICMP refusals
        sent += 1
    time.sleep(0.001)
print(sent, round(sent / (time.monotonic() - start)))
PY
    SENDER_PID=$!
    reset_peak
    sample "$LOAD_SECS" "$WORK/load.rss"
    wait "$SENDER_PID"
    SENDER_PID=
    load_hwm=$(status_kib VmHWM)
    read -r sent rate_done <"$WORK/sender.out"
    log "mode $mode: sender done, load average $(loadavg)"
    read_count=n/a
    if [ "$mode" = on ]; then
        # Flushed every 10 s, then sent: wait (bounded) for the last interval.
        deadline=$(($(date +%s) + 40))
        while [ "$(date +%s)" -lt "$deadline" ]; do
            read_count=$(listener_datagrams)
            [ "${read_count%.*}" -ge "$sent" ] 2>/dev/null && break
            sleep 1
        done
    fi
    echo "mode=$mode idle: $(summary "$WORK/idle.rss"), VmHWM $idle_hwm KiB"
    echo "mode=$mode load: $(summary "$WORK/load.rss"), VmHWM $load_hwm KiB;" \
        "sent $sent at $rate_done/s, listener read $read_count"
    cleanup
    AGENT_PID=
    SERVER_PID=
done
