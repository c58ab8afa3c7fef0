"""psycopg 3 listeners through sluice in transaction pooling.
Usage: psycopg_listen.py DSN DIRECT_DSN CHANNEL. 50 connections LISTEN on
CHANNEL; notifications sent through sluice (NOTIFY, pg_notify) and directly
on PostgreSQL arrive exactly once at each, in order, payloads intact; a
self-notification carries the pid sluice gave the sender; the listeners
hold one LISTEN connection and at most the pool's 2 servers.
Prints "ok" when every check passes."""
import sys

import psycopg

dsn, direct, ch = sys.argv[1], sys.argv[2], sys.argv[3]
N = 50
listeners = [psycopg.connect(dsn, autocommit=True) for _ in range(N)]
for c in listeners:
    c.execute(f"LISTEN {ch}")
with psycopg.connect(direct, autocommit=True) as d:
    rows = d.execute(
        "SELECT application_name, count(*) FROM pg_stat_activity "
        "WHERE application_name IN ('sluice listener', 'drv pool') GROUP BY 1").fetchall()
    used = dict(rows)
    assert used.get("sluice listener") == 1, used
    assert used.get("drv pool", 0) <= 2, used

sender = psycopg.connect(dsn, autocommit=True)
sender.execute(f"NOTIFY {ch}, 'one'")
sender.execute("SELECT pg_notify(%s, %s)", (ch, "two, ünïcode"))
with psycopg.connect(direct, autocommit=True) as d:
    d.execute(f"NOTIFY {ch}, 'three'")
me = listeners[0]
me.execute(f"NOTIFY {ch}, 'self'")
want = ["one", "two, ünïcode", "three", "self"]
for i, c in enumerate(listeners):
    got = list(c.notifies(timeout=10, stop_after=len(want)))
    assert [n.payload for n in got] == want, (i, [n.payload for n in got])
    assert all(n.channel == ch for n in got)
    assert got[3].pid == me.info.backend_pid, (got[3].pid, me.info.backend_pid)
    assert got[0].pid == sender.info.backend_pid, (got[0].pid, sender.info.backend_pid)
# Nothing more came: a fence is next.
sender.execute(f"NOTIFY {ch}, 'fence'")
for c in listeners:
    assert [n.payload for n in c.notifies(timeout=10, stop_after=1)] == ["fence"]
# UNLISTEN stops delivery; a LISTEN rolled back gets nothing.
me.execute(f"UNLISTEN {ch}")
with me.transaction():
    me.execute(f"LISTEN {ch}_later")
me.execute("BEGIN")
me.execute(f"LISTEN {ch}_never")
me.execute("ROLLBACK")
sender.execute(f"NOTIFY {ch}, 'gone'; NOTIFY {ch}_never, 'no'; NOTIFY {ch}_later, 'yes'")
got = [n.payload for n in me.notifies(timeout=10, stop_after=1)]
assert got == ["yes"], got
print("ok")
