"""Cancelling over TLS with psycopg's bundled libpq (17 or later sends its
CancelRequest over TLS and reports a TLS error when the server closes
without close_notify). Usage: psycopg_tls_cancel.py DSN (with sslmode=require).
Prints "ok" when conn.cancel_safe(), conn.cancel() and a cursor's cancel
each stop a pg_sleep(10) within a second and raise no error."""
import sys
import threading
import time

import psycopg

dsn = sys.argv[1]


def stopped_by(cancel):
    conn = psycopg.connect(dsn, autocommit=True)
    failure = []

    def later():
        time.sleep(0.3)
        try:
            cancel(conn)
        except Exception as e:  # the error this script exists to catch
            failure.append(repr(e))

    t = threading.Thread(target=later)
    t.start()
    started = time.monotonic()
    try:
        conn.execute("SELECT pg_sleep(10)")
        raise AssertionError("pg_sleep was not cancelled")
    except psycopg.errors.QueryCanceled:
        pass
    t.join()
    took = time.monotonic() - started
    assert not failure, failure
    assert took < 1.3, f"cancel took {took:.2f} s"
    # The connection is still usable after its query was cancelled.
    assert conn.execute("SELECT 1").fetchone()[0] == 1
    conn.close()


assert psycopg.pq.version() >= 170000, psycopg.pq.version()
stopped_by(lambda c: c.cancel_safe())
stopped_by(lambda c: c.cancel())
stopped_by(lambda c: c.pgconn.get_cancel().cancel())
print("ok")
