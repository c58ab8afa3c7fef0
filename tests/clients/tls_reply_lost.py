#!/usr/bin/env python3
"""A reply lost on its way to a TLS client: run against sluice in transaction mode with client TLS on.

    pip install 'psycopg[binary]>=3.3'
    python3 tls_reply_lost.py DSN [ITERATIONS_PER_THREAD] [THREADS] [TABLE_PREFIX]

Each thread loops: connect (TLS), begin, create a table, insert ten rows of a few kB with executemany, select them
back row by row, COPY them out, roll back. Prints "N iterations ok", or "HUNG ..." (exit 1) when no thread made progress
for 12 s. Seen on sluice 0.1.0 with sslmode=require and 8 threads over a pool of 4: hung within about 100 iterations,
with PostgreSQL's backends "idle in transaction" after the SELECT (the server had answered) and the clients waiting;
with sslmode=disable the same run finished. (The integration tests run this copy of shared/repro's script.)"""
import sys, time, psycopg, threading, os, random
dsn = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 8
prefix = sys.argv[4] if len(sys.argv) > 4 else "repro_table"
recs = [(i, f"t{i}" * random.randint(1, 500), i * 1.5, bytes([i % 256]) * random.randint(1, 3000), None) for i in range(10)]
def work(k, binary):
    with psycopg.connect(dsn) as conn, conn.transaction(force_rollback=True):
        with conn.cursor(binary=binary) as cur:
            t = f"{prefix}_{k}"
            cur.execute(f"drop table if exists {t}")
            cur.execute(f"create table {t} (a int, b text, c float8, d bytea, e timestamptz)")
            cur.executemany(f"insert into {t} values (%s, %s, %s, %s, %s)", recs)
            cur.execute(f"select * from {t}")
            while cur.fetchone() is not None:
                pass
            with cur.copy(f"copy (select * from {t}) to stdout") as cp:
                for _ in cp:
                    pass
done = [0] * threads
def loop(k):
    for i in range(n):
        work(k, i % 2 == 0)
        done[k] += 1
ts = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(threads)]
for t in ts:
    t.start()
last, stall = -1, 0
while any(t.is_alive() for t in ts):
    time.sleep(2)
    s = sum(done)
    if s == last:
        stall += 2
        if stall >= 12:
            print(f"HUNG after {s} iterations; per thread {done}")
            os._exit(1)
    else:
        stall, last = 0, s
print(f"{sum(done)} iterations ok")
