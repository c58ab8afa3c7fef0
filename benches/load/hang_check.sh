#!/usr/bin/env bash
# Hang check: ROUNDS runs of one pgbench scenario (ARGS, default TPC-B with
# 32 clients) of T seconds each through a sluice binary in transaction
# pooling (pool of POOL, worker_threads = WT: 0 is a thread per CPU), each
# bounded by a timeout. A run that outlives it means a client hung: the
# script prints the server sessions still in a transaction, sluice's SHOW
# CLIENTS and SHOW SERVERS, and the sockets holding unread bytes, and exits
# 1. Session 12 reproduced a lost wake-up this way (2 hangs in 56 4-second
# runs with worker_threads = 0).
#
#   bash benches/load/hang_check.sh [SLUICE_BINARY]
set -uo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26782}
PORT=${PORT:-26783}
ARGS=${ARGS:-"-M simple -c 32"}
ROUNDS=${ROUNDS:-40}
T=${T:-4}
POOL=${POOL:-16}
WT=${WT:-0}
SLUICE_BIN=${1:-}
if [ -z "$SLUICE_BIN" ]; then cargo build --release --quiet --bin sluice; fi

cluster_dir hang
trap stop_all EXIT
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 10 app >/dev/null 2>&1
REPLICA_PORT="" sluice_toml "$PORT" "$POOL" "worker_threads = $WT
admin_users = [\"app\"]" > "$DIR/pooler.toml"
start_sluice "$PORT"
for i in $(seq 1 "$ROUNDS"); do
    # shellcheck disable=SC2086
    out=$(timeout $((T + 20)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U app -n -j 2 \
        $ARGS -T "$T" app 2>&1)
    rc=$?
    echo "run $i: rc=$rc $(grep -E '^tps' <<<"$out")"
    if [ $rc -ne 0 ]; then
        echo "run $i did not finish: a client hung" >&2
        "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres -c \
            "SELECT pid, state, wait_event, left(query, 50) AS query FROM pg_stat_activity WHERE datname = 'app' AND state <> 'idle'"
        "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PORT" -U app -d sluice -c "SHOW CLIENTS" -c "SHOW SERVERS"
        echo "sluice's sockets with unread or unsent bytes:"
        ss -tnp | grep "pid=$SLUICE_PID," | awk '$2 != 0 || $3 != 0'
        exit 1
    fi
done
echo "no hang in $ROUNDS runs"
