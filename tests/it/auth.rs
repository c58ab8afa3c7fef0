//! Client authentication (SCRAM, md5, trust) and sluice's own login to
//! PostgreSQL (SCRAM, md5, cleartext, trust).

use crate::harness::{
    Cluster, DB, MD5_USER, PLAIN_USER, SCRAM_USER, Sluice, TRUST_USER, config_for,
};

async fn current_user(s: &Sluice, user: &str, password: &str) -> String {
    let c = s
        .connect(user, password, DB)
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"));
    c.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_auth_method_works_behind_client_scram() {
    let s = Sluice::with(Cluster::shared(), "").await;
    for (user, pw) in [SCRAM_USER, MD5_USER, PLAIN_USER, (TRUST_USER, "any")] {
        assert_eq!(current_user(&s, user, pw).await, user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_client_auth_from_plaintext_and_from_stored_hash() {
    let cluster = Cluster::shared();
    let s = Sluice::with(cluster, "auth_type = \"md5\"").await;
    assert_eq!(
        current_user(&s, SCRAM_USER.0, SCRAM_USER.1).await,
        SCRAM_USER.0
    );
    // A user configured with only its md5 hash, logging in to an md5 server.
    let hash = cluster.primary.rolpassword(MD5_USER.0);
    assert!(hash.starts_with("md5"), "{hash}");
    let toml = config_for(cluster, "auth_type = \"md5\"", "").replace(
        &format!("password = \"{}\"", MD5_USER.1),
        &format!("password = \"{hash}\""),
    );
    let s = Sluice::start(&toml).await;
    assert_eq!(current_user(&s, MD5_USER.0, MD5_USER.1).await, MD5_USER.0);
    let e = s
        .connect(MD5_USER.0, "wrong", DB)
        .await
        .err()
        .expect("wrong md5 password");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_verifier_from_pg_authid_authenticates_clients() {
    let cluster = Cluster::shared();
    let verifier = cluster.primary.rolpassword(SCRAM_USER.0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let toml = config_for(cluster, "", "").replace(
        &format!("password = \"{}\"", SCRAM_USER.1),
        &format!(
            "password = \"{verifier}\"\nserver_password = \"{}\"",
            SCRAM_USER.1
        ),
    );
    let s = Sluice::start(&toml).await;
    assert_eq!(
        current_user(&s, SCRAM_USER.0, SCRAM_USER.1).await,
        SCRAM_USER.0
    );
    let e = s
        .connect(SCRAM_USER.0, "nope", DB)
        .await
        .err()
        .expect("wrong password");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_look_the_same() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let wrong = s
        .connect(SCRAM_USER.0, "bad", DB)
        .await
        .err()
        .expect("wrong password must fail");
    let wrong = wrong.as_db_error().expect("ErrorResponse");
    assert_eq!(wrong.code().code(), "28P01");
    assert_eq!(wrong.severity(), "FATAL");
    assert_eq!(
        wrong.message(),
        format!(
            "password authentication failed for user \"{}\"",
            SCRAM_USER.0
        )
    );
    let unknown = s
        .connect("nobody", "bad", DB)
        .await
        .err()
        .expect("unknown user must fail");
    let unknown = unknown.as_db_error().expect("ErrorResponse");
    assert_eq!(unknown.code().code(), "28P01");
    assert_eq!(
        unknown.message(),
        "password authentication failed for user \"nobody\""
    );

    let s = Sluice::with(Cluster::shared(), "auth_type = \"md5\"").await;
    let e = s
        .connect(SCRAM_USER.0, "bad", DB)
        .await
        .err()
        .expect("wrong md5 password must fail");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
    let e = s
        .connect("nobody", "bad", DB)
        .await
        .err()
        .expect("unknown md5 user must fail");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_lets_configured_users_in_without_a_password() {
    let s = Sluice::with(Cluster::shared(), "auth_type = \"trust\"").await;
    assert_eq!(
        current_user(&s, SCRAM_USER.0, "whatever").await,
        SCRAM_USER.0
    );
    let e = s
        .connect("nobody", "x", DB)
        .await
        .err()
        .expect("unknown user");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_3d000() {
    let s = Sluice::with(Cluster::shared(), "").await;
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, "nope")
        .await
        .err()
        .expect("unknown db");
    let e = e.as_db_error().expect("ErrorResponse");
    assert_eq!(e.code().code(), "3D000");
    assert_eq!(e.message(), "database \"nope\" does not exist");
    // Configured in sluice but missing on the server: PostgreSQL's own error.
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, "missing_on_server")
        .await
        .err()
        .expect("missing on server");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("3D000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_pass_through_needs_no_plaintext_password() {
    let cluster = Cluster::shared();
    let verifier = cluster.primary.rolpassword(SCRAM_USER.0);
    // Only the verifier PostgreSQL stores: no plaintext anywhere in the config.
    let toml = config_for(cluster, "pool_mode = \"transaction\"", "").replace(
        &format!("password = \"{}\"", SCRAM_USER.1),
        &format!("password = \"{verifier}\""),
    );
    assert!(!toml.contains(SCRAM_USER.1));
    let s = Sluice::start(&toml).await;
    // Several clients, so sluice opens more than one server connection with the learnt key.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = s
            .connect(SCRAM_USER.0, SCRAM_USER.1, DB)
            .await
            .expect("pass-through login");
        c.batch_execute("BEGIN").await.unwrap();
        clients.push(c);
    }
    for c in &clients {
        assert_eq!(
            c.query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get::<_, String>(0),
            SCRAM_USER.0
        );
        c.batch_execute("COMMIT").await.unwrap();
    }
    let e = s
        .connect(SCRAM_USER.0, "wrong", DB)
        .await
        .err()
        .expect("wrong password");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_throttled_per_address() {
    use crate::harness::Wire;
    let s = Sluice::with(
        Cluster::shared(),
        "auth_failure_limit = 3\nauth_failure_window = \"60s\"",
    )
    .await;
    for _ in 0..3 {
        let (_, msgs) = Wire::connect_from("127.0.0.2", s.port)
            .await
            .login_as(SCRAM_USER.0, "guess", DB, &[])
            .await;
        assert_eq!(msgs[0].field(b'C').as_deref(), Some("28P01"));
    }
    // Now even the right password from that address is refused, before any
    // exchange and without reaching PostgreSQL...
    let mut w = Wire::connect_from("127.0.0.2", s.port).await;
    w.send(&crate::harness::wire::startup_packet(&[
        ("user", SCRAM_USER.0),
        ("database", DB),
    ]))
    .await;
    let m = w.recv().await.expect("an error");
    assert_eq!(m.field(b'C').as_deref(), Some("28000"));
    assert!(
        m.field(b'M')
            .unwrap_or_default()
            .contains("too many failed login attempts")
    );
    // ...while clients from other addresses still get in.
    assert_eq!(
        current_user(&s, SCRAM_USER.0, SCRAM_USER.1).await,
        SCRAM_USER.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_caps_per_user_and_per_database() {
    let s = Sluice::with(
        Cluster::shared(),
        "max_user_client_connections = 1\nmax_db_client_connections = 2",
    )
    .await;
    let a = s.connect(SCRAM_USER.0, SCRAM_USER.1, DB).await.unwrap();
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, DB)
        .await
        .err()
        .expect("user cap");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("53300"));
    let _b = s.connect(MD5_USER.0, MD5_USER.1, DB).await.unwrap();
    let e = s
        .connect(PLAIN_USER.0, PLAIN_USER.1, DB)
        .await
        .err()
        .expect("database cap");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("max_db_client_connections"),
        "{}",
        db.message()
    );
    drop(a);
    crate::harness::wait_until(10, "the user's place to free up", || async {
        s.connect(SCRAM_USER.0, SCRAM_USER.1, DB).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hba_rules_pick_the_method_or_refuse() {
    use crate::harness::Wire;
    let dir = std::env::temp_dir().join(format!("sluice-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba = dir.join(format!("hba-{}.conf", crate::harness::cluster::free_port()));
    std::fs::write(
        &hba,
        format!(
            "host all {t} 127.0.0.1/32 trust\n\
             host all {m} all reject\n\
             host all all 127.0.0.2/32 reject\n\
             host {DB} all 127.0.0.0/8 scram-sha-256\n",
            t = TRUST_USER,
            m = MD5_USER.0
        ),
    )
    .unwrap();
    let s = Sluice::with(
        Cluster::shared(),
        &format!("auth_hba_file = \"{}\"", hba.display()),
    )
    .await;
    // trust: any password will do.
    assert_eq!(current_user(&s, TRUST_USER, "wrong").await, TRUST_USER);
    // reject by user.
    let e = s
        .connect(MD5_USER.0, MD5_USER.1, DB)
        .await
        .err()
        .expect("rejected user");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("rejects"), "{}", db.message());
    // reject by address, before any password exchange.
    let mut w = Wire::connect_from("127.0.0.2", s.port).await;
    w.send(&crate::harness::wire::startup_packet(&[
        ("user", SCRAM_USER.0),
        ("database", DB),
    ]))
    .await;
    assert_eq!(
        w.recv().await.and_then(|m| m.field(b'C')).as_deref(),
        Some("28000")
    );
    // scram for the rest of app; no line for another database.
    assert_eq!(
        current_user(&s, SCRAM_USER.0, SCRAM_USER.1).await,
        SCRAM_USER.0
    );
    let e = s
        .connect(SCRAM_USER.0, SCRAM_USER.1, "missing_on_server")
        .await
        .err()
        .expect("no entry");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "28000");
    assert!(
        db.message().contains("no auth_hba_file entry"),
        "{}",
        db.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_finds_users_created_after_start() {
    let cluster = Cluster::shared();
    // No failed-login throttle: the retries below fail fast until the
    // cached miss expires, and must not lock the address out first.
    let s = Sluice::with(
        cluster,
        &format!(
            "auth_user = \"{}\"\nauth_query_ttl = \"1s\"\nauth_failure_limit = 0",
            SCRAM_USER.0
        ),
    )
    .await;
    let name = format!("late_{}", crate::harness::cluster::free_port());
    // Unknown to PostgreSQL and to sluice: the usual 28P01.
    let e = s
        .connect(&name, "late_pw", DB)
        .await
        .err()
        .expect("unknown user");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
    // Created in SQL after sluice started (the TTL lets the miss expire).
    cluster.primary.psql(
        "postgres",
        &format!("CREATE ROLE {name} LOGIN PASSWORD 'late_pw'"),
    );
    crate::harness::wait_until(15, "the new user to be found", || async {
        {
            let r = s.connect(&name, "late_pw", DB).await;
            if let Err(e) = &r {
                eprintln!("DBG {e:?}");
            }
            r.is_ok()
        }
    })
    .await;
    // Its SCRAM verifier authenticates it, and pass-through logs sluice in as it.
    assert_eq!(current_user(&s, &name, "late_pw").await, name);
    let e = s
        .connect(&name, "wrong", DB)
        .await
        .err()
        .expect("wrong password");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_per_user_are_rate_limited() {
    let s = Sluice::with(Cluster::shared(), "max_user_connect_rate = 3").await;
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = s.connect(MD5_USER.0, MD5_USER.1, DB).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a burst over the rate is refused");
    let db = e.as_db_error().unwrap();
    assert_eq!(db.code().code(), "53300");
    assert!(
        db.message().contains("max_user_connect_rate"),
        "{}",
        db.message()
    );
    // Other users are not affected.
    assert_eq!(
        current_user(&s, SCRAM_USER.0, SCRAM_USER.1).await,
        SCRAM_USER.0
    );
}
