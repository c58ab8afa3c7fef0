#!/usr/bin/env bash
# The load benchmark of issue #8: pgbench scenarios against direct
# PostgreSQL, PgBouncer and sluice (and sluice routing reads to a streaming
# replica), all poolers in transaction mode with the same pool size, run
# interleaved (A B C D, then B C D A, ...) so machine noise hits all alike.
#
# For each scenario and target: TPS, p50/p99 latency (pgbench --log), the
# pooler's CPU seconds per 10,000 transactions (utime+stime from /proc), its
# peak RSS while the scenario ran, and in the idle scenario its RSS per idle
# client. Prints a table and writes $OUT/results.json, $OUT/results.png and
# $OUT/raw.jsonl (one line per run).
#
# Knobs: DURATION (s per run, 10), ROUNDS (1), POOL (16), IDLE (10000),
# RATE (tps limit of the 1000-client scenario, 4000), SCENARIOS, TARGETS, OUT.
# SCENARIOS=select-rows adds a 1,000-row SELECT (not run by default).
#
# Logins use SCRAM-SHA-256 (role app), except in connect-md5 (role app_md5,
# md5 everywhere): with SCRAM, pgbench's own PBKDF2 per connection takes
# most of the two cores, so only md5 shows what a connection costs.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
python3 -c "import matplotlib" 2>/dev/null || pip install -q matplotlib >/dev/null 2>&1 ||
    echo "matplotlib could not be installed: no chart" >&2
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26432}
REPLICA_PORT_=${REPLICA_PORT:-26433}
BOUNCER_PORT=${BOUNCER_PORT:-26434}
SLUICE_PORT=${SLUICE_PORT:-26435}
ROUTED_PORT=${ROUTED_PORT:-26436}
MT_PORT=${MT_PORT:-26437}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-1}
POOL=${POOL:-16}
IDLE=${IDLE:-10000}
RATE=${RATE:-4000}
SCENARIOS=${SCENARIOS:-"select-simple select-extended select-prepared tpcb connect connect-md5 clients-1000 idle-10k"}
TARGETS=${TARGETS:-"direct pgbouncer sluice sluice-mt sluice-routed"}
OUT=${OUT:-benches/load/results}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

cluster_dir bench
HOLDER_FD=""
cleanup() {
    stop_pgbouncer
    for p in ${ROUTED_PID:-} ${MT_PID:-}; do kill "$p" 2>/dev/null || true; done
    stop_all
}
trap cleanup EXIT

cargo build --release --quiet --bin sluice --example hold_clients
start_primary "$PRIMARY_PORT" 1200
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 10 app >/dev/null 2>&1
echo "SELECT g, 'row ' || g FROM generate_series(1, 1000) g;" > "$DIR/rows.sql"
# Role app_md5 logs in with md5 (its password stored as an md5 hash), at
# PostgreSQL and at both poolers; everyone else with SCRAM.
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres -d postgres \
    -c "SET password_encryption = 'md5'" \
    -c "CREATE ROLE app_md5 LOGIN PASSWORD 'secret' IN ROLE pg_read_all_data"
MD5_LINE="host all app_md5 127.0.0.1/32 md5"
SCRAM_LINE="host all all 127.0.0.1/32 scram-sha-256"
as_pg sed -i "s|^$SCRAM_LINE|$MD5_LINE\n&|" "$DIR/primary/pg_hba.conf"
as_pg "$PG_BIN/pg_ctl" -D "$DIR/primary" reload >/dev/null
# The poolers' rules: the same two lines.
printf '%s\n' "$MD5_LINE" "$SCRAM_LINE" > "$DIR/hba.conf"
chmod 644 "$DIR/hba.conf"
if [[ " $TARGETS " == *" sluice-routed "* ]]; then
    start_replica "$PRIMARY_PORT" "$REPLICA_PORT_"
fi

start_pgbouncer "$BOUNCER_PORT" "$POOL" $((IDLE + 1000)) "$DIR/hba.conf"

