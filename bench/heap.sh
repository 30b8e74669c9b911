#!/bin/sh
# Heap profile of the idle agent (lean agent): the stub + library with the
# same 20 checks as bench/footprint.sh, run under valgrind's massif, and a
# detailed snapshot of the live heap taken at idle (through vgdb, while the
# agent runs — not at exit, when most of it is already freed).
#
# Two runs:
#  1. massif, malloc heap only: which call sites hold the live bytes at
#     idle (ms_print of the snapshot, largest first);
#  2. massif with --pages-as-heap=yes: every mapping the process made with
#     mmap/brk (thread stacks, the allocator's arenas, the loaded library),
#     by the call site that mapped it. Valgrind's own numbers; RSS under
#     valgrind is not the agent's RSS (bench/footprint.sh measures that).
#
# Usage:   bench/heap.sh
# Env:     AGENT_BIN=target/dist (outrider-agent, liboutrider_agent.so: what
#          packaging/build ships; the build is not run here),
#          TOOLS_BIN=target/release or target/debug (outrider-server, outrider),
#          IDLE_SECS=60 (after the first result of every check),
#          WORK=/tmp/outrider-heap-bench (wiped at start)
# Output:  $WORK/massif-heap.txt, $WORK/massif-pages.txt (ms_print of the
#          idle snapshots); a summary on stdout.
# Needs:   valgrind (with vgdb, ms_print), sqlite3, jq.

set -u

IDLE_SECS=${IDLE_SECS:-60}
WORK=${WORK:-/tmp/outrider-heap-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AGENT_BIN=${AGENT_BIN:-$ROOT/target/dist}
TOOLS_BIN=${TOOLS_BIN:-}
TOKEN=bench-enrollment-token
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

checks_with_results() {
    sqlite3 "$DB" "SELECT COUNT(DISTINCT check_name) FROM results" 2>/dev/null
}

# profile NAME MASSIF_ARGS: one run of the stub under massif, snapshot at
# idle into $WORK/massif-NAME.out, ms_print into $WORK/massif-NAME.txt.
profile() {
    name=$1
    shift
    rm -rf "$WORK/agent"
    mkdir -p "$WORK/agent/etc"
    cat >"$WORK/agent/etc/agent.toml" <<TOML
server_url = "$URL"
enrollment_token = "$TOKEN"
channel = "bench"
TOML
    cp "$WORK/keys/root.json" "$WORK/agent/etc/root.json"
    sqlite3 "$DB" "DELETE FROM results" || die "cannot clear results"
    OUTRIDER_LOG=info valgrind --tool=massif --vgdb=yes "$@" \
        --massif-out-file="$WORK/massif-$name.final" \
        "$BIN/outrider-agent" --prefix "$WORK/agent" >"$WORK/stub-$name.log" 2>&1 &
    AGENT_PID=$!
    wait_for "b1 to be current ($name)" 300 current_is b1
    wait_for "a result of all 20 checks ($name)" 300 sh -c "[ \"\$(sqlite3 '$DB' 'SELECT COUNT(DISTINCT check_name) FROM results')\" -ge 20 ]"
    log "$name: all 20 checks reported; idle ${IDLE_SECS}s"
    sleep "$IDLE_SECS"
    vgdb --pid="$AGENT_PID" detailed_snapshot "$WORK/massif-$name.out" >"$WORK/vgdb-$name.log" 2>&1 ||
        die "vgdb snapshot failed: $(cat "$WORK/vgdb-$name.log")"
    stop_stub
    ms_print --threshold=1 "$WORK/massif-$name.out" >"$WORK/massif-$name.txt" || die "ms_print failed"
}

main() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    need_tools valgrind vgdb ms_print sqlite3 jq
    if [ -z "$TOOLS_BIN" ]; then
        TOOLS_BIN="$ROOT/target/release"
        [ -x "$TOOLS_BIN/outrider-server" ] || TOOLS_BIN="$ROOT/target/debug"
    fi
    rm -rf "$WORK"
    mkdir -p "$WORK/bin"
    for f in "$AGENT_BIN/outrider-agent" "$AGENT_BIN/liboutrider_agent.so" \
        "$TOOLS_BIN/outrider-server" "$TOOLS_BIN/outrider"; do
        [ -e "$f" ] || die "$f is missing (packaging/build; cargo build -p outrider-server -p outrider-cli)"
        ln -s "$f" "$WORK/bin/$(basename "$f")"
    done
    BIN="$WORK/bin"
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
    cli checks add load --interval-secs 30 --timeout-secs 10 -- /usr/lib/nagios/plugins/check_load \
        -w 1000,1000,1000 -c 2000,2000,2000 >/dev/null || die "checks add load failed"
    cli release publish --channel bench --keys "$WORK/keys" --version b1 --deltas 0 \
        "$BIN/liboutrider_agent.so" >"$WORK/publish.log" 2>&1 || die "publish failed"

    profile heap --threshold=0.5 --depth=40
    profile pages --pages-as-heap=yes --threshold=0.5 --depth=40

    for name in heap pages; do
        echo "== massif ($name), idle snapshot: total $(awk '/^mem_heap_B=/ {split($0, a, "="); t += a[2]} /^mem_heap_extra_B=/ {split($0, a, "="); t += a[2]} END {print int(t / 1024)}' "$WORK/massif-$name.out") KiB =="
        # The tree's top level: the largest call sites, one line each.
        grep -E '^ *->[0-9]' "$WORK/massif-$name.txt" | head -25
        echo "(full tree: $WORK/massif-$name.txt)"
    done
}

main "$@" || exit 1
