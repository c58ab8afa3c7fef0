#!/usr/bin/env bash
# What the session-settings check costs a workload of function calls
# (issue #23): `SELECT my_function()` (a plpgsql function that sets
# nothing) through two sluice instances in transaction pooling over one
# primary, one checking the server's settings after each such transaction
# (the default) and one with `trust_functions = true`, interleaved, with
# `SELECT 1` as the baseline both share. Prints TPS and sluice's CPU seconds
# per 10,000 transactions (from /proc). Knobs: DURATION, ROUNDS, CLIENTS, POOL.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-28532}
CHECK_PORT=${CHECK_PORT:-28534}
TRUST_PORT=${TRUST_PORT:-28535}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
POOL=${POOL:-8}

cluster_dir functions
cleanup() {
    if [ -n "${TRUST_PID:-}" ]; then kill "$TRUST_PID" 2>/dev/null || true; fi
    stop_all
}
trap cleanup EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U app app -c \
    "CREATE FUNCTION my_function() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1; END'"
echo "SELECT my_function();" > "$DIR/call.sql"
echo "SELECT 1;" > "$DIR/plain.sql"

sluice_toml "$TRUST_PORT" "$POOL" "trust_functions = true" > "$DIR/trust.toml"
sluice_toml "$CHECK_PORT" "$POOL" > "$DIR/pooler.toml"
./target/release/sluice --config "$DIR/trust.toml" --log-level warn &
TRUST_PID=$!
wait_for_port "$TRUST_PORT"
start_sluice "$CHECK_PORT"

for round in $(seq 1 "$ROUNDS"); do
    for script in call plain; do
        read -r t1 c1 <<<"$(pgbench_cpu "$SLUICE_PID" "$CHECK_PORT" -f "$DIR/$script.sql" -c "$CLIENTS" -j 2 -T "$DURATION")"
        read -r t2 c2 <<<"$(pgbench_cpu "$TRUST_PID" "$TRUST_PORT" -f "$DIR/$script.sql" -c "$CLIENTS" -j 2 -T "$DURATION")"
        echo "round $round $script: checked $t1 tps, ${c1}s CPU/10k tx | trust_functions $t2 tps, ${c2}s CPU/10k tx"
    done
done