# sluice without a replica (the same job as PgBouncer; one runtime thread,
# the default), the same with one runtime thread per CPU, and sluice routing
# reads to the replica.
GENERAL="max_client_conn = $((IDLE + 1000))
auth_hba_file = \"$DIR/hba.conf\""
MD5_USER='[users.app_md5]
password = "secret"'
REPLICA_PORT="" sluice_toml "$SLUICE_PORT" "$POOL" "$GENERAL" "" "$MD5_USER" > "$DIR/pooler.toml"
start_sluice "$SLUICE_PORT"
# another_sluice NAME TOML: starts sluice on that config, prints its pid.
another_sluice() {
    echo "$2" > "$DIR/$1.toml"
    ./target/release/sluice --config "$DIR/$1.toml" --log-level warn > "$DIR/$1.log" 2>&1 &
    echo $!
}
if [[ " $TARGETS " == *" sluice-mt "* ]]; then
    MT_PID=$(another_sluice mt \
        "$(REPLICA_PORT="" sluice_toml "$MT_PORT" "$POOL" "$GENERAL
worker_threads = 0" "" "$MD5_USER")")
    wait_for_port "$MT_PORT"
fi
if [[ " $TARGETS " == *" sluice-routed "* ]]; then
    ROUTED_PID=$(another_sluice routed \
        "$(REPLICA_PORT=$REPLICA_PORT_ sluice_toml "$ROUTED_PORT" "$POOL" "$GENERAL" "" "$MD5_USER")")
    wait_for_port "$ROUTED_PORT"
fi

TICKS=$(getconf CLK_TCK)
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# args_of SCENARIO -> pgbench arguments
args_of() {
    case $1 in
        select-simple) echo "-S -M simple -c 64" ;;
        select-extended) echo "-S -M extended -c 64" ;;
        select-prepared) echo "-S -M prepared -c 64" ;;
        tpcb) echo "-M simple -c 32" ;;
        connect | connect-md5) echo "-S -C -c 16" ;;
        # pgbench logs its 1000 clients in inside -T (~3 s here), so it runs longer.
        clients-1000) echo "-S -c 1000 -R $RATE -T $((DURATION + 10))" ;;
        idle-10k) echo "-S -c 16" ;;
        # Not in the default set: a 1,000-row SELECT, the cost per forwarded row.
        select-rows) echo "-M extended -c 16 -f $DIR/rows.sql" ;;
    esac
    case $1 in
        clients-1000) ;;
        *) echo "-T $DURATION" ;;
    esac
}

# hold_idle PORT: opens $IDLE idle logged-in clients on PORT; sets HELD.
hold_idle() {
    rm -f "$DIR/hold.in" "$DIR/hold.out"
    mkfifo "$DIR/hold.in"
    ./target/release/examples/hold_clients 127.0.0.1 "$1" app secret app "$IDLE" 100 \
        < "$DIR/hold.in" > "$DIR/hold.out" 2> "$DIR/hold.err" &
    HOLDER_PID=$!
    exec {HOLDER_FD}> "$DIR/hold.in"
    for _ in $(seq 1 1200); do
        if grep -q ready "$DIR/hold.out" 2>/dev/null; then break; fi
        sleep 0.1
    done
    HELD=$(awk '/ready/ {print $2}' "$DIR/hold.out")
    HELD=${HELD:-0}
    if [ -s "$DIR/hold.err" ]; then cat "$DIR/hold.err" >&2; fi
}
release_idle() {
    exec {HOLDER_FD}>&-
    wait "$HOLDER_PID" 2>/dev/null || true
}

