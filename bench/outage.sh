#!/bin/sh
# Outage-to-page benchmark: the time from a real outage (a stub SIGKILLed)
# to a webhook receiver on loopback receiving the agent-down notification.
#
# One real `outrider-server`, AGENTS real stubs running the real agent
# library (each with its own tag, so no site outage groups them), and a
# webhook receiver (bench/notify_tool.py webhook PORT log) that prints the
# arrival time of every POST. Once the server's restart grace is over (no
# agent-down within `down_for + restart_grace_extra` of its start, see
# alerting/src/config.rs), the stubs are SIGKILLed one by one, SPACING_SECS
# apart; each sample is webhook arrival minus kill, per agent (matched by
# the batch's tag). Target: down_for + group_wait + 5 s.
#
# Usage:   bench/outage.sh [AGENTS]       (default 5)
# Env:     SCALED=1  down_for 10 s, group_wait 2 s, no extra restart grace,
#                    100 ms ticks (default: the shipped defaults, down_for
#                    2 min, group_wait 30 s, 60 s extra grace, 1 s ticks)
#          SPACING_SECS=10  between two kills
#          SKIP_BUILD=1  do not run the release build
#          WORK=/tmp/outrider-outage-bench  work directory (wiped at start)
#          BIN=target/release  where the binaries are
# Needs: jq, /usr/bin/python3. Everything listens on 127.0.0.1 only; every
# wait is bounded; every process started here is stopped on exit.

set -u

AGENTS=${1:-5}
SPACING_SECS=${SPACING_SECS:-10}
WORK=${WORK:-/tmp/outrider-outage-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
TOKEN=bench-enrollment-token
PY=/usr/bin/python3
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

HOOK_PID=
STUB_PIDS=

stop_all() {
    # shellcheck disable=SC2086 # lists of PIDs
    stop_pids $STUB_PIDS $HOOK_PID
    cleanup
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

connected_count() {
    cli agents --json | jq '[.[] | select(.presence == "connected")] | length'
}

all_connected() { [ "$(connected_count)" -eq "$AGENTS" ]; }

all_paged() { [ "$(grep -c ' firing$' "$WORK/hook.out")" -ge "$AGENTS" ]; }

main() {
    need_tools jq
    if [ "${SKIP_BUILD:-}" != 1 ]; then
        log "building release binaries"
        (cd "$ROOT" && cargo build --locked --release -p outrider-server -p outrider-cli \
            -p outrider-agent-stub -p outrider-agent-lib) || die "build failed"
    fi
    need_binaries "build them (without SKIP_BUILD=1)"
    rm -rf "$WORK"
    mkdir -p "$WORK"
    trap stop_all EXIT INT TERM

    if [ "${SCALED:-}" = 1 ]; then
        down_for_ms=10000 group_wait_ms=2000 extra_ms=0 tick_ms=100
    else
        down_for_ms=120000 group_wait_ms=30000 extra_ms=60000 tick_ms=1000
    fi
    printf '{"down_for_ms": %s, "restart_grace_extra_ms": %s, "group": {"group_wait_ms": %s}}\n' \
        "$down_for_ms" "$extra_ms" "$group_wait_ms" >"$WORK/alerting.json"

    hook_port=$(free_port)
    mkfifo "$WORK/hook.in"
    "$PY" "$ROOT/bench/notify_tool.py" webhook "$hook_port" log <"$WORK/hook.in" >"$WORK/hook.out" &
    HOOK_PID=$!
    exec 3>"$WORK/hook.in"
    wait_for "the webhook receiver" 10 grep -q ready "$WORK/hook.out"

    RUST_LOG=info "$BIN/outrider-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 --dashboard-listen 127.0.0.1:0 \
        --enrollment-token "$TOKEN" --ready-file "$WORK/ready" \
        --alerting-config "$WORK/alerting.json" --alert-tick-ms "$tick_ms" >"$WORK/server.log" 2>&1 &
    # shellcheck disable=SC2034 # read by cleanup in bench/lib.sh
    SERVER_PID=$!
    started=$(now_ms)
    wait_for "the server's ready file" 20 test -s "$WORK/ready"
    URL="http://$(cat "$WORK/ready")"
    # shellcheck disable=SC2034 # read by cli in bench/lib.sh
    ADMIN=$(cat "$WORK/server/admin.token")
    log "server $URL; down_for ${down_for_ms} ms, group_wait ${group_wait_ms} ms, extra grace ${extra_ms} ms"

    "$BIN/outrider" keys init --dir "$WORK/keys" >"$WORK/keys.log" 2>&1 || die "keys init failed"
    cli release publish --channel bench --keys "$WORK/keys" --deltas 0 "$BIN/liboutrider_agent.so" \
        >"$WORK/publish.log" 2>&1 || die "publish failed (see $WORK/publish.log)"
    printf 'bench-webhook-secret-0123456789\n' >"$WORK/secret"
    cli receivers add webhook hook --url "http://127.0.0.1:$hook_port/hook" \
        --secret-file "$WORK/secret" >/dev/null || die "adding the webhook"

    i=1
    while [ "$i" -le "$AGENTS" ]; do
        prefix="$WORK/agent-$i"
        mkdir -p "$prefix/etc"
        printf 'server_url = "%s"\nenrollment_token = "%s"\nchannel = "bench"\ntags = ["outage-%s"]\n' \
            "$URL" "$TOKEN" "$i" >"$prefix/etc/agent.toml"
        cp "$WORK/keys/root.json" "$prefix/etc/root.json"
        OUTRIDER_LOG=info "$BIN/outrider-agent" --prefix "$prefix" >"$prefix/stub.log" 2>&1 &
        STUB_PIDS="$STUB_PIDS $!"
        i=$((i + 1))
    done
    wait_for "$AGENTS agents connected" 120 all_connected
    log "$AGENTS agents connected"

    # The first kill may come once kill + down_for is past the restart grace.
    while [ "$(now_ms)" -lt $((started + extra_ms + 1000)) ]; do sleep 0.2; done
    : >"$WORK/kills.txt"
    i=1
    for pid in $STUB_PIDS; do
        kill -KILL "$pid"
        echo "outage-$i $(now_ms)" >>"$WORK/kills.txt"
        log "killed agent outage-$i (pid $pid)"
        i=$((i + 1))
        [ "$i" -le "$AGENTS" ] && sleep "$SPACING_SECS"
    done
    STUB_PIDS=
    limit=$(((down_for_ms + group_wait_ms) / 1000 + 120))
    wait_for "$AGENTS pages" "$limit" all_paged

    : >"$WORK/latency-ms.txt"
    while read -r tag killed; do
        arrived=$(awk -v t="$tag" '$3 == t && $4 == "firing" { print $2; exit }' "$WORK/hook.out")
        [ -n "$arrived" ] || die "no page for $tag"
        echo $((arrived - killed)) >>"$WORK/latency-ms.txt"
        log "$tag: paged $((arrived - killed)) ms after the kill"
    done <"$WORK/kills.txt"
    target=$((down_for_ms + group_wait_ms + 5000))
    echo "outage -> webhook ms: n=$(wc -l <"$WORK/latency-ms.txt") p50=$(pct "$WORK/latency-ms.txt" 0.5) max=$(pct "$WORK/latency-ms.txt" 1) min=$(sort -n "$WORK/latency-ms.txt" | head -1) target<=$target (down_for $down_for_ms + group_wait $group_wait_ms + 5000)"
    echo "pages received: $(grep -c '^post' "$WORK/hook.out") (expected $AGENTS, one per agent)"
}

main "$@" || exit 1
