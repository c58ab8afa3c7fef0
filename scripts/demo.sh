#!/usr/bin/env bash
# A local primary + streaming replica with sluice in front, in a temporary
# directory. Shows a query and a short pgbench through sluice, prints how to
# connect, and keeps running until Ctrl-C (DEMO_EXIT=1 stops right away).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh

PRIMARY_PORT=${PRIMARY_PORT:-54320}
REPLICA_PORT=${REPLICA_PORT:-54321}
SLUICE_PORT=${SLUICE_PORT:-6432}
. scripts/lib/cluster.sh
cluster_dir demo

trap stop_all EXIT

echo "== building sluice (release)"
cargo build --release --quiet

echo "== starting PostgreSQL primary on $PRIMARY_PORT and replica on $REPLICA_PORT in $DIR"
start_primary "$PRIMARY_PORT"
start_replica "$PRIMARY_PORT" "$REPLICA_PORT"

sluice_toml "$SLUICE_PORT" 20 > "$DIR/pooler.toml"
echo "== starting sluice on $SLUICE_PORT"
start_sluice "$SLUICE_PORT"

export PGPASSWORD=secret
echo "== a query through sluice"
"$PG_BIN/psql" -X -h 127.0.0.1 -p "$SLUICE_PORT" -U app -d app \
    -c "SELECT version(), current_user, inet_server_port() AS server_port"
echo "== read/write routing: a read runs on the replica, a write on the primary"
sleep 0.5 # the routing monitor's first samples
"$PG_BIN/psql" -X -h 127.0.0.1 -p "$SLUICE_PORT" -U app -d app \
    -c "SELECT inet_server_port() AS server_port, pg_is_in_recovery() AS on_replica"
"$PG_BIN/psql" -X -h 127.0.0.1 -p "$SLUICE_PORT" -U app -d app \
    -c "CREATE TABLE IF NOT EXISTS demo (id serial, at timestamptz DEFAULT now())" \
    -c "INSERT INTO demo DEFAULT VALUES RETURNING inet_server_port() AS server_port, pg_is_in_recovery() AS on_replica"
echo "== pgbench through sluice (10 clients, 5 seconds)"
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$SLUICE_PORT" -U app -i -q app 2>&1 | tail -1
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$SLUICE_PORT" -U app -c 10 -j 2 -T 5 app 2>&1 | grep -E "tps|failed|latency average"

cat <<MSG

sluice is running. Connect with:
    PGPASSWORD=secret psql -h 127.0.0.1 -p $SLUICE_PORT -U app app
    DATABASE_URL=postgres://app:secret@127.0.0.1:$SLUICE_PORT/app
Config: $DIR/pooler.toml   Logs: $DIR/primary.log, $DIR/replica.log
MSG
if [ "${DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
echo "Press Ctrl-C to stop everything."
wait "$SLUICE_PID"
