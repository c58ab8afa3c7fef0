#!/usr/bin/env bash
# A local primary + streaming replica with sluice in front, in a temporary
# directory. Shows a query and a short pgbench through sluice, prints how to
# connect, and keeps running until Ctrl-C (DEMO_EXIT=1 stops right away).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh

PG_BIN=/usr/lib/postgresql/15/bin
PRIMARY_PORT=${PRIMARY_PORT:-54320}
REPLICA_PORT=${REPLICA_PORT:-54321}
SLUICE_PORT=${SLUICE_PORT:-6432}
DIR=$(mktemp -d /tmp/sluice-demo.XXXXXX)
chmod 755 "$DIR"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$DIR"

cleanup() {
    [ -n "${SLUICE_PID:-}" ] && kill "$SLUICE_PID" 2>/dev/null || true
    for d in replica primary; do
        [ -f "$DIR/$d/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$DIR/$d" -m fast stop >/dev/null || true
    done
    rm -rf "$DIR"
}
trap cleanup EXIT

echo "== building sluice (release)"
cargo build --release --quiet

echo "== starting PostgreSQL primary on $PRIMARY_PORT and replica on $REPLICA_PORT in $DIR"
as_pg "$PG_BIN/initdb" -D "$DIR/primary" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >> "$DIR/primary/postgresql.conf" <<CONF
port = $PRIMARY_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
max_connections = 200
CONF
cat > "$DIR/primary/pg_hba.conf" <<HBA
local all all trust
host replication all 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
as_pg "$PG_BIN/pg_ctl" -D "$DIR/primary" -l "$DIR/primary.log" -w start >/dev/null
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres \
    -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -D "$DIR/replica" -R -X stream -c fast
echo "port = $REPLICA_PORT" >> "$DIR/replica/postgresql.conf"
as_pg "$PG_BIN/pg_ctl" -D "$DIR/replica" -l "$DIR/replica.log" -w start >/dev/null

cat > "$DIR/pooler.toml" <<TOML
[general]
listen_addr = "127.0.0.1:$SLUICE_PORT"
pool_mode = "session"
default_pool_size = 20

[databases.app]
primary = "127.0.0.1:$PRIMARY_PORT"
replicas = ["127.0.0.1:$REPLICA_PORT"]

[users.app]
password = "secret"
TOML
echo "== starting sluice on $SLUICE_PORT"
./target/release/sluice --config "$DIR/pooler.toml" --log-level warn &
SLUICE_PID=$!
for _ in $(seq 1 100); do
    PGPASSWORD=secret "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$SLUICE_PORT" -U app -d app -c "SELECT 1" >/dev/null 2>&1 && break
    sleep 0.1
done

export PGPASSWORD=secret
echo "== a query through sluice"
"$PG_BIN/psql" -X -h 127.0.0.1 -p "$SLUICE_PORT" -U app -d app \
    -c "SELECT version(), current_user, inet_server_port() AS server_port"
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
