#!/usr/bin/env bash
# Read/write routing under pgbench: a custom mixed script (90% reads, 10%
# writes) against the primary alone, then through sluice (transaction
# pooling, one streaming replica) with consistency = "session" and
# "eventual". Prints TPS, sluice's routing decisions, and the share of
# requests each server ran (sluice's routing counters, and each server's
# pg_stat_database xact_commit delta, which includes the monitor's polls). Knobs: DURATION (s per run), CLIENTS, POOL, SCALE;
# SCRAPE_TO=prefix keeps a /metrics scrape taken half way through each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26432}
REPLICA_PORT=${REPLICA_PORT:-26433}
SLUICE_PORT=${SLUICE_PORT:-26434}
METRICS_PORT=${METRICS_PORT:-26435}
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-16}
POOL=${POOL:-8}
SCALE=${SCALE:-10}

cluster_dir mix
trap stop_all EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s "$SCALE" app >/dev/null 2>&1
start_replica "$PRIMARY_PORT" "$REPLICA_PORT"

cat > "$DIR/read.sql" <<SQL
\set aid random(1, 100000 * $SCALE)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
cat > "$DIR/write.sql" <<SQL
\set aid random(1, 100000 * $SCALE)
\set delta random(-5000, 5000)
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SQL

commits() { # PORT: transactions committed in database app so far
    "$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres -d postgres \
        -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'"
}

bench() { # PORT: prints TPS
    "$PG_BIN/pgbench" -h 127.0.0.1 -p "$1" -U app -n -M simple -c "$CLIENTS" -j 2 -T "$DURATION" \
        -f "$DIR/read.sql@9" -f "$DIR/write.sql@1" app 2>&1 | awk '/^tps/ {print $3}'
}

echo "== primary alone ($CLIENTS clients, ${DURATION}s, 90% reads / 10% writes)"
echo "tps: $(bench "$PRIMARY_PORT")"

for consistency in session eventual; do
    general="metrics_addr = \"127.0.0.1:$METRICS_PORT\"
consistency = \"$consistency\""
    sluice_toml "$SLUICE_PORT" "$POOL" "$general" > "$DIR/pooler.toml"
    start_sluice "$SLUICE_PORT"
    sleep 1 # the monitor puts the replica in rotation
    p0=$(commits "$PRIMARY_PORT"); r0=$(commits "$REPLICA_PORT")
    start=$(date +%s.%N)
    # A scrape of /metrics half way through the run.
    (sleep "$(( DURATION / 2 ))"; curl -s "http://127.0.0.1:$METRICS_PORT/metrics" > "$DIR/metrics-$consistency.txt") &
    tps=$(bench "$SLUICE_PORT")
    secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
    p1=$(commits "$PRIMARY_PORT"); r1=$(commits "$REPLICA_PORT")
    pri=$(( p1 - p0 )); rep=$(( r1 - r0 ))
    echo "== sluice, consistency = $consistency"
    echo "tps: $tps over ${secs}s"
    echo "transactions committed (pg_stat_database, including the monitor's polls): primary $pri, replica $rep"
    metrics=$(curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^sluice_route_decisions_total' || true)
    echo "$metrics"
    echo "$metrics" | awk '{n = $NF; if ($0 ~ /destination="replica"/) r += n; else p += n}
        END {printf "requests routed: primary %d, replica %d (%.0f%% on the replica)\n", p, r, 100 * r / (p + r)}'
    if [ -n "${SCRAPE_TO:-}" ]; then cp "$DIR/metrics-$consistency.txt" "$SCRAPE_TO-$consistency.txt"; fi
    kill "$SLUICE_PID"; wait "$SLUICE_PID" 2>/dev/null || true; SLUICE_PID=
done
