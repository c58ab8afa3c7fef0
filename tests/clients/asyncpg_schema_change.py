"""Prepared statements through sluice survive schema changes (asyncpg and
its statement cache). Usage: asyncpg_schema_change.py SLUICE_URL DIRECT_URL.
asyncpg executes without describing rows again, so a client holding a
statement from before the change gets PostgreSQL's error and asyncpg
re-prepares under a new name and retries by itself: the application sees
no error, and the new shape."""
import asyncio
import sys

import asyncpg

sluice_url, direct_url = sys.argv[1], sys.argv[2]
Q = "SELECT * FROM sca_t WHERE id = $1"


async def main():
    admin = await asyncpg.connect(direct_url)
    await admin.execute("DROP TABLE IF EXISTS sca_t; DROP TYPE IF EXISTS sca_mood")
    await admin.execute("CREATE TYPE sca_mood AS ENUM ('sad', 'ok')")
    await admin.execute("CREATE TABLE sca_t (id int, v text, m sca_mood); INSERT INTO sca_t VALUES (1, 'a', 'ok')")
    old = [await asyncpg.connect(sluice_url) for _ in range(4)]
    for c in old:
        assert len(await c.fetchrow(Q, 1)) == 3

    async def everyone_sees(width, via):
        errors = []
        for c in old + [await asyncpg.connect(sluice_url) for _ in range(3)]:
            for _ in range(3):
                try:
                    row = await c.fetchrow(Q, 1)
                    assert len(row) == width, (via, row)
                except asyncpg.PostgresError as e:
                    errors.append(f"{via}: {type(e).__name__}: {e}")
        assert not errors, errors

    await admin.execute("ALTER TABLE sca_t ADD COLUMN z int")
    await everyone_sees(4, "ADD COLUMN directly")
    via = await asyncpg.connect(sluice_url)
    await via.execute("ALTER TABLE sca_t ALTER COLUMN v TYPE varchar(20)")
    await via.execute("ALTER TABLE sca_t ADD COLUMN w int")
    await everyone_sees(5, "ALTER COLUMN TYPE and ADD COLUMN through sluice")
    await admin.execute("DROP TABLE sca_t; DROP TYPE sca_mood")
    await admin.execute("CREATE TYPE sca_mood AS ENUM ('sad', 'ok')")
    await admin.execute("CREATE TABLE sca_t (id int, v text, m sca_mood); INSERT INTO sca_t VALUES (1, 'a', 'ok')")
    await everyone_sees(3, "type dropped and created again directly")
    print("ok")


asyncio.run(main())
