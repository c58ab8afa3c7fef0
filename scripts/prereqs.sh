#!/usr/bin/env bash
# Installs what sluice's demo and tests need on a fresh Debian machine,
# and only what is missing: PostgreSQL 15 server and client programs and an
# OS user `postgres` (PostgreSQL refuses to run as root). With `--tests`,
# also what only the tests use (Prometheus and systemd-analyze, for the
# deploy/ checks).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
missing=()
[ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_basebackup" ] || missing+=(postgresql-15)
[ -x "$PG_BIN/psql" ] && [ -x "$PG_BIN/pgbench" ] || missing+=(postgresql-client-15)
command -v cc >/dev/null || missing+=(gcc)
# make: the jemalloc allocator is built from C source.
command -v make >/dev/null || missing+=(make)
# promtool and prometheus: the alert-rule and scrape tests (deploy/).
# systemd-analyze: the systemd unit's check (deploy/systemd).
if [ "${1:-}" = --tests ]; then
    command -v promtool >/dev/null && command -v prometheus >/dev/null || missing+=(prometheus)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
command -v cargo >/dev/null || { echo "cargo (Rust stable) is required: https://rustup.rs" >&2; exit 1; }
