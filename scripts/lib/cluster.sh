# Sourced by scripts/demo.sh and benches/load/*.sh: a throwaway PostgreSQL 15
# primary (+ optional streaming replica) in $DIR, with role app/secret and
# database app. Runs the server programs as `postgres` when we are root.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cluster_dir() {
    DIR=$(mktemp -d /tmp/sluice-$1.XXXXXX)
    chmod 755 "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres "$DIR"; fi
}

# start_primary PORT [max_connections]: $PRIMARY_CONF, if set, goes into
# its postgresql.conf too.
start_primary() {
    as_pg "$PG_BIN/initdb" -D "$DIR/primary" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
    cat >> "$DIR/primary/postgresql.conf" <<CONF
port = $1
listen_addresses = '127.0.0.1'
unix_socket_directories = '$DIR'
max_connections = ${2:-200}
${PRIMARY_CONF:-}
CONF
    cat > "$DIR/primary/pg_hba.conf" <<HBA
local all all trust
host replication all 127.0.0.1/32 trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
HBA
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/primary" -l "$DIR/primary.log" -w start >/dev/null
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres \
        -c "CREATE ROLE app LOGIN PASSWORD 'secret'" -c "CREATE DATABASE app OWNER app"
}

# start_replica PRIMARY_PORT PORT
start_replica() {
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$1" -U postgres -D "$DIR/replica" -R -X stream -c fast
    echo "port = $2" >> "$DIR/replica/postgresql.conf"
    as_pg "$PG_BIN/pg_ctl" -D "$DIR/replica" -l "$DIR/replica.log" -w start >/dev/null
}

stop_cluster() {
    for d in replica primary; do
        if [ -f "$DIR/$d/postmaster.pid" ]; then
            as_pg "$PG_BIN/pg_ctl" -D "$DIR/$d" -m fast stop >/dev/null || true
        fi
    done
    rm -rf "$DIR"
}

# wait_for_port PORT: until psql as app gets in (10 s at most).
wait_for_port() {
    for _ in $(seq 1 100); do
        PGPASSWORD=secret "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$1" -U app -d app -c "SELECT 1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    return 1
}

# sluice_toml LISTEN_PORT POOL [GENERAL_LINES] [APP_LINES] [MORE]: prints a
# pooler.toml for user app/secret and database app on $PRIMARY_PORT (with
# $REPLICA_PORT as its replica when set), in transaction pooling; MORE goes
# at the end (more users).
sluice_toml() {
    cat <<TOML
[general]
listen_addr = "127.0.0.1:$1"
pool_mode = "transaction"
default_pool_size = $2
${3:-}
[databases.app]
primary = "127.0.0.1:$PRIMARY_PORT"
${REPLICA_PORT:+replicas = [\"127.0.0.1:$REPLICA_PORT\"]}
${4:-}
[users.app]
password = "secret"
${5:-}
TOML
}

# start_sluice PORT: runs the release build (or the binary $SLUICE_BIN) on
# $DIR/pooler.toml (listening on PORT) in the background; sets SLUICE_PID.
start_sluice() {
    "${SLUICE_BIN:-./target/release/sluice}" --config "$DIR/pooler.toml" --log-level warn &
    SLUICE_PID=$!
    wait_for_port "$1"
}

# stop_all: sluice, if started, then the cluster.
stop_all() {
    if [ -n "${SLUICE_PID:-}" ]; then kill "$SLUICE_PID" 2>/dev/null || true; fi
    stop_cluster
}

# start_pgbouncer PORT POOL MAX_CLIENTS [HBA_FILE]: PgBouncer in transaction
# pooling in front of database app on $PRIMARY_PORT; sets BOUNCER_PID. It
# gets the roles' stored secrets (SCRAM verifiers, md5 hashes), as its docs
# advise, so it derives no key per login (sluice does the same from its
# plain password, once per config load). With HBA_FILE, that file decides
# each login's method (auth_type = hba).
start_pgbouncer() {
    if ! command -v pgbouncer >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    fi
    "$PG_BIN/psql" -X -q -A -t -h 127.0.0.1 -p "$PRIMARY_PORT" -U postgres postgres \
        -c "SELECT format('\"%s\" \"%s\"', rolname, rolpassword) FROM pg_authid
            WHERE rolcanlogin AND rolpassword IS NOT NULL" > "$DIR/userlist.txt"
    local auth="auth_type = scram-sha-256"
    if [ -n "${4:-}" ]; then auth="auth_type = hba
auth_hba_file = $4"; fi
    cat > "$DIR/pgbouncer.ini" <<INI
[databases]
app = host=127.0.0.1 port=$PRIMARY_PORT dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $1
unix_socket_dir =
$auth
auth_file = $DIR/userlist.txt
pool_mode = transaction
default_pool_size = $2
max_client_conn = $3
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
INI
    chmod 644 "$DIR"/userlist.txt "$DIR"/pgbouncer.ini
    # runuser resets the open-files limit; PgBouncer needs one per client.
    as_pg sh -c "ulimit -n $(ulimit -Hn) && exec pgbouncer -d -q $DIR/pgbouncer.ini"
    wait_for_port "$1"
    BOUNCER_PID=$(cat "$DIR/pgbouncer.pid")
}

# stop_pgbouncer: if start_pgbouncer ran.
stop_pgbouncer() {
    if [ -f "$DIR/pgbouncer.pid" ]; then kill "$(cat "$DIR/pgbouncer.pid")" 2>/dev/null || true; fi
}

# cpu_ticks PID: its utime + stime so far, in clock ticks (getconf CLK_TCK);
# 0 for an empty PID (a run straight against PostgreSQL).
cpu_ticks() {
    if [ -z "$1" ]; then echo 0; return; fi
    awk '{print $14 + $15}' "/proc/$1/stat"
}

# pgbench_cpu PID PORT PGBENCH_ARGS...: runs pgbench as app against PORT and
# prints "TPS CPU" where CPU is PID's CPU seconds per 10,000 transactions.
pgbench_cpu() {
    local pid=$1 port=$2 before after out tps tx
    shift 2
    before=$(cpu_ticks "$pid")
    out=$("$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U app -n "$@" app 2>&1)
    after=$(cpu_ticks "$pid")
    tps=$(awk '/^tps/ {print $3}' <<<"$out")
    tx=$(awk '/actually processed/ {print $6}' <<<"$out" | cut -d/ -f1)
    awk -v t="$tps" -v c=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$tx" \
        'BEGIN { printf "%.0f %.3f\n", t, c / hz / n * 10000 }'
}