# run ROUND SCENARIO TARGET: one pgbench run; appends a line to raw.jsonl.
run() {
    local round=$1 scenario=$2 target=$3 pid="" port
    case $target in
        direct) port=$PRIMARY_PORT ;;
        pgbouncer) port=$BOUNCER_PORT pid=$BOUNCER_PID ;;
        sluice) port=$SLUICE_PORT pid=$SLUICE_PID ;;
        sluice-mt) port=$MT_PORT pid=$MT_PID ;;
        sluice-routed) port=$ROUTED_PORT pid=$ROUTED_PID ;;
    esac
    local per_idle=null
    if [ "$scenario" = idle-10k ]; then
        if [ -z "$pid" ]; then return; fi # PostgreSQL itself would need 10k backends
        local before_kb
        before_kb=$(rss_kb "$pid")
        hold_idle "$port"
        sleep 1
        if [ "$HELD" -gt 0 ]; then
            per_idle=$(( ($(rss_kb "$pid") - before_kb) * 1024 / HELD ))
        fi
    fi
    local logs="$DIR/log/$scenario.$target.$round"
    mkdir -p "$DIR/log"
    local cpu0=0 cpu1=0 sampler=""
    if [ -n "$pid" ]; then
        cpu0=$(cpu_ticks "$pid")
        (while kill -0 "$pid" 2>/dev/null; do rss_kb "$pid"; sleep 0.2; done) > "$DIR/rss" &
        sampler=$!
    fi
    local out failed=false
    local user=app
    if [ "$scenario" = connect-md5 ]; then user=app_md5; fi
    local rc=0
    # shellcheck disable=SC2046
    out=$(timeout $((DURATION + 120)) "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U "$user" -n -j 2 \
        --log --log-prefix="$logs" $(args_of "$scenario") app 2>&1) || rc=$?
    if [ "$rc" = 124 ]; then
        # pgbench outlived -T by two minutes: a client never got its reply.
        out+=$'\n'"ERROR: timed out: a client hung (see benches/load/hang_check.sh)"
    fi
    if [ "$rc" != 0 ]; then failed=true; fi
    if [ -n "$pid" ]; then
        cpu1=$(cpu_ticks "$pid")
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
    fi
    if [ "$scenario" = idle-10k ]; then release_idle; fi
    if ! grep -q "number of failed transactions: 0 " <<<"$out" || grep -qE "aborted|ERROR" <<<"$out"; then
        failed=true
        echo "  $scenario via $target failed: $(grep -m1 -E 'ERROR|error|aborted' <<<"$out" || tail -3 <<<"$out")" >&2
    fi
    local tps tx lat p50 p99 rss_peak
    tps=$(awk '/^tps/ {print $3; exit}' <<<"$out")
    tx=$(awk '/actually processed/ {print $6}' <<<"$out" | cut -d/ -f1)
    read -r p50 p99 <<<"$(python3 benches/load/summarize.py latency "$logs".* 2>/dev/null || echo "- -")"
    rm -f "$logs".*
    rss_peak=null
    if [ -n "$pid" ] && [ -s "$DIR/rss" ]; then rss_peak=$(sort -n "$DIR/rss" | tail -1); fi
    python3 - "$round" "$scenario" "$target" "${tps:-}" "${tx:-0}" "$((cpu1 - cpu0))" "$TICKS" \
        "$p50" "$p99" "$rss_peak" "$per_idle" "$failed" "$([ -n "$pid" ] && echo 1 || echo 0)" \
        >> "$OUT/raw.jsonl" <<'PY'
import json, sys
(r, s, t, tps, tx, ticks, hz, p50, p99, rss, idle, failed, pooler) = sys.argv[1:]
num = lambda v: None if v in ("", "-", "null") else float(v)
tx = int(tx or 0)
print(json.dumps({
    "round": int(r), "scenario": s, "target": t, "failed": failed == "true",
    "tps": num(tps), "p50_ms": num(p50), "p99_ms": num(p99),
    "cpu_s_per_10k": (int(ticks) / int(hz) / tx * 10000) if pooler == "1" and tx else None,
    "rss_peak_kb": num(rss), "rss_per_idle_client_b": num(idle),
}))
PY
    tail -1 "$OUT/raw.jsonl" >&2
}

echo "{\"meta\": {\"duration\": $DURATION, \"rounds\": $ROUNDS, \"pool\": $POOL, \"idle\": $IDLE, \"rate\": $RATE, \"date\": \"$(date -u +%FT%TZ)\", \"cpus\": $(nproc)}}" > "$OUT/raw.jsonl"
# The targets' order rotates each round, so that none always runs first or
# right after another.
read -r -a ORDER <<<"$TARGETS"
for round in $(seq 1 "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        for k in "${!ORDER[@]}"; do
            run "$round" "$scenario" "${ORDER[$(( (k + round - 1) % ${#ORDER[@]} ))]}"
        done
    done
done
echo
python3 benches/load/summarize.py report "$OUT/raw.jsonl" "$OUT" | tee "$OUT/results.txt"
