#!/usr/bin/env bash
# The result cache (#27) under pgbench: reads over a hot set of KEYS rows
# (Zipf-like, random_zipfian 1.1) with WRITES percent of UPDATEs, and the
# same reads alone, through sluice with the cache on, sluice with it off,
# PgBouncer and direct PostgreSQL, interleaved (A B C D A B C D ...) so
# machine noise hits all alike. Transaction pooling, no replica (the cache
# is the only thing reads can come from besides the primary).
# Prints TPS, the pooler's CPU seconds per 10,000 transactions (from /proc),
# the cache's hit ratio (from /metrics) and, for the mixed runs, what
# cache_check.py found: reads checked against the checker's own writes and
# against direct reads, and how many were stale (must be 0); and the
# client's CPU per transaction (pgbench, plus the checker in mixed runs),
# which on a small machine bounds what any pooler can reach.
# Knobs: DURATION (s per run), ROUNDS, CLIENTS, POOL, KEYS, WRITES, MODE
# (pgbench -M), MAX_LAG (max_cache_lag), SETTLE (cache_settle), SCENARIOS,
# TARGETS, CHECKERS
# (threads).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-27432}
BOUNCER_PORT=${BOUNCER_PORT:-27433}
CACHE_PORT=${CACHE_PORT:-27434}
PLAIN_PORT=${PLAIN_PORT:-27435}
METRICS_PORT=${METRICS_PORT:-27436}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-32}
POOL=${POOL:-8}
KEYS=${KEYS:-1000}
WRITES=${WRITES:-5}
MODE=${MODE:-simple}
MAX_LAG=${MAX_LAG:-1s}
SETTLE=${SETTLE:-100ms}
CHECKERS=${CHECKERS:-2}
SCENARIOS=${SCENARIOS:-"mixed select-only"}
TARGETS=${TARGETS:-"cache nocache pgbouncer direct"}

cluster_dir cache
PLAIN_PID=
cleanup() {
    if [ -n "$PLAIN_PID" ]; then kill "$PLAIN_PID" 2>/dev/null || true; fi
    stop_pgbouncer
    stop_all
}
trap cleanup EXIT

cargo build --release --quiet
PRIMARY_CONF="wal_level = logical
max_wal_senders = 10
max_replication_slots = 10" start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d app \
    -c "CREATE TABLE kv (id int PRIMARY KEY, v bigint NOT NULL DEFAULT 0)" \
    -c "ALTER TABLE kv OWNER TO app" \
    -c "INSERT INTO kv SELECT g, 0 FROM generate_series(1, $KEYS) g" \
    -c "CREATE PUBLICATION sluice_cache FOR TABLE kv" \
    -c "CREATE ROLE cache_reader LOGIN REPLICATION PASSWORD 'reader'"

cat > "$DIR/mixed.sql" <<SQL
\set id random_zipfian(1, $KEYS, 1.1)
\set w random(1, 100)
\if :w <= $WRITES
UPDATE kv SET v = v + 1 WHERE id = :id;
\else
SELECT v FROM kv WHERE id = :id;
\endif
SQL
cat > "$DIR/select-only.sql" <<SQL
\set id random_zipfian(1, $KEYS, 1.1)
SELECT v FROM kv WHERE id = :id;
SQL

start_pgbouncer "$BOUNCER_PORT" "$POOL" 2000

# sluice without the cache (its own process, so its CPU is its own).
sluice_toml "$PLAIN_PORT" "$POOL" "max_client_conn = 2000" > "$DIR/pooler.toml"
start_sluice "$PLAIN_PORT"
PLAIN_PID=$SLUICE_PID
# sluice with the cache on for kv.
sluice_toml "$CACHE_PORT" "$POOL" "max_client_conn = 2000
monitor_user = \"cache_reader\"
max_cache_lag = \"$MAX_LAG\"
cache_settle = \"$SETTLE\"
metrics_addr = \"127.0.0.1:$METRICS_PORT\"" '[[databases.app.cache]]
tables = ["kv"]' '[users.cache_reader]
password = "reader"' > "$DIR/pooler.toml"
start_sluice "$CACHE_PORT"
CACHE_PID=$SLUICE_PID
for _ in $(seq 1 100); do
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^sluice_cache_stream_up{.*} 1' && break
    sleep 0.1
done
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -q '^sluice_cache_stream_up{.*} 1' \
    || { echo "the cache's change stream did not start" >&2; exit 1; }

metric() { # name -> its value summed over labels
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d\n", s}'
}

TICKS=$(getconf CLK_TCK)
# max_cache_lag, plus the 20 ms LSN poll and a margin for the checker.
BOUND=$(awk -v l="$MAX_LAG" 'BEGIN { v = l + 0; if (l ~ /ms$/) v /= 1000; printf "%.3f", v + 0.1 }')

# CPU seconds this shell's finished children (pgbench, the checker) used,
# into $DIR/children (`times` itself, not in a subshell of its own).
child_cpu() {
    times > "$DIR/times"
    awk 'NR == 2 { split($1, u, "m"); split($2, s, "m"); print u[1] * 60 + u[2] + s[1] * 60 + s[2] }' \
        "$DIR/times" > "$DIR/children"
}

