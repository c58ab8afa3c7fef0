"""asyncpg listeners (add_listener) through sluice in transaction pooling.
Usage: asyncpg_listen.py DSN DIRECT_DSN CHANNEL. As psycopg_listen.py:
50 listeners get each notification exactly once, in order, and a
self-notification's pid is the sender's get_server_pid().
Prints "ok" when every check passes."""
import asyncio
import sys

import asyncpg

N = 50


async def main(dsn, direct, ch):
    got = [[] for _ in range(N)]
    conns = []
    for i in range(N):
        c = await asyncpg.connect(dsn)
        await c.add_listener(ch, lambda _c, pid, _ch, payload, i=i: got[i].append((pid, payload)))
        conns.append(c)
    d = await asyncpg.connect(direct)
    rows = await d.fetch(
        "SELECT application_name, count(*) FROM pg_stat_activity "
        "WHERE application_name IN ('sluice listener', 'drv pool') GROUP BY 1")
    used = {r[0]: r[1] for r in rows}
    assert used.get("sluice listener") == 1, used
    assert used.get("drv pool", 0) <= 2, used
    sender = await asyncpg.connect(dsn)
    await sender.execute(f"NOTIFY {ch}, 'one'")
    await sender.execute("SELECT pg_notify($1, $2)", ch, "two")
    await d.execute(f"NOTIFY {ch}, 'three'")
    await conns[0].execute(f"NOTIFY {ch}, 'self'")
    for _ in range(1000):
        if all(len(g) >= 4 for g in got):
            break
        await asyncio.sleep(0.01)
    for g in got:
        assert [p for _, p in g] == ["one", "two", "three", "self"], g
        assert g[0][0] == sender.get_server_pid(), (g[0][0], sender.get_server_pid())
        assert g[3][0] == conns[0].get_server_pid(), (g[3][0], conns[0].get_server_pid())
    for c in conns + [sender, d]:
        await c.close()
    print("ok")


asyncio.run(main(*sys.argv[1:4]))
