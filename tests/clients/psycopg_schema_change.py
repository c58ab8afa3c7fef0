"""Prepared statements through sluice survive schema changes (psycopg,
prepare_threshold=0). Usage: psycopg_schema_change.py SLUICE_DSN DIRECT_DSN.
Prepares on several pooled servers, changes the table (directly on
PostgreSQL and through sluice) and runs the same query from old and new
clients: no error outside transactions, the new shape returned; inside a
transaction at most that transaction fails, as on a direct connection."""
import sys

import psycopg

sluice_dsn, direct_dsn = sys.argv[1], sys.argv[2]
admin = psycopg.connect(direct_dsn, autocommit=True)
admin.execute("DROP TABLE IF EXISTS sc_t; DROP TYPE IF EXISTS sc_mood")
admin.execute("CREATE TYPE sc_mood AS ENUM ('sad', 'ok')")
admin.execute("CREATE TABLE sc_t (id int, v text, m sc_mood); INSERT INTO sc_t VALUES (1, 'a', 'ok')")
Q = "SELECT * FROM sc_t WHERE id = %s"


def connect():
    return psycopg.connect(sluice_dsn, autocommit=True, prepare_threshold=0)


old = [connect() for _ in range(4)]
for c in old:
    assert c.execute(Q, (1,)).fetchone() == (1, "a", "ok")


def everyone_sees(width, via):
    errors = []
    for c in old + [connect() for _ in range(3)]:
        for _ in range(3):
            try:
                row = c.execute(Q, (1,)).fetchone()
                assert len(row) == width, (via, row)
            except psycopg.Error as e:
                errors.append(f"{via}: {type(e).__name__}: {e}")
    assert not errors, f"{len(errors)} of {len(old) * 3 + 9} executions failed: {errors[:2]}"


admin.execute("ALTER TABLE sc_t ADD COLUMN z int")
everyone_sees(4, "ADD COLUMN directly")
via = connect()
via.execute("ALTER TABLE sc_t ALTER COLUMN v TYPE varchar(20)")
via.execute("ALTER TABLE sc_t ADD COLUMN w int")
everyone_sees(5, "ALTER COLUMN TYPE and ADD COLUMN through sluice")
admin.execute("DROP TABLE sc_t; DROP TYPE sc_mood")
admin.execute("CREATE TYPE sc_mood AS ENUM ('sad', 'ok')")
admin.execute("CREATE TABLE sc_t (id int, v text, m sc_mood); INSERT INTO sc_t VALUES (1, 'a', 'ok')")
everyone_sees(3, "type dropped and created again directly")

# Inside a transaction the client gets the error, as a direct connection
# holding a stale statement would; its next transaction works.
c = old[0]
admin.execute("ALTER TABLE sc_t ADD COLUMN y int")
failed = 0
try:
    with c.transaction():
        c.execute(Q, (1,)).fetchone()
except psycopg.errors.FeatureNotSupported:
    failed += 1
with c.transaction():
    assert len(c.execute(Q, (1,)).fetchone()) == 4
assert failed <= 1
print("ok")
