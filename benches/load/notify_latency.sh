#!/usr/bin/env bash
# LISTEN/NOTIFY through sluice (transaction pooling, pool of 2) against a
# direct connection: LISTENERS asyncpg connections listen on one channel, a
# sender sends COUNT notifications carrying their send time; prints the
# servers the listeners hold and the NOTIFY-to-client latency p50/p99 over
# every (notification, listener) pair.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/prereqs.sh
. scripts/lib/cluster.sh

PRIMARY_PORT=${PRIMARY_PORT:-26452}
SLUICE_PORT=${SLUICE_PORT:-26454}
LISTENERS=${LISTENERS:-100}
COUNT=${COUNT:-500}
REPLICA_PORT=

cluster_dir notify
trap stop_all EXIT
cargo build --release --quiet
start_primary "$PRIMARY_PORT" 300
sluice_toml "$SLUICE_PORT" 2 'default_application_name = "bench pool"' > "$DIR/pooler.toml"
start_sluice "$SLUICE_PORT"

python3 - "$SLUICE_PORT" "$PRIMARY_PORT" "$LISTENERS" "$COUNT" <<'PY'
import asyncio, statistics, sys, time
import asyncpg

sluice, primary, listeners, count = (int(a) for a in sys.argv[1:5])

async def run(port, label):
    dsn = f"postgresql://app:secret@127.0.0.1:{port}/app"
    lat, got = [], [0]
    done = asyncio.Event()
    def on(_c, _pid, _ch, payload):
        lat.append(time.perf_counter_ns() - int(payload))
        got[0] += 1
        if got[0] == listeners * count:
            done.set()
    conns = []
    for _ in range(listeners):
        c = await asyncpg.connect(dsn)
        await c.add_listener("bench", on)
        conns.append(c)
    d = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{primary}/app")
    used = await d.fetch("SELECT coalesce(application_name, '') AS a, count(*) FROM pg_stat_activity "
                         "WHERE datname = 'app' AND backend_type = 'client backend' GROUP BY 1 ORDER BY 1")
    sender = await asyncpg.connect(dsn)
    for _ in range(count):
        await sender.execute(f"NOTIFY bench, '{time.perf_counter_ns()}'")
        await asyncio.sleep(0.002)
    await asyncio.wait_for(done.wait(), 60)
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000
    print(f"{label}: {listeners} listeners, {count} notifications, {len(lat)} deliveries: "
          f"p50 {p(0.5):.0f} us, p99 {p(0.99):.0f} us, max {lat[-1] / 1000:.0f} us")
    print(f"  server connections to app while listening (pg_stat_activity, incl. this query's): "
          + ", ".join(f"{r['a'] or '(none)'}: {r['count']}" for r in used))
    for c in conns + [sender, d]:
        await c.close()

async def main():
    await run(primary, "direct")
    await run(sluice, "sluice")

asyncio.run(main())
PY
