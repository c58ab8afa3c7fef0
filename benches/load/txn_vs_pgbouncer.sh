#!/usr/bin/env bash
# Transaction pooling under pgbench: direct PostgreSQL vs PgBouncer vs sluice,
# 64 clients over a pool of 8, interleaved (A B C A B C ...) so machine noise
# hits all three alike. Prints TPS and the pooler's CPU seconds per 10,000
# transactions (from /proc). Knobs: DURATION (s per run), ROUNDS, CLIENTS, POOL.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-25432}
BOUNCER_PORT=${BOUNCER_PORT:-25433}
SLUICE_PORT=${SLUICE_PORT:-25434}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-64}
POOL=${POOL:-8}
SCENARIOS=${SCENARIOS:-"select-simple select-extended select-prepared tpcb-simple tpcb-prepared"}

cluster_dir load
cleanup() {
    stop_pgbouncer
    stop_all
}
trap cleanup EXIT

cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 10 app >/dev/null 2>&1

start_pgbouncer "$BOUNCER_PORT" "$POOL" 2000

sluice_toml "$SLUICE_PORT" "$POOL" "max_client_conn = 2000" > "$DIR/pooler.toml"
start_sluice "$SLUICE_PORT"

TICKS=$(getconf CLK_TCK)

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
