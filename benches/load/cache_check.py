"""Stale-answer checker for benches/load/cache.sh.

Runs next to pgbench, on the same hot set (kv: id 1..KEYS, v only ever
incremented). Each thread, in a loop, picks a key (Zipf-like) and either
writes it through the target (UPDATE ... RETURNING v, WRITES percent of the
time) or reads it twice: first straight from the primary, then through the
target. A read through the target is stale when it returns less than
  - the value this thread last wrote to that key through the target
    (read-your-writes: the cache must have applied past the write), or
  - a value a direct read returned BOUND seconds or more before this read
    began (everyone else: entries at most max_cache_lag behind, plus the
    monitor's sampling interval and a margin).
Prints one line: "reads N writes N stale N ryw_stale N".
"""
import bisect
import random
import sys
import threading
import time

import psycopg

target, direct, duration, keys, writes, bound, threads = sys.argv[1:8]
duration, keys, writes, bound, threads = (
    float(duration), int(keys), int(writes), float(bound), int(threads))

cum = []
total = 0.0
for k in range(1, keys + 1):
    total += 1 / k ** 1.1
    cum.append(total)
ids = list(range(1, keys + 1))

# Per key: direct reads as (completed at, value), in time order.
history = {k: [] for k in ids}
history_lock = threading.Lock()
counts = {"reads": 0, "writes": 0, "stale": 0, "ryw_stale": 0}
counts_lock = threading.Lock()
failures = []


def floor(k, before):
    """The newest value a direct read of k had returned by `before`."""
    with history_lock:
        h = history[k]
        i = bisect.bisect_right(h, (before, float("inf")))
        return h[i - 1][1] if i else None


def worker(seed):
    rng = random.Random(seed)
    mine = {}
    local = {"reads": 0, "writes": 0, "stale": 0, "ryw_stale": 0}
    t = psycopg.connect(target, autocommit=True, prepare_threshold=None)
    d = psycopg.connect(direct, autocommit=True, prepare_threshold=None)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        k = rng.choices(ids, cum_weights=cum)[0]
        if rng.randrange(100) < writes:
            v = t.execute("UPDATE kv SET v = v + 1 WHERE id = %s RETURNING v", (k,)).fetchone()[0]
            mine[k] = v
            local["writes"] += 1
            continue
        dv = d.execute("SELECT v FROM kv WHERE id = %s", (k,)).fetchone()[0]
        with history_lock:
            history[k].append((time.monotonic(), dv))
        began = time.monotonic()
        old = floor(k, began - bound)
        v = t.execute("SELECT v FROM kv WHERE id = %s", (k,)).fetchone()[0]
        local["reads"] += 1
        if k in mine and v < mine[k]:
            local["ryw_stale"] += 1
            if len(failures) < 5:
                failures.append(f"key {k}: read {v} after writing {mine[k]}")
        if old is not None and v < old:
            local["stale"] += 1
            if len(failures) < 5:
                failures.append(f"key {k}: read {v}, a direct read returned {old} {bound}s before")
    with counts_lock:
        for n, c in local.items():
            counts[n] += c
    t.close()
    d.close()


ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for th in ts:
    th.start()
for th in ts:
    th.join()
for f in failures:
    print("stale:", f, file=sys.stderr)
print(" ".join(f"{n} {c}" for n, c in counts.items()))
