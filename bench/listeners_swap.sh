#!/bin/sh
# Hot swaps with collectd running and a StatsD stream on the stub-lent
# socket: the release agent library swapped SWAPS times (plus one warm-up)
# through the stub's real generation code by `stub/examples/swap_bench.rs`,
# in one process as the stub runs it. Prints collector restarts (pid and
# start time changes), datagrams sent vs spooled (lost), the stop -> new
# start time, and VmRSS/Pss after the warm-up swap and after the last swap.
#
# Usage:   bench/listeners_swap.sh [SWAPS] [RATE]   (defaults 200, 10000/s)
# Env:     SKIP_BUILD=1  do not build; WORK=/tmp/outrider-listeners-swap-bench
# Needs collectd. Everything listens on 127.0.0.1 only; every wait in the
# harness is bounded and collectd is stopped at its end.
set -eu
SWAPS=${1:-200}
RATE=${2:-10000}
WORK=${WORK:-/tmp/outrider-listeners-swap-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --locked --release -p outrider-agent-lib
    cargo build --locked --release -p outrider-agent-stub --example swap_bench
fi
exec "$ROOT/target/release/examples/swap_bench" "$ROOT/target/release/liboutrider_agent.so" "$WORK" "$SWAPS" "$RATE"
