"""Helpers of bench/notify.sh (Debian's /usr/bin/python3, standard library only).

  notify_tool.py webhook PORT [log]      serve 200 to every POST on 127.0.0.1:PORT
                                         (HTTP/1.1 keep-alive) until stdin closes;
                                         with `log`, print "post UNIX_MS TAGS KINDS"
                                         per POST (bench/outage.sh)
  notify_tool.py insert DB TAG N ROUND   insert N alert_outbox rows tagged TAG, as
                                         the alert driver writes them
  notify_tool.py wait DB TAG N SECS      wait until N deliveries of rows tagged TAG
                                         are sent (exit 1 after SECS)
  notify_tool.py stats LOG RECEIVER      p50/p99/max of send_us in the server log
"""

import http.server
import json
import re
import sqlite3
import sys
import threading
import time


def webhook(port, log=False):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if log:
                arrived = int(time.time() * 1000)
                batch = json.loads(body)
                kinds = ",".join(n["kind"] for n in batch["notifications"])
                print("post %d %s %s" % (arrived, ",".join(batch["tags"]) or "-", kinds),
                      flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    server.shutdown()


def insert(db, tag, n, round_):
    conn = sqlite3.connect(db, timeout=30)
    now = int(time.time() * 1000)
    rows = []
    for i in range(n):
        subject = {"check": {"agent": "0123456789abcdef0123", "name": "c%d" % i}}
        notification = {
            "subject": subject, "kind": "firing", "status": "CRITICAL",
            "title": "c%d CRITICAL on bench-host" % i, "summary": "bench round %s" % round_,
            "resolve_cause": None, "incident_started_ms": now, "seq": 1,
        }
        key = "check/0123456789abcdef0123/c%d@%d#1" % (i, now)
        rows.append((key + "-" + tag + "-" + round_, "agent/0123456789abcdef0123",
                     json.dumps([tag]), "critical", json.dumps([notification]), now))
    with conn:
        conn.executemany(
            "INSERT INTO alert_outbox (batch_key, group_key, tags, severity, notifications,"
            " created_at_ms) VALUES (?, ?, ?, ?, ?, ?)", rows)


def wait(db, tag, n, secs):
    conn = sqlite3.connect(db, timeout=30)
    deadline = time.time() + secs
    while True:
        (sent,) = conn.execute(
            "SELECT COUNT(*) FROM notify_deliveries d JOIN alert_outbox o ON o.id = d.outbox_id"
            " WHERE d.state = 'sent' AND o.tags = ?", (json.dumps([tag]),)).fetchone()
        if sent >= n:
            return
        if time.time() > deadline:
            sys.exit("only %d of %d sent within %ss" % (sent, n, secs))
        time.sleep(0.05)


def stats(log, receiver):
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    samples = []
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = ansi.sub("", line)
            if "accepted by the receiver" in line and ("receiver=%s " % receiver) in line:
                samples.append(int(re.search(r"send_us=(\d+)", line).group(1)))
    samples.sort()
    if not samples:
        sys.exit("no samples for %s" % receiver)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    print("%s n=%d p50=%.2fms p99=%.2fms max=%.2fms" % (
        receiver, len(samples), pick(0.50) / 1000, pick(0.99) / 1000, samples[-1] / 1000))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "webhook":
        webhook(int(args[0]), args[1:] == ["log"])
    elif cmd == "insert":
        insert(args[0], args[1], int(args[2]), args[3])
    elif cmd == "wait":
        wait(args[0], args[1], int(args[2]), float(args[3]))
    elif cmd == "stats":
        stats(args[0], args[1])
    else:
        sys.exit(__doc__)


main()
