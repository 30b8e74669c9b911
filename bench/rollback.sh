#!/bin/sh
# Fleet rollback benchmark: N real stubs (default 100) with the real agent
# library and a real `outrider-server`, all on loopback.
#
# The stubs check for updates only once an hour on their own
# (`update_interval_secs = 3600`), so every swap measured here is driven by
# the server's nudges, which it spreads over its nudge window
# (`--nudge-window-secs`, default 60 s). Two builds of the same library (the
# release .so with a different trailer appended: ELF ignores trailing bytes,
# each copy has its own SHA-256) are published as r1 and r2; once all N run
# r2, `outrider release rollback --to r1` is timed until every stub's
# state.json says r1 is `current` (its probation passed).
#
# Target: rollback → all N on the older build ≤ nudge window + 10 s.
#
# Usage:   bench/rollback.sh [N]          (default 100 stubs)
# Env:     SKIP_BUILD=1  do not run the release build
#          NUDGE_WINDOW_SECS=60  the server's nudge window
#          WORK=/tmp/outrider-rollback-bench  work directory (wiped at start)
# Needs: jq, sha256sum. Everything listens on 127.0.0.1 only; every wait is
# bounded; every process started here is stopped on exit.

set -u

AGENTS=${1:-100}
NUDGE_WINDOW_SECS=${NUDGE_WINDOW_SECS:-60}
WORK=${WORK:-/tmp/outrider-rollback-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
TOKEN=bench-enrollment-token
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

STUB_PIDS=

stop_all() {
    # shellcheck disable=SC2086 # a list of PIDs
    stop_pids $STUB_PIDS
    STUB_PIDS=
    cleanup
}

publish() { # publish VERSION FILE
    cli release publish --channel bench --keys "$WORK/keys" --version "$1" --deltas 0 "$2" \
        >>"$WORK/publish.log" 2>&1 || die "publish $1 failed (see $WORK/publish.log)"
}

# on_version V: prints how many stubs run V (state.json `current`).
on_version() {
    n=0
    i=0
    while [ $i -lt "$AGENTS" ]; do
        v=$(jq -r '.current.version // empty' "$WORK/agents/$i/state.json" 2>/dev/null)
        [ "$v" = "$1" ] && n=$((n + 1))
        i=$((i + 1))
    done
    echo "$n"
}

all_on() { [ "$(on_version "$1")" -eq "$AGENTS" ]; }

# arrivals V SINCE_MS: per stub, ms from SINCE_MS until its state.json last
# changed to V (the file's mtime), one a line, into $WORK/arrivals-V.txt.
arrivals() {
    : >"$WORK/arrivals-$1.txt"
    i=0
    while [ $i -lt "$AGENTS" ]; do
        f="$WORK/agents/$i/state.json"
        m=$(($(stat -c %.3Y "$f" | tr -d .)))
        echo $((m - $2)) >>"$WORK/arrivals-$1.txt"
        i=$((i + 1))
    done
}

start_stubs() {
    i=0
    while [ $i -lt "$AGENTS" ]; do
        dir="$WORK/agents/$i"
        mkdir -p "$dir/etc"
        cat >"$dir/etc/agent.toml" <<TOML
server_url = "$URL"
enrollment_token = "$TOKEN"
channel = "bench"
update_interval_secs = 3600
probation_secs = 60
TOML
        cp "$WORK/keys/root.json" "$dir/etc/root.json"
        OUTRIDER_LOG=warn "$BIN/outrider-agent" --prefix "$dir" >"$dir/stub.log" 2>&1 &
        STUB_PIDS="$STUB_PIDS $!"
        i=$((i + 1))
    done
}

main() {
    trap stop_all EXIT
    trap 'exit 130' INT TERM
    # shellcheck disable=SC3045 # dash and bash both have it
    ulimit -n 8192 2>/dev/null
    need_tools jq sha256sum stat
    if [ "${SKIP_BUILD:-0}" != 1 ]; then
        log "cargo build --locked --release --workspace"
        (cd "$ROOT" && cargo build --locked --release --workspace) || die "release build failed"
    fi
    need_binaries "run cargo build --release --workspace"

    rm -rf "$WORK"
    mkdir -p "$WORK/libs" "$WORK/agents"
    cp "$BIN/liboutrider_agent.so" "$WORK/libs/a.so"
    cp "$BIN/liboutrider_agent.so" "$WORK/libs/b.so"
    printf 'outrider-bench-rollback build A\n' >>"$WORK/libs/a.so"
    printf 'outrider-bench-rollback build B\n' >>"$WORK/libs/b.so"

    RUST_LOG=info "$BIN/outrider-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 --dashboard-listen 127.0.0.1:0 \
        --enrollment-token "$TOKEN" --ready-file "$WORK/ready" \
        --nudge-window-secs "$NUDGE_WINDOW_SECS" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    wait_for "the server's ready file" 20 test -s "$WORK/ready"
    URL="http://$(cat "$WORK/ready")"
    ADMIN=$(cat "$WORK/server/admin.token")
    log "server $URL (pid $SERVER_PID), nudge window ${NUDGE_WINDOW_SECS}s"

    "$BIN/outrider" keys init --dir "$WORK/keys" >"$WORK/keys.log" 2>&1 || die "keys init failed"
    publish r1 "$WORK/libs/a.so"
    start_stubs
    wait_for "$AGENTS stubs on r1" 300 all_on r1
    log "$AGENTS stubs run r1"

    t0=$(now_ms)
    publish r2 "$WORK/libs/b.so"
    wait_for "$AGENTS stubs on r2" $((NUDGE_WINDOW_SECS + 120)) all_on r2
    t1=$(now_ms)
    arrivals r2 "$t0"
    log "publish r2 -> all on r2: $((t1 - t0)) ms"

    t2=$(now_ms)
    cli release rollback --channel bench --keys "$WORK/keys" --to r1 >>"$WORK/publish.log" 2>&1 ||
        die "rollback failed (see $WORK/publish.log)"
    wait_for "$AGENTS stubs back on r1" $((NUDGE_WINDOW_SECS + 120)) all_on r1
    t3=$(now_ms)
    arrivals r1 "$t2"
    alive=0
    for pid in $STUB_PIDS; do kill -0 "$pid" 2>/dev/null && alive=$((alive + 1)); done

    cat <<EOF

== outrider fleet rollback benchmark, $(date -u +%Y-%m-%d) ==
commit: $(git -C "$ROOT" rev-parse --short HEAD); $AGENTS stubs; nudge window ${NUDGE_WINDOW_SECS} s; update_interval_secs 3600
publish r2 -> all $AGENTS on r2: $((t1 - t0)) ms (per stub ms p50=$(pct "$WORK/arrivals-r2.txt" 0.5) p99=$(pct "$WORK/arrivals-r2.txt" 0.99) max=$(pct "$WORK/arrivals-r2.txt" 1))
rollback --to r1 -> all $AGENTS on r1: $((t3 - t2)) ms (per stub ms p50=$(pct "$WORK/arrivals-r1.txt" 0.5) p99=$(pct "$WORK/arrivals-r1.txt" 0.99) max=$(pct "$WORK/arrivals-r1.txt" 1)); target <= $(((NUDGE_WINDOW_SECS + 10) * 1000)) ms
stubs still running (same PIDs): $alive of $AGENTS
EOF
}

main "$@"
