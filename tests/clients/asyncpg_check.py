"""asyncpg through sluice in transaction pooling: its statement cache,
explicit prepare() and transactions, with connections interleaved.
Usage: asyncpg_check.py DSN. Prints "ok" and exits 0 when every result is right."""
import asyncio
import sys

import asyncpg


async def worker(dsn, n):
    conn = await asyncpg.connect(dsn)
    stmt = await conn.prepare("SELECT $1::int * 2")
    for i in range(50):
        assert await conn.fetchval("SELECT $1::int + $2::int", i, n) == i + n
        assert await stmt.fetchval(i) == 2 * i
        if i % 10 == 0:
            async with conn.transaction():
                rows = await conn.fetch("SELECT generate_series(1, $1::int) AS g", n + 1)
                assert [r["g"] for r in rows] == list(range(1, n + 2))
    await conn.close()


async def main(dsn):
    await asyncio.gather(*(worker(dsn, n) for n in range(4)))
    print("ok")


asyncio.run(main(sys.argv[1]))
