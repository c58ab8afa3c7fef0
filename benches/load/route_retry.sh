#!/usr/bin/env bash
# What a statement a replica refuses costs: a SELECT of a function that
# inserts, through sluice (transaction pooling, one streaming replica).
# Its first run goes to the replica, is refused (25006) and runs on the
# primary; later runs go to the primary directly (the text was learnt).
# Compared with the same call sent to the primary by a hint (no try on the
# replica). Prints latency percentiles of each and sluice's retry counter.
# Knobs: TEXTS (distinct statement texts, each run once as a first run).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26442}
REPLICA_PORT=${REPLICA_PORT:-26443}
SLUICE_PORT=${SLUICE_PORT:-26444}
METRICS_PORT=${METRICS_PORT:-26445}
TEXTS=${TEXTS:-300}

cluster_dir retry
trap stop_all EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 100
export PGPASSWORD=secret
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -d app -c "
  CREATE TABLE IF NOT EXISTS retry_log (v int);
  CREATE OR REPLACE FUNCTION add_row(v int) RETURNS int LANGUAGE sql
      AS 'INSERT INTO retry_log VALUES (v) RETURNING v';"
start_replica "$PRIMARY_PORT" "$REPLICA_PORT"
sluice_toml "$SLUICE_PORT" 4 "metrics_addr = \"127.0.0.1:$METRICS_PORT\"" > "$DIR/pooler.toml"
start_sluice "$SLUICE_PORT"
sleep 1 # the monitor puts the replica in rotation

python3 - "$SLUICE_PORT" "$TEXTS" <<'PY'
import statistics, sys, time
import psycopg

port, texts = int(sys.argv[1]), int(sys.argv[2])
conn = psycopg.connect(f"host=127.0.0.1 port={port} user=app password=secret dbname=app",
                       autocommit=True, prepare_threshold=None)

def timed(sql, arg):
    t = time.perf_counter()
    assert conn.execute(sql, (arg,)).fetchone()[0] == arg
    return (time.perf_counter() - t) * 1e6

def wait_for_replica():
    # Read-your-writes sends this client's reads to the primary until the
    # replica has replayed its last write: wait, so each first run starts
    # on the replica.
    while conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is not True:
        time.sleep(0.001)

first, later, hinted = [], [], []
for i in range(texts):
    wait_for_replica()
    first.append(timed(f"SELECT add_row(%s) /* text {i} */", i))
    wait_for_replica()
    later.append(timed(f"SELECT add_row(%s) /* text {i} */", i))
    wait_for_replica()
    hinted.append(timed(f"/* sluice:primary */ SELECT add_row(%s) /* hinted {i} */", i))

def show(name, xs):
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    print(f"{name:44s} n={len(xs):4d} median {statistics.median(xs):7.0f} us  p90 {p(0.9):7.0f} us  p99 {p(0.99):7.0f} us")

show("first run (replica refuses, primary runs it)", first)
show("later run (learnt: straight to the primary)", later)
show("hinted /* sluice:primary */ (never tried)", hinted)
PY
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^sluice_route_retries_total|^sluice_route_decisions_total.*(learned|reroute)' || true
"$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -d app \
    -c "SELECT 'rows inserted: ' || count(*) || ' (expected ' || 3 * $TEXTS || ')' FROM retry_log"
