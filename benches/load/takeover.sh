#!/usr/bin/env bash
# Restarts without dropping clients (#28): pgbench (TPC-B, -M simple, 32
# clients, no -C) through sluice in transaction pooling while a new sluice
# process takes over the running one TAKEOVERS times (`sluice --takeover`,
# every few seconds). Prints what pgbench saw (transactions, failed ones,
# aborted clients), how many clients each takeover moved (from the old
# process's log), and transaction latency percentiles over the whole run
# and within a second after each takeover began (the pause a client sees).
# Knobs: DURATION (s), CLIENTS, POOL, TAKEOVERS.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-28432}
SLUICE_PORT=${SLUICE_PORT:-28434}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-32}
POOL=${POOL:-8}
TAKEOVERS=${TAKEOVERS:-3}

cluster_dir takeover
trap 'pkill -f "sluice --config $DIR/pooler.toml" 2>/dev/null || true; stop_all' EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 100
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 4 app >/dev/null 2>&1
sluice_toml "$SLUICE_PORT" "$POOL" "takeover_socket = \"$DIR/takeover.sock\"" > "$DIR/pooler.toml"
chmod 755 "$DIR"

start() { # [--takeover] -> starts a sluice, logging to $DIR/sluice-N.log; sets PID
    local n=$1
    shift
    ./target/release/sluice --config "$DIR/pooler.toml" --log-level info "$@" 2> "$DIR/sluice-$n.log" &
    PID=$!
}
start 0
wait_for_port "$SLUICE_PORT"

(cd "$DIR" && "$PG_BIN/pgbench" -h 127.0.0.1 -p "$SLUICE_PORT" -U app -n -M simple \
    -c "$CLIENTS" -j 2 -T "$DURATION" --log --log-prefix=lat app > "$DIR/pgbench.out" 2>&1) &
BENCH=$!
gap=$((DURATION / (TAKEOVERS + 1)))
: > "$DIR/takeovers"
for n in $(seq 1 "$TAKEOVERS"); do
    sleep "$gap"
    old=$PID
    date +%s.%N >> "$DIR/takeovers"
    start "$n" --takeover
    while kill -0 "$old" 2>/dev/null; do sleep 0.01; done
    wait "$old" || echo "takeover $n: the old process exited with an error" >&2
done
wait "$BENCH" || true

echo "pgbench -M simple -c $CLIENTS -j 2 -T $DURATION (TPC-B, no -C), pool $POOL, $TAKEOVERS takeovers $gap s apart"
grep -E "number of transactions actually processed|number of failed transactions|^tps" "$DIR/pgbench.out"
echo "aborted clients: $(grep -c 'aborted' "$DIR/pgbench.out" || true)"
for n in $(seq 0 $((TAKEOVERS - 1))); do
    echo "takeover $((n + 1)): $(grep -o 'takeover done.*' "$DIR/sluice-$n.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -1)"
done
python3 - "$DIR" <<'PY'
import glob, sys
d = sys.argv[1]
starts = [float(l) for l in open(f"{d}/takeovers")]
lat, near = [], []
for f in glob.glob(f"{d}/lat*"):
    for line in open(f):
        p = line.split()
        # client, transaction, latency µs, script, epoch s, µs
        us, end = int(p[2]), int(p[4]) + int(p[5]) / 1e6
        lat.append(us)
        begin = end - us / 1e6
        if any(s <= end and begin <= s + 1.0 for s in starts):
            near.append(us)
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000 if xs else float("nan")
print(f"latency, all {len(lat)} transactions: p50 {pct(lat, .5):.1f} ms, p99 {pct(lat, .99):.1f} ms, max {pct(lat, 1):.1f} ms")
print(f"latency, {len(near)} transactions within 1 s of a takeover: p50 {pct(near, .5):.1f} ms, p99 {pct(near, .99):.1f} ms, max {pct(near, 1):.1f} ms")
PY
