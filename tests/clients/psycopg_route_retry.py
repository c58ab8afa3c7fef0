"""psycopg 3 through sluice with a replica: SELECTs of functions that write
(created by the caller as PREFIX_insert(int) and PREFIX_rows(int)) succeed
as on a direct connection, with libpq's unnamed statements and with
server-side prepared ones (prepare_threshold=0).
Usage: psycopg_route_retry.py DSN PREFIX. Prints "ok" when every result is right."""
import sys
import time

import psycopg

dsn, p = sys.argv[1], sys.argv[2]


def on_replica(conn):
    # Read-your-writes keeps this client on the primary until the replica
    # has replayed its last write: wait, so that the replica is tried.
    for _ in range(2000):
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            return
        time.sleep(0.005)
    raise AssertionError("reads never reached the replica")


for threshold in (None, 0):
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=threshold) as conn:
        for run in range(3):
            v = 100 + run + (10 if threshold == 0 else 0)
            on_replica(conn)
            assert conn.execute(f"SELECT {p}_insert(%s)", (v,)).fetchone()[0] == v
            on_replica(conn)
            rows = conn.execute(f"SELECT * FROM {p}_rows(%s)", (v,)).fetchall()
            assert [r[0] for r in rows] == [1, 2, 3], rows
            on_replica(conn)
            lsn = conn.execute("SELECT pg_current_wal_lsn()::text, %s::int", (v,)).fetchone()
            assert "/" in lsn[0] and lsn[1] == v
        n = conn.execute(f"SELECT count(*) FROM {p}_log WHERE v >= 100").fetchone()[0]
        assert n == (6 if threshold is None else 12), n
print("ok")
