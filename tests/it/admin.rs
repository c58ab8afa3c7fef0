//! The admin console: PgBouncer's SHOW columns, authorization per command,
//! RELOAD and SHUTDOWN.

use tokio_postgres::SimpleQueryMessage;

use crate::harness::cluster::pg_bin;
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
    let port = s.port;
    let mut psql = std::process::Command::new(pg_bin("psql"));
    psql.args([
        "-X",
        "-A",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        SCRAM_USER.0,
    ])
    .args(["-d", "pgbouncer", "-c", "SHOW POOLS"])
    .env("PGPASSWORD", SCRAM_USER.1);
    let (text, _) = crate::harness::run::run_ok(psql).await;
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
