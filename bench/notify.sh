#!/bin/sh
# Alert delivery benchmark: send time of the real `outrider-server`'s
# notifier to a webhook receiver and to a real SMTP server, both on
# loopback.
#
# One server, two receivers: a webhook (bench/notify_tool.py, a Python
# HTTP/1.1 server answering 200) and email over plain SMTP to aiosmtpd
# (server/tests/it/smtp_server.py). Routes send rows tagged bench-hook to
# the webhook and rows tagged bench-mail to email only, so the two never
# run at once. ROUNDS rounds alternate webhook, email, webhook, …; each
# inserts N outbox rows (as the alert driver does) and waits until all are
# sent. The figure is the server's own `send_us` of each accepted message
# (time on the wire: request to answer, or SMTP connect to 250 after DATA;
# the rate limiter's wait is excluded), from its log.
#
# Usage:   bench/notify.sh [N] [ROUNDS]      (default 500 messages, 5 rounds)
# Env:     SKIP_BUILD=1  do not run the release build
#          WORK=/tmp/outrider-notify-bench  work directory (wiped at start)
# Needs: /usr/bin/python3 with python3-aiosmtpd. Everything listens on
# 127.0.0.1 only; every wait is bounded; every process started here is
# stopped on exit.

set -u

N=${1:-500}
ROUNDS=${2:-5}
WORK=${WORK:-/tmp/outrider-notify-bench}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN="$ROOT/target/release"
TOKEN=bench-enrollment-token
PY=/usr/bin/python3
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

HOOK_PID=
SMTP_PID=

stop_all() {
    # shellcheck disable=SC2086 # a list of PIDs
    stop_pids $HOOK_PID $SMTP_PID
    cleanup
}

free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

main() {
    if ! "$PY" -c 'import aiosmtpd' 2>/dev/null; then
        die "/usr/bin/python3 with aiosmtpd is needed (apt-get install python3-aiosmtpd)"
    fi
    if [ "${SKIP_BUILD:-}" != 1 ]; then
        log "building release binaries"
        (cd "$ROOT" && cargo build --release -p outrider-server -p outrider-cli) || die "build failed"
    fi
    rm -rf "$WORK"
    mkdir -p "$WORK/mail"
    trap stop_all EXIT INT TERM

    hook_port=$(free_port)
    smtp_port=$(free_port)
    mkfifo "$WORK/hook.in" "$WORK/smtp.in"
    "$PY" "$ROOT/bench/notify_tool.py" webhook "$hook_port" <"$WORK/hook.in" >"$WORK/hook.out" &
    HOOK_PID=$!
    exec 3>"$WORK/hook.in"
    "$PY" "$ROOT/server/tests/it/smtp_server.py" "$smtp_port" "$WORK/mail" <"$WORK/smtp.in" >"$WORK/smtp.out" &
    SMTP_PID=$!
    exec 4>"$WORK/smtp.in"
    wait_for "the webhook receiver" 10 grep -q ready "$WORK/hook.out"
    wait_for "the SMTP server" 10 grep -q ready "$WORK/smtp.out"

    "$BIN/outrider-server" --data-dir "$WORK/data" --listen 127.0.0.1:0 --dashboard-listen 127.0.0.1:0 \
        --ready-file "$WORK/ready" --enrollment-token "$TOKEN" 2>"$WORK/server.log" &
    # shellcheck disable=SC2034 # read by cleanup in bench/lib.sh
    SERVER_PID=$!
    wait_for "the server" 20 test -s "$WORK/ready"
    OUTRIDER_SERVER="http://$(cat "$WORK/ready")"
    OUTRIDER_TOKEN_FILE="$WORK/data/admin.token"
    export OUTRIDER_SERVER OUTRIDER_TOKEN_FILE
    printf 'bench-webhook-secret-0123456789\n' >"$WORK/secret"
    cli="$BIN/outrider"
    "$cli" receivers add webhook hook --url "http://127.0.0.1:$hook_port/hook" \
        --secret-file "$WORK/secret" --rate 1000 >/dev/null || die "adding the webhook"
    "$cli" receivers add email mail --host 127.0.0.1 --port "$smtp_port" --tls none \
        --from outrider@example.com --to ops@example.com --rate 100 >/dev/null || die "adding email"
    "$cli" routes add --receiver hook --tag bench-hook >/dev/null || die "route"
    "$cli" routes add --receiver mail --tag bench-mail >/dev/null || die "route"
    DB="$WORK/data/outrider.db"

    round=1
    while [ "$round" -le "$ROUNDS" ]; do
        for tag in bench-hook bench-mail; do
            start=$(now_ms)
            "$PY" "$ROOT/bench/notify_tool.py" insert "$DB" "$tag" "$N" "$round" || die "insert"
            "$PY" "$ROOT/bench/notify_tool.py" wait "$DB" "$tag" $((N * round)) 300 || die "waiting for $tag"
            log "round $round $tag: $N messages in $(($(now_ms) - start)) ms"
        done
        round=$((round + 1))
    done
    mails=$(find "$WORK/mail" -name '*.eml' | wc -l)
    [ "$mails" -eq $((N * ROUNDS)) ] || die "the SMTP server got $mails mails, expected $((N * ROUNDS))"
    "$cli" receivers list
    "$PY" "$ROOT/bench/notify_tool.py" stats "$WORK/server.log" hook
    "$PY" "$ROOT/bench/notify_tool.py" stats "$WORK/server.log" mail
}

main "$@" || exit 1