run() { # target scenario -> "tps cpu_s_per_10k hit_ratio stale client_cpu_s_per_10k"
    local target=$1 scenario=$2 pid port
    case $target in
        cache) pid=$CACHE_PID port=$CACHE_PORT ;;
        nocache) pid=$PLAIN_PID port=$PLAIN_PORT ;;
        pgbouncer) pid=$BOUNCER_PID port=$BOUNCER_PORT ;;
        direct) pid="" port=$PRIMARY_PORT ;;
    esac
    local dsn="host=127.0.0.1 port=$port user=app password=secret dbname=app"
    local primary="host=127.0.0.1 port=$PRIMARY_PORT user=app password=secret dbname=app"
    local hits0 misses0 before after out checked="" checker=""
    hits0=$(metric sluice_cache_hits_total)
    misses0=$(metric sluice_cache_misses_total)
    before=$(cpu_ticks "$pid")
    local client0
    child_cpu
    client0=$(cat "$DIR/children")
    if [ "$scenario" = mixed ]; then
        python3 benches/load/cache_check.py "$dsn" "$primary" "$DURATION" "$KEYS" "$WRITES" "$BOUND" "$CHECKERS" \
            > "$DIR/check.out" 2> "$DIR/check.err" &
        checker=$!
    fi
    out=$(timeout $((DURATION + 30)) "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$port" -U app -M "$MODE" \
        -f "$DIR/$scenario.sql" -c "$CLIENTS" -j 2 -T "$DURATION" app 2>&1) || true
    if [ -n "$checker" ]; then
        wait "$checker" || { echo "checker failed: $(cat "$DIR/check.err")" >&2; }
        checked=$(cat "$DIR/check.out")
        sed 's/^/  /' "$DIR/check.err" >&2
    fi
    after=$(cpu_ticks "$pid")
    local client
    child_cpu
    client=$(awk -v a="$(cat "$DIR/children")" -v b="$client0" 'BEGIN { print a - b }')
    if ! grep -q "number of failed transactions: 0 " <<<"$out" || grep -qE "aborted|ERROR" <<<"$out"; then
        echo "pgbench failed on $target ($scenario): $(grep -m1 -E 'ERROR|aborted' <<<"$out")" >&2
        echo "failed - - - -"
        return
    fi
    local tps tx extra=0 hits misses
    tps=$(awk '/^tps/ {print $3}' <<<"$out")
    tx=$(awk '/actually processed/ {print $6}' <<<"$out" | cut -d/ -f1)
    # The checker's statements through the pooler count as transactions too.
    if [ -n "$checked" ]; then extra=$(awk '{print $2 + $4}' <<<"$checked"); fi
    hits=$(( $(metric sluice_cache_hits_total) - hits0 ))
    misses=$(( $(metric sluice_cache_misses_total) - misses0 ))
    local stale="-"
    if [ -n "$checked" ]; then
        stale=$(awk '{printf "%d/%d", $6 + $8, $2}' <<<"$checked")
    fi
    awk -v t="$tps" -v c=$((after - before)) -v hz="$TICKS" -v n="$tx" -v x="$extra" \
        -v h="$hits" -v m="$misses" -v tg="$target" -v s="$stale" -v cl="$client" \
        'BEGIN { r = (tg == "cache" && h + m > 0) ? sprintf("%.1f%%", 100 * h / (h + m)) : "-";
                 cpu = (tg == "direct") ? "-" : sprintf("%.3f", c / hz / (n + x) * 10000);
                 printf "%.0f %s %s %s %.3f\n", t, cpu, r, s, cl / (n + x) * 10000 }'
}

declare -A TPS CPU HIT STALE CLIENT
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        for target in $TARGETS; do
            read -r tps cpu hit stale client <<<"$(run "$target" "$scenario")"
            TPS[$scenario,$target]="${TPS[$scenario,$target]:-} $tps"
            CPU[$scenario,$target]="${CPU[$scenario,$target]:-} $cpu"
            HIT[$scenario,$target]="${HIT[$scenario,$target]:-} $hit"
            STALE[$scenario,$target]="${STALE[$scenario,$target]:-} $stale"
            CLIENT[$scenario,$target]="${CLIENT[$scenario,$target]:-} $client"
            echo "round $round  $scenario  $target: $tps tps, CPU ${cpu}s / 10k tx, hits $hit, stale/checked $stale, client CPU ${client}s / 10k tx" >&2
        done
    done
done

echo
echo "pgbench -M $MODE -c $CLIENTS -j 2 -T $DURATION, $KEYS keys (Zipf 1.1), $WRITES% writes in mixed, pool $POOL, max_cache_lag $MAX_LAG, cache_settle $SETTLE, $ROUNDS interleaved rounds"
printf "%-12s %-10s %-18s %-22s %-16s %-20s %s\n" scenario target tps "pooler cpu s/10k tx" "hit ratio" "stale/checked reads" "client cpu s/10k tx"
for scenario in $SCENARIOS; do
    for target in $TARGETS; do
        printf "%-12s %-10s %-18s %-22s %-16s %-20s %s\n" "$scenario" "$target" "${TPS[$scenario,$target]# }" \
            "${CPU[$scenario,$target]# }" "${HIT[$scenario,$target]# }" "${STALE[$scenario,$target]# }" \
            "${CLIENT[$scenario,$target]# }"
    done
done
curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | grep -E '^sluice_cache_(invalidations|resets|stream_losses)_total' || true
