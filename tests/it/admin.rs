//! The admin console: PgBouncer's SHOW columns, authorization per command,
//! RELOAD and SHUTDOWN.

use tokio_postgres::SimpleQueryMessage;

use crate::harness::{Cluster, DB, MD5_USER, SCRAM_USER, Sluice, config_for};

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn console_config(general: &str) -> String {
    config_for(
        Cluster::shared(),
        &format!(
            "admin_users = [\"{}\"]\nstats_users = [\"{}\"]\n{general}",
            SCRAM_USER.0, MD5_USER.0
        ),
        "",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_pools_has_pgbouncer_columns_and_counts() {
    let s = Sluice::start(&console_config("")).await;
    let app = s.app().await;
    app.simple_query("SELECT 1").await.unwrap();
    // psql against the console, as a DBA would.
    let text = crate::tools::run_tool(
        "psql",
        &s,
        &["-X", "-A", "-d", "pgbouncer", "-c", "SHOW POOLS"],
    )
    .await;
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.starts_with(
            "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|sv_active_cancel|\
             sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|pool_mode"
        ),
        "{header}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{DB}|{}|", SCRAM_USER.0)))
        .expect("the app pool");
    let cols: Vec<&str> = line.split('|').collect();
    assert_eq!(cols[2], "1", "one client connected: {line}");
    assert_eq!(cols[6], "1", "session mode: its server is active: {line}");

    let (c, conn) = tokio_postgres::connect(
        &s.url(SCRAM_USER.0, SCRAM_USER.1, "sluice"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let v = rows(&c.simple_query("SHOW VERSION").await.unwrap());
    assert!(v[0][0].starts_with("sluice "), "{v:?}");
    let dbs = rows(&c.simple_query("SHOW DATABASES").await.unwrap());
    assert!(dbs.iter().any(|r| r[0] == DB), "{dbs:?}");
    let e = c.simple_query("SHOW NONSENSE").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42601"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_users_read_admins_reload_and_shut_down() {
    let toml = console_config("");
    let mut s = Sluice::start(&toml).await;
    let (stats, conn) = tokio_postgres::connect(
        &s.url(MD5_USER.0, MD5_USER.1, "pgbouncer"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    stats.simple_query("SHOW POOLS").await.unwrap();
    let e = stats.simple_query("SHUTDOWN").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("42501"));
    // Users outside both lists get no console.
    let e = s
        .connect(
            crate::harness::PLAIN_USER.0,
            crate::harness::PLAIN_USER.1,
            "sluice",
        )
        .await
        .err()
        .expect("no console");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("3D000"));

    let (admin, conn) = tokio_postgres::connect(
        &s.url(SCRAM_USER.0, SCRAM_USER.1, "sluice"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let path = std::env::temp_dir()
        .join(format!("sluice-it-{}", std::process::id()))
        .join(format!("reload-{}.toml", s.port));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        toml.replace("[general]", "[general]\ndefault_pool_size = 7"),
    )
    .unwrap();
    let shared = s.shared.clone().unwrap();
    *shared.config_path.lock().unwrap() = Some(path);
    admin.simple_query("RELOAD").await.unwrap();
    let cfg = rows(&admin.simple_query("SHOW CONFIG").await.unwrap());
    assert!(
        cfg.iter()
            .any(|r| r[0] == "default_pool_size" && r[1] == "7"),
        "{cfg:?}"
    );

    let serving = s.shutdown_handle();
    admin.simple_query("SHUTDOWN").await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), serving)
        .await
        .expect("drained")
        .unwrap();
}

async fn pid(c: &tokio_postgres::Client) -> String {
    rows(&c.simple_query("SELECT pg_backend_pid()").await.unwrap())[0][0].clone()
}

