"""psycopg 3 through sluice in transaction pooling, preparing every statement
(prepare_threshold=0), several connections interleaved over few servers.
Usage: psycopg_check.py DSN. Prints "ok" and exits 0 when every result is right."""
import sys

import psycopg

dsn = sys.argv[1]
conns = [psycopg.connect(dsn, prepare_threshold=0, autocommit=True) for _ in range(4)]
for i in range(50):
    for n, c in enumerate(conns):
        got = c.execute("SELECT %s::int + %s::int", (i, n)).fetchone()[0]
        assert got == i + n, (got, i, n)
        if i % 10 == 0:
            with c.transaction():
                rows = c.execute("SELECT generate_series(1, %s::int)", (n + 1,)).fetchall()
                assert [r[0] for r in rows] == list(range(1, n + 2)), rows
for c in conns:
    c.close()
print("ok")
