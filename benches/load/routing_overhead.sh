#!/usr/bin/env bash
# What read/write routing costs sluice per transaction: pgbench select-only
# through two sluice instances in transaction pooling over the same primary
# and replica, one with `route = "primary"` (no routing) and one routing
# (reads go to the replica), interleaved (A B A B ...). Prints TPS and
# sluice's CPU seconds per 10,000 transactions (from /proc).
# Knobs: DURATION (s per run), ROUNDS, CLIENTS, POOL, MODES.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-28432}
REPLICA_PORT=${REPLICA_PORT:-28433}
PLAIN_PORT=${PLAIN_PORT:-28434}
ROUTED_PORT=${ROUTED_PORT:-28435}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-32}
POOL=${POOL:-8}
MODES=${MODES:-"simple extended"}

cluster_dir overhead
cleanup() {
    if [ -n "${PLAIN_PID:-}" ]; then kill "$PLAIN_PID" 2>/dev/null || true; fi
    stop_all
}
trap cleanup EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 10 app >/dev/null 2>&1
start_replica "$PRIMARY_PORT" "$REPLICA_PORT"

config() { # PORT ROUTE
    sluice_toml "$1" "$POOL" "" "route = \"$2\""
}
config "$PLAIN_PORT" primary > "$DIR/plain.toml"
config "$ROUTED_PORT" auto > "$DIR/pooler.toml"
./target/release/sluice --config "$DIR/plain.toml" --log-level warn &
PLAIN_PID=$!
wait_for_port "$PLAIN_PORT"
start_sluice "$ROUTED_PORT"
sleep 1

for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
        read -r t1 c1 <<<"$(pgbench_cpu "$PLAIN_PID" "$PLAIN_PORT" -S -M "$mode" -c "$CLIENTS" -j 2 -T "$DURATION")"
        read -r t2 c2 <<<"$(pgbench_cpu "$SLUICE_PID" "$ROUTED_PORT" -S -M "$mode" -c "$CLIENTS" -j 2 -T "$DURATION")"
        echo "round $round -M $mode: no routing $t1 tps, ${c1}s CPU/10k tx | routing $t2 tps, ${c2}s CPU/10k tx"
    done
done
echo "replica share (routing instance):"
"$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$REPLICA_PORT" -U postgres app -c \
    "SELECT 'replica xact_commit: ' || xact_commit FROM pg_stat_database WHERE datname = 'app'"
