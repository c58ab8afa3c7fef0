#!/usr/bin/env bash
# Soak: DURATION seconds (default 1800) of mixed pgbench traffic through
# sluice in transaction pooling with a streaming replica: reads, writes and
# inserts, in simple, extended and prepared mode, with connect-per-
# transaction rounds; a reload every minute (the pool size alternates) and
# a server backend killed every 30 seconds. Then every acknowledged insert
# must be on the primary, the replica must hold exactly the primary's rows,
# and sluice's RSS and open file descriptors are reported over time.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-27432}
REPLICA_PORT=${REPLICA_PORT:-27433}
SLUICE_PORT=${SLUICE_PORT:-27434}
DURATION=${DURATION:-1800}
ROUND=${ROUND:-20}
CLIENTS=${CLIENTS:-8}

cluster_dir soak
trap stop_all EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
PGB=("$PG_BIN/pgbench" -h 127.0.0.1 -U app)
"${PGB[@]}" -p "$PRIMARY_PORT" -i -q -s 5 app >/dev/null 2>&1
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U app app \
    -c "CREATE TABLE soak (id bigserial PRIMARY KEY, client int, at timestamptz DEFAULT now())"
start_replica "$PRIMARY_PORT" "$REPLICA_PORT"

write_config() { # POOL
    sluice_toml "$SLUICE_PORT" "$1" "query_wait_timeout = \"30s\"" > "$DIR/pooler.toml.new"
    mv "$DIR/pooler.toml.new" "$DIR/pooler.toml"
}
write_config 8
start_sluice "$SLUICE_PORT"

cat > "$DIR/read.sql" <<'SQL'
\set aid random(1, 500000)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
cat > "$DIR/write.sql" <<'SQL'
\set aid random(1, 500000)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
END;
SQL
cat > "$DIR/insert.sql" <<'SQL'
INSERT INTO soak (client) VALUES (:client_id);
SQL

mkdir -p "$DIR/logs"
echo "seconds,rss_kib,fds" > "$DIR/resources.csv"
sample() {
    echo "$1,$(awk '/^VmRSS/ {print $2}' "/proc/$SLUICE_PID/status"),$(ls "/proc/$SLUICE_PID/fd" | wc -l)" >> "$DIR/resources.csv"
}
chaos() { # reloads every 60 s, a backend killed every 30 s, resources every 10 s
    local t=0 pool=8
    while sleep 10; do
        t=$((t + 10))
        sample "$t"
        if (( t % 30 == 0 )); then
            # Prefer a backend that is running a query right now.
            "$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres postgres -c \
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity
                 WHERE usename = 'app' AND backend_type = 'client backend'
                 ORDER BY state = 'active' DESC, random() LIMIT 1) k" >> "$DIR/kills.txt"
        fi
        if (( t % 60 == 0 )); then
            pool=$(( pool == 8 ? 12 : 8 )); write_config "$pool"; kill -HUP "$SLUICE_PID"
        fi
    done
}
sample 0
chaos & CHAOS=$!
trap 'kill $CHAOS 2>/dev/null || true; stop_all' EXIT

start=$(date +%s); round=0; aborted=0
modes=(simple extended prepared)
while (( $(date +%s) - start < DURATION )); do
    mode=${modes[$((round % 3))]}
    extra=(); if (( round % 4 == 3 )); then extra=(-C); fi
    out=$("${PGB[@]}" -p "$SLUICE_PORT" -n -M "$mode" "${extra[@]}" -c "$CLIENTS" -j 2 -T "$ROUND" \
        -f "$DIR/read.sql@6" -f "$DIR/write.sql@2" -f "$DIR/insert.sql@2" \
        --log --log-prefix="$DIR/logs/r$round" app 2>&1 || true)
    tps=$(echo "$out" | awk '/^tps/ {printf "%d", $3}')
    ab=$(echo "$out" | grep -c "aborted in command" || true)
    aborted=$((aborted + ab))
    echo "round $round: -M $mode ${extra[*]:-} tps ${tps:-0}, clients aborted $ab"
    round=$((round + 1))
done
kill "$CHAOS" 2>/dev/null || true
sample "$(( $(date +%s) - start ))"

# Acknowledged inserts: script 2 in the per-transaction logs, not failed.
acked=$(cat "$DIR"/logs/r* 2>/dev/null | awk '$4 == 2 && $3 != "failed" && $3 != "skipped"' | wc -l)
q() { "$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$1" -U postgres app -c "$2"; }
target=$(q "$PRIMARY_PORT" "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 300); do
    [ "$(q "$REPLICA_PORT" "SELECT pg_last_wal_replay_lsn() >= '$target'")" = t ] && break
    sleep 0.1
done
primary_rows=$(q "$PRIMARY_PORT" "SELECT count(*) || ' ' || coalesce(sum(id), 0) FROM soak")
replica_rows=$(q "$REPLICA_PORT" "SELECT count(*) || ' ' || coalesce(sum(id), 0) FROM soak")
echo
kills=$(grep -c 1 "$DIR/kills.txt" 2>/dev/null || echo 0)
echo "soak: $DURATION s, $round pgbench rounds, $kills backends killed, $aborted pgbench clients aborted by a killed backend"
echo "acknowledged inserts: $acked; rows on the primary (count, sum of ids): $primary_rows; on the replica: $replica_rows"
echo "sluice RSS and open descriptors over time ($DIR/resources.csv):"
column -s, -t "$DIR/resources.csv" | sed -n '1,4p;$p'
status=0
if (( ${primary_rows%% *} < acked )); then echo "FAIL: acknowledged inserts missing on the primary"; status=1; fi
if [ "$primary_rows" != "$replica_rows" ]; then echo "FAIL: the replica differs from the primary"; status=1; fi
exit $status
