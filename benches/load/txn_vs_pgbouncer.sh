#!/usr/bin/env bash
# Transaction pooling under pgbench: direct PostgreSQL vs PgBouncer vs sluice,
# 64 clients over a pool of 8, interleaved (A B C A B C ...) so machine noise
# hits all three alike. Prints TPS and the pooler's CPU seconds per 10,000
# transactions (from /proc). Knobs: DURATION (s per run), ROUNDS, CLIENTS, POOL.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
if ! command -v pgbouncer >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
fi
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-55432}
BOUNCER_PORT=${BOUNCER_PORT:-55433}
SLUICE_PORT=${SLUICE_PORT:-55434}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-64}
POOL=${POOL:-8}
SCENARIOS=${SCENARIOS:-"select-simple select-extended select-prepared tpcb-simple tpcb-prepared"}

cluster_dir load
cleanup() {
    if [ -f "$DIR/pgbouncer.pid" ]; then kill "$(cat "$DIR/pgbouncer.pid")" 2>/dev/null || true; fi
    stop_all
}
trap cleanup EXIT

cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 10 app >/dev/null 2>&1

cat > "$DIR/userlist.txt" <<USERS
"app" "secret"
USERS
cat > "$DIR/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$PRIMARY_PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $DIR/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 2000
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
INI
chmod 644 "$DIR"/userlist.txt "$DIR"/pgbouncer.ini
as_pg pgbouncer -d -q "$DIR/pgbouncer.ini"

sluice_toml "$SLUICE_PORT" "$POOL" "max_client_conn = 2000" > "$DIR/pooler.toml"
wait_for_port "$BOUNCER_PORT"
start_sluice "$SLUICE_PORT"

TICKS=$(getconf CLK_TCK)
cpu_ticks() { # utime + stime of a pid, in clock ticks
    if [ -z "$1" ]; then echo 0; return; fi
    awk '{print $14 + $15}' "/proc/$1/stat"
}

run() { # target port scenario -> "tps cpu_s_per_10k"
    local pid=$1 port=$2 scenario=$3 args
    case $scenario in
        select-simple) args="-S -M simple" ;;
        select-extended) args="-S -M extended" ;;
        select-prepared) args="-S -M prepared" ;;
        tpcb-simple) args="-M simple" ;;
        tpcb-prepared) args="-M prepared" ;;
    esac
    local before after out tps
    before=$(cpu_ticks "$pid")
    # shellcheck disable=SC2086
    out=$(timeout $((DURATION + 30)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U app $args -c "$CLIENTS" -j 2 -T "$DURATION" app 2>&1) || true
    after=$(cpu_ticks "$pid")
    # Clients that hit an error abort without counting as failed transactions.
    if ! grep -q "number of failed transactions: 0 " <<<"$out" || grep -qE "aborted|ERROR" <<<"$out"; then
        # Recorded as a failed run (PgBouncer 1.18 cannot run -M prepared in transaction mode).
        echo "pgbench failed on port $port ($scenario): $(grep -m1 -E 'ERROR|aborted' <<<"$out")" >&2
        echo "failed -"
        return
    fi
    tps=$(awk '/^tps/ {print $3}' <<<"$out")
    local tx
    tx=$(awk '/actually processed/ {print $6}' <<<"$out" | cut -d/ -f1)
    awk -v t="$tps" -v c=$((after - before)) -v hz="$TICKS" -v n="$tx" \
        'BEGIN { printf "%.0f %.3f\n", t, (n > 0 ? c / hz / n * 10000 : 0) }'
}

BOUNCER_PID=$(cat "$DIR/pgbouncer.pid")
declare -A TPS CPU
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        for target in direct pgbouncer sluice; do
            case $target in
                direct) r=$(run "" "$PRIMARY_PORT" "$scenario") ;;
                pgbouncer) r=$(run "$BOUNCER_PID" "$BOUNCER_PORT" "$scenario") ;;
                sluice) r=$(run "$SLUICE_PID" "$SLUICE_PORT" "$scenario") ;;
            esac
            read -r tps cpu <<<"$r"
            TPS[$scenario,$target]="${TPS[$scenario,$target]:-} $tps"
            CPU[$scenario,$target]="${CPU[$scenario,$target]:-} $cpu"
            echo "round $round  $scenario  $target: $tps tps, pooler CPU ${cpu}s / 10k tx" >&2
        done
    done
done

echo
echo "pgbench -c $CLIENTS -j 2 -T $DURATION, transaction pooling, pool $POOL, $ROUNDS interleaved rounds"
printf "%-16s %-20s %-20s %-20s %-18s %-18s\n" scenario "direct tps" "pgbouncer tps" "sluice tps" "pgbouncer cpu/10k" "sluice cpu/10k"
for scenario in $SCENARIOS; do
    printf "%-16s %-20s %-20s %-20s %-18s %-18s\n" "$scenario" \
        "${TPS[$scenario,direct]# }" "${TPS[$scenario,pgbouncer]# }" "${TPS[$scenario,sluice]# }" \
        "${CPU[$scenario,pgbouncer]# }" "${CPU[$scenario,sluice]# }"
done