/// Column names of a console SHOW, from its RowDescription.
async fn columns(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => {
                Some(cols.iter().map(|c| c.name().to_string()).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no RowDescription"))
}

async fn console(s: &Sluice, user: (&str, &str)) -> tokio_postgres::Client {
    let (c, conn) =
        tokio_postgres::connect(&s.url(user.0, user.1, "pgbouncer"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    c
}

/// PgBouncer 1.18's columns (Debian 12's pgbouncer, read with psql).
const PGBOUNCER: &[(&str, &str)] = &[
    (
        "SHOW STATS",
        "database total_xact_count total_query_count total_received total_sent total_xact_time total_query_time total_wait_time avg_xact_count avg_query_count avg_recv avg_sent avg_xact_time avg_query_time avg_wait_time",
    ),
    (
        "SHOW CLIENTS",
        "type user database state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name",
    ),
    (
        "SHOW SERVERS",
        "type user database state addr port local_addr local_port connect_time request_time wait wait_us close_needed ptr link remote_pid tls application_name",
    ),
    ("SHOW LISTS", "list items"),
    (
        "SHOW DATABASES",
        "name host port database force_user pool_size min_pool_size reserve_pool pool_mode max_connections current_connections paused disabled",
    ),
    ("SHOW USERS", "name pool_mode"),
    (
        "SHOW POOLS",
        "database user cl_active cl_waiting cl_active_cancel_req cl_waiting_cancel_req sv_active sv_active_cancel sv_being_canceled sv_idle sv_used sv_tested sv_login maxwait maxwait_us pool_mode",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_starts_with_pgbouncers_columns() {
    let s = Sluice::start(&console_config("")).await;
    let app = s.app().await;
    app.simple_query("SELECT 1").await.unwrap();
    let c = console(&s, SCRAM_USER).await;
    for (sql, want) in PGBOUNCER {
        let got = columns(&c, sql).await;
        let want: Vec<&str> = want.split(' ').collect();
        assert_eq!(&got[..want.len()], want.as_slice(), "{sql}");
    }
    // The app client and its (session-mode) server are listed.
    let clients = rows(&c.simple_query("SHOW CLIENTS").await.unwrap());
    let me = clients
        .iter()
        .find(|r| r[2] == DB && r[1] == SCRAM_USER.0)
        .expect("the app client");
    assert_eq!(me[3], "active", "{me:?}");
    assert!(me[14].starts_with('S'), "linked to its server: {me:?}");
    let servers = rows(&c.simple_query("SHOW SERVERS").await.unwrap());
    assert!(
        servers.iter().any(|r| r[2] == DB && r[3] == "active"),
        "{servers:?}"
    );
    let lists = rows(&c.simple_query("SHOW LISTS").await.unwrap());
    assert!(
        lists.iter().any(|r| r[0] == "used_clients" && r[1] != "0"),
        "{lists:?}"
    );
    let stats = rows(&c.simple_query("SHOW STATS").await.unwrap());
    let app_stats = stats.iter().find(|r| r[0] == DB).expect("app stats");
    assert!(
        app_stats[2].parse::<u64>().unwrap() >= 1,
        "a query counted: {app_stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_kill_reconnect_and_set() {
    let toml = console_config("pool_mode = \"transaction\"")
        .replace("replicas = [", "route = \"primary\"\nreplicas = [");
    let s = Sluice::start(&toml).await;
    let admin = console(&s, SCRAM_USER).await;
    let stats = console(&s, MD5_USER).await;
    for cmd in [
        "PAUSE",
        "RESUME",
        "KILL app",
        "RECONNECT",
        "SET default_pool_size = 3",
    ] {
        let e = stats.simple_query(cmd).await.unwrap_err();
        assert_eq!(
            e.as_db_error().map(|d| d.code().code()),
            Some("42501"),
            "{cmd}"
        );
    }
    let app = s.app().await;
    let before = pid(&app).await;
    assert_eq!(pid(&app).await, before, "one idle server is reused");
    admin.simple_query("RECONNECT app").await.unwrap();
    assert_ne!(pid(&app).await, before, "RECONNECT closed the old server");

    // Connected before the PAUSE: new logins wait for RESUME too, as in PgBouncer.
    let second = s.app().await;
    admin.simple_query("PAUSE app").await.unwrap();
    let dbs = rows(&admin.simple_query("SHOW DATABASES").await.unwrap());
    assert!(
        dbs.iter().any(|r| r[0] == DB && r[11] == "1"),
        "paused: {dbs:?}"
    );
    let blocked = tokio::spawn(async move { second.simple_query("SELECT 1").await.map(|_| ()) });
    crate::harness::wait_until(10, "a client waiting on the paused pool", || {
        let admin = &admin;
        async move {
            rows(&admin.simple_query("SHOW POOLS").await.unwrap())
                .iter()
                .any(|r| r[0] == DB && r[3] == "1")
        }
    })
    .await;
    assert!(!blocked.is_finished());
    admin.simple_query("RESUME app").await.unwrap();
    blocked.await.unwrap().unwrap();

    admin
        .simple_query("SET default_pool_size = 3")
        .await
        .unwrap();
    let cfg = rows(&admin.simple_query("SHOW CONFIG").await.unwrap());
    assert!(
        cfg.iter()
            .any(|r| r[0] == "default_pool_size" && r[1] == "3"),
        "{cfg:?}"
    );
    let e = admin
        .simple_query("SET listen_addr = '1.2.3.4:5'")
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("55P02"));

    admin.simple_query("KILL app").await.unwrap();
    let e = app.simple_query("SELECT 1").await.unwrap_err();
    assert!(
        app.is_closed() || e.as_db_error().is_some_and(|d| d.code().code() == "57P01"),
        "{e}"
    );
    // Killed sessions leave no cancel key behind.
    let shared = s.shared.clone().unwrap();
    crate::harness::wait_until(10, "the killed sessions' cancel keys to go", || {
        let shared = &shared;
        async move { shared.cancels.is_empty() }
    })
    .await;
    let e = admin.simple_query("KILL nope").await.unwrap_err();
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("3D000"));
    // New clients are served after a KILL.
    let again = s.app().await;
    again.simple_query("SELECT 1").await.unwrap();
}
