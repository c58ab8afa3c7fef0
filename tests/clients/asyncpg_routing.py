"""asyncpg through sluice with a replica: what an application does between
reads and writes on one connection, with prepared statements (asyncpg's
prepare() and its statement cache) on both sides of a write.
Usage: asyncpg_routing.py DSN. Prints "ok" and exits 0 when every result is right."""
import asyncio
import sys

import asyncpg


async def main(dsn):
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE IF NOT EXISTS apg_route (v int)")
    read = await conn.prepare("SELECT count(*) FROM apg_route WHERE v = $1")
    for i in range(20):
        # A prepared read, then writes: simple, with arguments, prepared.
        await read.fetchval(i)
        await conn.execute("INSERT INTO apg_route VALUES (%d)" % i)
        await conn.execute("INSERT INTO apg_route VALUES ($1)", i)
        write = await conn.prepare("INSERT INTO apg_route VALUES ($1) RETURNING v")
        assert await write.fetchval(i) == i
        # Read your writes, prepared after the write.
        assert await read.fetchval(i) == 3, i
        assert await conn.fetchval("SELECT count(*) FROM apg_route WHERE v = $1", i) == 3
    await conn.close()
    print("ok")


asyncio.run(main(sys.argv[1]))
