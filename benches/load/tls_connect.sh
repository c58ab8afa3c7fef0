#!/usr/bin/env bash
# Cost of a new connection through sluice with and without TLS: pgbench -C
# (a new connection per transaction), select-only, sslmode=disable vs
# sslmode=require, interleaved. Knobs: DURATION, ROUNDS, CLIENTS.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
command -v openssl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-25442}
SLUICE_PORT=${SLUICE_PORT:-25443}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}

cluster_dir tls
trap stop_all EXIT

cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q app >/dev/null 2>&1
# A self-signed certificate for sluice.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=127.0.0.1" \
    -keyout "$DIR/sluice.key" -out "$DIR/sluice.pem" >/dev/null 2>&1
cat > "$DIR/pooler.toml" <<TOML
[general]
listen_addr = "127.0.0.1:$SLUICE_PORT"
pool_mode = "transaction"
default_pool_size = 8
client_tls_mode = "prefer"
client_tls_cert = "$DIR/sluice.pem"
client_tls_key = "$DIR/sluice.key"
[databases.app]
primary = "127.0.0.1:$PRIMARY_PORT"
[users.app]
password = "secret"
TOML
start_sluice "$SLUICE_PORT"

declare -A TPS
for round in $(seq 1 "$ROUNDS"); do
    for mode in disable require; do
        out=$(PGSSLMODE=$mode "$PG_BIN/pgbench" -h 127.0.0.1 -p "$SLUICE_PORT" -U app -C -S \
            -c "$CLIENTS" -j 2 -T "$DURATION" app 2>&1)
        tps=$(awk '/^tps/ {print $3}' <<<"$out")
        lat=$(awk '/latency average/ {print $4}' <<<"$out")
        TPS[$mode]="${TPS[$mode]:-} $tps"
        echo "round $round sslmode=$mode: $tps tps, latency $lat ms (connection + SCRAM + query)" >&2
    done
done
echo
echo "pgbench -C -S -c $CLIENTS -j 2 -T $DURATION through sluice"
echo "sslmode=disable tps:${TPS[disable]}"
echo "sslmode=require tps:${TPS[require]}"
