#!/usr/bin/env bash
# User-space instructions per transaction, sluice against PgBouncer, counted
# by valgrind's callgrind. Unlike CPU seconds on a shared machine this is
# repeatable to about 0.1%, so it shows what a change to the hot path is
# worth; it leaves out the kernel (system calls, the TCP stack), which
# costs both poolers alike, and callgrind runs one thread at a time.
#
# Each pooler runs under callgrind in transaction pooling with a pool of 16;
# pgbench -S warms it up, counting is zeroed, then `-c 16 -t TX` runs and the
# count is dumped. Modes: select-only `-M simple`, `-M extended` and
# `-M prepared` (sluice only: PgBouncer 1.18 cannot pool prepared statements
# in transaction mode);
# `simple-64`, select-only with 64 clients (so 48 wait for a server at any
# time, as in run.sh); `connect`, select-only with a SCRAM login per
# transaction (`-C`); `rows`, a 1,000-row SELECT in extended mode (the
# cost per forwarded row); and `tpcb`, pgbench's default TPC-B-like script
# (seven statements a transaction, so the relay's cost per round trip).
# Knobs: TX (transactions per client, 1000), MODES ("simple extended
# prepared simple-64 connect rows tpcb"),
# TARGETS ("sluice pgbouncer"), SLUICE (binary, ./target/release/sluice).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
if ! command -v valgrind >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
fi
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26452}
PORT=${PORT:-26453}
TX=${TX:-1000}
MODES=${MODES:-"simple extended prepared simple-64 connect rows tpcb"}
TARGETS=${TARGETS:-"sluice pgbouncer"}
SLUICE=${SLUICE:-./target/release/sluice}

cluster_dir instructions
VG_PID=""
cleanup() {
    pkill -f -- "--callgrind-out-file=$DIR/" 2>/dev/null || true
    stop_cluster
}
trap cleanup EXIT

if [ "$SLUICE" = ./target/release/sluice ]; then cargo build --release --quiet --bin sluice; fi
start_primary "$PRIMARY_PORT" 200
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 1 app >/dev/null 2>&1
REPLICA_PORT="" sluice_toml "$PORT" 16 > "$DIR/pooler.toml"
echo "SELECT g, 'row ' || g FROM generate_series(1, 1000) g;" > "$DIR/rows.sql"
# The PgBouncer config, on the same port (start_pgbouncer writes it).
start_pgbouncer "$PORT" 16 200
stop_pgbouncer
sleep 1

# under_callgrind TARGET: starts TARGET under callgrind (as postgres for
# PgBouncer, which refuses root); sets VG_PID and AS.
under_callgrind() {
    local out="$DIR/callgrind.$1"
    rm -f "$out"*
    AS=()
    local cmd=("$SLUICE" --config "$DIR/pooler.toml" --log-level warn)
    if [ "$1" = pgbouncer ]; then
        cmd=(pgbouncer "$DIR/pgbouncer.ini")
        if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); fi
    fi
    "${AS[@]}" valgrind --tool=callgrind --callgrind-out-file="$out" \
        --dump-instr=no "${cmd[@]}" > "$DIR/valgrind.$1.log" 2>&1 &
    VG_PID=$!
    # Slow to start under valgrind.
    for _ in 1 2 3; do wait_for_port "$PORT" 2>/dev/null && return 0; done
    echo "$1 did not start under valgrind: see $DIR/valgrind.$1.log" >&2
    exit 1
}

# stop_target TARGET: ends the callgrind run (runuser may stand between).
stop_target() {
    pkill -f -- "--callgrind-out-file=$DIR/callgrind.$1" 2>/dev/null || true
    wait "$VG_PID" 2>/dev/null || true
    VG_PID=""
}

printf '%-10s %-9s %8s %14s %10s\n' mode target tx instructions "per tx"
for mode in $MODES; do
    for target in $TARGETS; do
        if [ "$mode" = prepared ] && [ "$target" = pgbouncer ]; then continue; fi
        under_callgrind "$target"
        clients=16 per=$TX warm=200
        case $mode in
            rows) script=(-f "$DIR/rows.sql" -M extended) ;;
            simple-64) script=(-S -M simple) clients=64 per=$((TX / 4)) ;;
            connect) script=(-S -C) per=$((TX / 10)) warm=20 ;;
            tpcb) script=(-M simple) per=$((TX / 4)) ;;
            *) script=(-S -M "$mode") ;;
        esac
        bench=("$PG_BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U app "${script[@]}" -c "$clients" app)
        "${bench[@]}" -t "$warm" >/dev/null 2>&1
        # Without a pid: every callgrind run of this user, which is this one.
        "${AS[@]}" callgrind_control -z >/dev/null 2>&1
        tx=$("${bench[@]}" -t "$per" 2>&1 | awk -F': ' '/actually processed/ {print $2}' | cut -d/ -f1)
        "${AS[@]}" callgrind_control -d >/dev/null 2>&1
        stop_target "$target"
        ir=$(awk '/^summary:/ {print $2}' "$DIR/callgrind.$target.1")
        printf '%-10s %-9s %8d %14d %10d\n' "$mode" "$target" "$tx" "$ir" $((ir / tx))
    done
done
