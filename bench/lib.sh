# shellcheck shell=sh
# Shared helpers of the benchmark harnesses that run the real server and the
# real stub on loopback (bench/agent.sh, bench/swap.sh). Sourced, not run:
# POSIX sh, no side effects when sourced.
#
# The caller sets ROOT (repository), BIN (release binaries), WORK (work
# directory) and TOKEN (enrollment token) before calling anything here.
# start_server sets SERVER_PID, URL, ADMIN and DB; start_stub sets AGENT_PID;
# cleanup (the caller's EXIT trap) stops both.

SERVER_PID=
AGENT_PID=

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
now_ms() { date +%s%3N; }

# stop_pids PID...: TERM to all of them at once, then each gets up to 10 s
# (in all) before KILL.
stop_pids() {
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null
    done
    i=0
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        kill -KILL "$pid" 2>/dev/null
    done
}

# Stops the stub, then the server (so the stub's goodbye still reaches it):
# TERM, up to 10 s, then KILL.
cleanup() {
    # shellcheck disable=SC2086 # either may be empty
    stop_pids $AGENT_PID
    # shellcheck disable=SC2086
    stop_pids $SERVER_PID
}

# wait_for WHAT TIMEOUT_SECS COMMAND...: polls COMMAND every 50 ms.
wait_for() {
    what=$1 limit=$2
    shift 2
    deadline=$(($(date +%s) + limit))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what"
        sleep 0.05
    done
}

# need_tools TOOL...: dies naming the first tool not on PATH.
need_tools() {
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "$tool is needed"
    done
}

# need_binaries HINT: dies unless the release binaries are in BIN.
need_binaries() {
    for f in outrider-server outrider-agent outrider liboutrider_agent.so; do
        [ -e "$BIN/$f" ] || die "$BIN/$f is missing: $1"
    done
}

cli() { "$BIN/outrider" --server "$URL" --token "$ADMIN" "$@"; }

# current_is VERSION: whether the stub's state.json runs VERSION.
current_is() {
    [ "$(jq -r '.current.version // empty' "$WORK/agent/state.json" 2>/dev/null)" = "$1" ]
}

# pct FILE P: nearest-rank percentile of the numbers in FILE (one a line).
pct() {
    sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END {
        if (NR == 0) { print "n/a"; exit }
        r = int(p * NR); if (r < p * NR) r++; if (r < 1) r = 1; print v[r] }'
}

# proc_figures: VmRSS / Pss, threads and fds of the stub (library inside).
proc_figures() {
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$AGENT_PID/status")
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$AGENT_PID/smaps_rollup")
    thr=$(find "/proc/$AGENT_PID/task" -mindepth 1 -maxdepth 1 | wc -l)
    fds=$(find "/proc/$AGENT_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
    echo "rss_kib=$rss pss_kib=$pss threads=$thr fds=$fds"
}

# start_server: a fresh server in $WORK/server on a free loopback port.
start_server() {
    RUST_LOG=info "$BIN/outrider-server" --data-dir "$WORK/server" --listen 127.0.0.1:0 --dashboard-listen 127.0.0.1:0 \
        --enrollment-token "$TOKEN" --ready-file "$WORK/ready" >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    wait_for "the server's ready file" 20 test -s "$WORK/ready"
    URL="http://$(cat "$WORK/ready")"
    ADMIN=$(cat "$WORK/server/admin.token")
    DB="$WORK/server/outrider.db"
    log "server $URL (pid $SERVER_PID), db $DB"
}

# start_stub EXTRA_TOML: the stub under $WORK/agent on channel `bench`, with
# EXTRA_TOML lines appended to its agent.toml and the root of $WORK/keys.
start_stub() {
    mkdir -p "$WORK/agent/etc"
    cat >"$WORK/agent/etc/agent.toml" <<TOML
server_url = "$URL"
enrollment_token = "$TOKEN"
channel = "bench"
$1
TOML
    cp "$WORK/keys/root.json" "$WORK/agent/etc/root.json"
    OUTRIDER_LOG=info "$BIN/outrider-agent" --prefix "$WORK/agent" >"$WORK/stub.log" 2>&1 &
    AGENT_PID=$!
}

# stop_stub: TERM to the stub and a bounded wait for its exit.
stop_stub() {
    kill -TERM "$AGENT_PID"
    wait_for "the stub to exit" 30 sh -c "! kill -0 $AGENT_PID 2>/dev/null"
    AGENT_PID=
}
