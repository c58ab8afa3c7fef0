#!/usr/bin/env bash
# Side-by-side CPU of sluice builds and PgBouncer: one pgbench scenario run
# against each in turn, round after round (the order rotates each round), so
# that the machine's noise, which moves a single run by 20-40% here, hits all
# alike. CPU is the pooler's utime and stime from /proc over the run.
#
#   bash benches/load/ab.sh [BUILD...]
#
# A BUILD is a git revision (built in a temporary worktree) or the path of a
# sluice binary; none means the working tree's release build. PgBouncer runs
# too unless PGBOUNCER=0.
# Knobs: ARGS (pgbench arguments, "-S -M simple -c 64"), DURATION (s per run,
# 6), ROUNDS (4), POOL (16), GENERAL (extra [general] lines for every
# sluice, e.g. "worker_threads = 0"), OUT (benches/load/results).
# Prints one line per run and a table of medians, and appends the runs to
# $OUT/ab.jsonl. With -r in ARGS it also prints each statement's mean latency
# (pgbench's per-statement report), medians over rounds.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26532}
BOUNCER_PORT=${BOUNCER_PORT:-26533}
FIRST_SLUICE_PORT=${FIRST_SLUICE_PORT:-26540}
ARGS=${ARGS:-"-S -M simple -c 64"}
DURATION=${DURATION:-6}
ROUNDS=${ROUNDS:-4}
POOL=${POOL:-16}
PGBOUNCER=${PGBOUNCER:-1}
OUT=${OUT:-benches/load/results}
mkdir -p "$OUT"
BUILDS=("$@")
if [ ${#BUILDS[@]} -eq 0 ]; then BUILDS=(.); fi

cluster_dir ab
PIDS=()
cleanup() {
    stop_pgbouncer
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    stop_all
}
trap cleanup EXIT

# binary_of BUILD N: prints the path of that build's binary, building it first
# when BUILD names a git revision.
binary_of() {
    if [ "$1" = . ]; then
        cargo build --release --quiet --bin sluice
        echo "$PWD/target/release/sluice"
    elif [ -x "$1" ] && [ -f "$1" ]; then
        realpath "$1"
    else
        local tree="$DIR/src-$2"
        git worktree add --quiet --detach "$tree" "$1" >&2
        # One target directory for every revision, kept between runs:
        # dependencies build once.
        (cd "$tree" && CARGO_TARGET_DIR="$ROOT/target/ab" cargo build --release --quiet --bin sluice) >&2
        cp "$ROOT/target/ab/release/sluice" "$DIR/sluice-$2"
        git worktree remove --force "$tree"
        echo "$DIR/sluice-$2"
    fi
}

LABELS=()
BINS=()
for i in "${!BUILDS[@]}"; do
    LABELS+=("${BUILDS[$i]}")
    BINS+=("$(binary_of "${BUILDS[$i]}" "$i")")
done

start_primary "$PRIMARY_PORT" 300
export PGPASSWORD=secret
"$PG_BIN/pgbench" -h 127.0.0.1 -p "$PRIMARY_PORT" -U app -i -q -s 10 app >/dev/null 2>&1

NAMES=()
PORTS=()
if [ "$PGBOUNCER" = 1 ]; then
    start_pgbouncer "$BOUNCER_PORT" "$POOL" 1000
    NAMES+=(pgbouncer)
    PORTS+=("$BOUNCER_PORT")
    PIDS+=("$BOUNCER_PID")
fi
for i in "${!BINS[@]}"; do
    port=$((FIRST_SLUICE_PORT + i))
    REPLICA_PORT="" sluice_toml "$port" "$POOL" "${GENERAL:-}" > "$DIR/sluice-$i.toml"
    "${BINS[$i]}" --config "$DIR/sluice-$i.toml" --log-level warn > "$DIR/sluice-$i.log" 2>&1 &
    PIDS+=($!)
    wait_for_port "$port"
    NAMES+=("${LABELS[$i]}")
    PORTS+=("$port")
done

TICKS=$(getconf CLK_TCK)
# times PID: utime and stime so far, in clock ticks, over all its threads.
times() { awk '{print $14, $15}' "/proc/$1/stat"; }

RAW="$DIR/ab.jsonl"
: > "$RAW"
n=${#NAMES[@]}
for round in $(seq 1 "$ROUNDS"); do
    for k in $(seq 0 $((n - 1))); do
        i=$(( (k + round - 1) % n ))
        pid=${PIDS[$i]}
        read -r u0 s0 <<<"$(times "$pid")"
        # shellcheck disable=SC2086
        out=$("$PG_BIN/pgbench" -h 127.0.0.1 -p "${PORTS[$i]}" -U app -n -j 2 $ARGS -T "$DURATION" app 2>&1) || true
        read -r u1 s1 <<<"$(times "$pid")"
        tps=$(awk '/^tps/ {print $3; exit}' <<<"$out")
        tx=$(awk '/actually processed/ {print $6}' <<<"$out" | cut -d/ -f1)
        if [ -z "$tps" ] || [ "${tx:-0}" = 0 ]; then
            echo "  ${NAMES[$i]} failed: $(tail -2 <<<"$out")" >&2
            continue
        fi
        PGBENCH_OUT=$out python3 - "$round" "${NAMES[$i]}" "$tps" "$tx" $((u1 - u0)) $((s1 - s0)) "$TICKS" "$ARGS" <<'PY' | tee -a "$RAW"
import json, os, re, sys
r, name, tps, tx, u, s, hz, args = sys.argv[1:]
us = lambda t: round(int(t) / int(hz) / int(tx) * 1e6, 2)
run = {"round": int(r), "build": name, "args": args, "tps": float(tps),
       "user_us": us(u), "sys_us": us(s), "cpu_us": us(int(u) + int(s))}
# With -r in ARGS, pgbench reports each SQL statement's mean latency (ms).
stmts = [(m[2].strip(), float(m[1])) for m in
         (re.match(r"^\s+([0-9.]+)\s+[0-9]+\s+(.*)$", l) for l in os.environ["PGBENCH_OUT"].splitlines())
         if m and not m[2].lstrip().startswith("\\")]
if stmts:
    run["stmt_ms"] = stmts
print(json.dumps(run))
PY
    done
done
cat "$RAW" >> "$OUT/ab.jsonl"

python3 - "$RAW" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
names = list(dict.fromkeys(r["build"] for r in runs))
med = {n: {k: statistics.median(r[k] for r in runs if r["build"] == n)
           for k in ("tps", "user_us", "sys_us", "cpu_us")} for n in names}
base = "pgbouncer" if "pgbouncer" in med else names[0]
print(f"\nmedians over {max(r['round'] for r in runs)} rounds, pgbench {runs[0]['args']}; "
      f"ratios against {base}")
print(f"{'build':<24} {'tps':>9} {'user µs/tx':>11} {'sys µs/tx':>10} {'CPU µs/tx':>10} {'CPU':>6} {'tps':>6}")
for n in names:
    m = med[n]
    print(f"{n[:24]:<24} {m['tps']:>9.0f} {m['user_us']:>11.2f} {m['sys_us']:>10.2f} {m['cpu_us']:>10.2f}"
          f" {m['cpu_us'] / med[base]['cpu_us']:>5.2f}x {m['tps'] / med[base]['tps']:>5.2f}x")
# Per-statement mean latency (pgbench -r), medians over rounds, in µs.
stmts = list(dict.fromkeys(st for r in runs for st, _ in r.get("stmt_ms", [])))
if stmts:
    lat = {n: {st: statistics.median(ms for r in runs if r["build"] == n
                                     for s2, ms in r.get("stmt_ms", []) if s2 == st)
               for st in stmts} for n in names}
    print(f"\nstatement latency, µs (pgbench -r; medians over rounds)")
    print(f"{'statement':<40}" + "".join(f" {n[-12:]:>12}" for n in names))
    for st in stmts:
        print(f"{st[:40]:<40}" + "".join(f" {lat[n][st] * 1000:>12.0f}" for n in names))
PY
