"""asyncpg custom codecs and isolation levels through sluice in transaction
pooling. Usage: asyncpg_codecs.py URL (a superuser: it creates tables).

The same INSERT text is prepared against a table dropped and made again
with another column type, with a tuple-format codec each time: a server
statement planned for the old table must never answer for the new one.
Then SET SESSION CHARACTERISTICS and BEGIN ISOLATION LEVEL, as asyncpg's
own transaction tests do, with other connections sharing the servers."""
import asyncio
import datetime
import sys

import asyncpg

url = sys.argv[1]
CASES = [
    ("time", (3_600_000_000,)),
    ("timestamp", (86_400_000_000,)),
    ("interval", (2, 3, 1)),
    ("date", (15,)),
]


async def codecs(admin, conn):
    for typename, data in CASES:
        await admin.execute(f"CREATE TABLE ac_tab (v {typename})")
        try:
            await conn.set_type_codec(
                typename, encoder=tuple, decoder=tuple, schema="pg_catalog", format="tuple"
            )
            await conn.execute("INSERT INTO ac_tab VALUES ($1)", data)
            got = await conn.fetchval("SELECT ac_tab.v FROM ac_tab")
            assert got == data, (typename, got, data)
            await conn.reset_type_codec(typename, schema="pg_catalog")
        finally:
            await admin.execute("DROP TABLE ac_tab")
    # A text codec on a type that is dropped and made again (a new OID)
    # between two rounds of the same statements.
    for _ in range(2):
        await admin.execute("DROP TYPE IF EXISTS ac_mood; CREATE TYPE ac_mood AS ENUM ('sad', 'ok')")
        await conn.reload_schema_state()
        await conn.set_type_codec("ac_mood", encoder=str.lower, decoder=str.upper, format="text")
        assert await conn.fetchval("SELECT $1::ac_mood", "OK") == "OK"
        assert await conn.fetchval("SELECT 'sad'::ac_mood") == "SAD"
    await admin.execute("DROP TYPE ac_mood")


async def isolation(conn, others):
    levels = {
        None: "read committed",
        "read_uncommitted": "read uncommitted",
        "read_committed": "read committed",
        "repeatable_read": "repeatable read",
        "serializable": "serializable",
    }
    for tx in levels:
        for session in levels:
            if session:
                await conn.execute(
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL " + levels[session]
                )
            # Other clients run in between on the same few servers.
            for o in others:
                assert await o.fetchval("SHOW transaction_isolation") == "read committed"
            assert await conn.fetchval("SHOW transaction_isolation") == levels[session]
            async with conn.transaction(isolation=tx):
                got = await conn.fetchval("SHOW transaction_isolation")
                assert got == levels[tx or session], (tx, session, got)
                async with conn.transaction():
                    assert await conn.fetchval("SHOW transaction_isolation") == got
            await conn.reset()


async def main():
    admin = await asyncpg.connect(url)
    await admin.execute("DROP TABLE IF EXISTS ac_tab")
    conn = await asyncpg.connect(url)
    await codecs(admin, conn)
    others = [await asyncpg.connect(url) for _ in range(3)]
    await isolation(conn, others)
    print("ok")


asyncio.run(main())
