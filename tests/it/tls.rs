//! TLS on both sides: clients to sluice (client_tls_*) and sluice to
//! PostgreSQL (server_tls_*), with certificates made in the test.

use std::sync::Arc;

use crate::harness::certs::certs;
use crate::harness::cluster::pg_bin;
use crate::harness::wire::startup_packet;
use crate::harness::{Cluster, DB, SCRAM_USER, Sluice, TLS_USER, Wire, config_for};

fn client_tls_general(mode: &str) -> String {
    let c = certs();
    format!(
        "client_tls_mode = \"{mode}\"\nclient_tls_cert = \"{}\"\nclient_tls_key = \"{}\"",
        c.cert.display(),
        c.key.display()
    )
}

fn rustls_connector(ca: &std::path::Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(cfg)
}

use rustls::pki_types::pem::PemObject;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_over_tls_and_plaintext_is_refused_when_required() {
    let s = Sluice::with(Cluster::shared(), &client_tls_general("require")).await;
    let url = format!("{} sslmode=require", s.url(SCRAM_USER.0, SCRAM_USER.1, DB));
    // tokio-postgres-rustls checks the chain and the name (127.0.0.1): verify-full.
    let (c, conn) = tokio_postgres::connect(&url, rustls_connector(&certs().ca))
        .await
        .expect("TLS login");
    tokio::spawn(conn);
    let v: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
    // A big result crosses many TLS records intact.
    let n: i64 = c.query_one("SELECT sum(length(x)) FROM (SELECT repeat('x', 1000) x FROM generate_series(1, 5000)) t", &[]).await.unwrap().get(0);
    assert_eq!(n, 5_000_000);

    let plain = format!("{} sslmode=disable", s.url(SCRAM_USER.0, SCRAM_USER.1, DB));
    let e = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .err()
        .expect("plaintext refused");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28000"));

    // psql with sslmode=verify-full against the test CA.
    let port = s.port;
    let ca = certs().ca.clone();
    let mut psql = std::process::Command::new(pg_bin("psql"));
    psql.arg(format!(
        "host=127.0.0.1 port={port} user={} dbname={DB} sslmode=verify-full sslrootcert={}",
        SCRAM_USER.0,
        ca.display()
    ))
    .args(["-X", "-A", "-t", "-c", "SELECT 'over tls'"])
    .env("PGPASSWORD", SCRAM_USER.1);
    let (out, _) = crate::harness::run::run_ok(psql).await;
    assert_eq!(out.trim(), "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_mode_serves_both_and_plaintext_after_sslrequest_is_refused() {
    let s = Sluice::with(Cluster::shared(), &client_tls_general("prefer")).await;
    let plain = format!("{} sslmode=disable", s.url(SCRAM_USER.0, SCRAM_USER.1, DB));
    let (c, conn) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .expect("plaintext allowed");
    tokio::spawn(conn);
    c.simple_query("SELECT 1").await.unwrap();
    // SSLRequest with a plaintext StartupMessage pipelined behind it
    // (CVE-2021-23214): refused, never read as if it came over TLS.
    let mut w = Wire::connect(s.port).await;
    let mut bytes = vec![0, 0, 0, 8, 4, 210, 22, 47];
    bytes.extend_from_slice(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]));
    w.send(&bytes).await;
    let m = w.recv().await.expect("an error, not 'S'");
    assert_eq!(m.tag, b'E');
    assert_eq!(m.field(b'C').as_deref(), Some("08P01"));
}

fn tls_user_config(server_tls: &str) -> String {
    config_for(
        Cluster::shared(),
        server_tls,
        &format!("[users.{}]\npassword = \"{}\"\n", TLS_USER.0, TLS_USER.1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_reaches_a_hostssl_only_server_with_verify_full() {
    let c = certs();
    let s = Sluice::start(&tls_user_config(&format!(
        "server_tls_mode = \"verify-full\"\nserver_tls_ca = \"{}\"",
        c.ca.display()
    )))
    .await;
    let client = s
        .connect(TLS_USER.0, TLS_USER.1, DB)
        .await
        .expect("login through TLS to the server");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the server connection is encrypted");

    // verify-ca checks the chain (not the name): the right CA passes.
    let s = Sluice::start(&tls_user_config(&format!(
        "server_tls_mode = \"verify-ca\"\nserver_tls_ca = \"{}\"",
        c.ca.display()
    )))
    .await;
    s.connect(TLS_USER.0, TLS_USER.1, DB)
        .await
        .expect("verify-ca login");
    // require encrypts without checking the certificate at all.
    let s = Sluice::start(&tls_user_config("server_tls_mode = \"require\"")).await;
    s.connect(TLS_USER.0, TLS_USER.1, DB)
        .await
        .expect("require login");

    // Without TLS, the hostssl-only role is refused by PostgreSQL itself.
    let s = Sluice::start(&tls_user_config("server_tls_mode = \"disable\"")).await;
    let e = s
        .connect(TLS_USER.0, TLS_USER.1, DB)
        .await
        .expect_err("hostnossl reject");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28000"));

    // A server certificate from another CA fails verification.
    let s = Sluice::start(&tls_user_config(&format!(
        "server_tls_mode = \"verify-full\"\nserver_tls_ca = \"{}\"",
        c.other_ca.display()
    )))
    .await;
    let e = s
        .connect(TLS_USER.0, TLS_USER.1, DB)
        .await
        .expect_err("untrusted server certificate");
    let db = e.as_db_error().expect("ErrorResponse");
    assert_eq!(db.code().code(), "28000");
    assert!(db.message().contains("TLS"), "{}", db.message());
}

#[test]
fn check_config_reports_tls_problems() {
    let bad = "[general]\nclient_tls_mode = \"require\"\nserver_tls_mode = \"verify-full\"\n[databases.app]\nprimary = \"127.0.0.1:5432\"\n";
    let Err(sluice::config::ConfigError::Invalid(p)) = sluice::config::Config::parse(bad) else {
        panic!("expected problems")
    };
    let joined = p
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(joined.contains("general.client_tls_cert"), "{joined}");
    assert!(joined.contains("general.server_tls_ca"), "{joined}");
}

/// A client config trusting the test CA.
fn client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&certs().ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS client that starts with a ClientHello (PostgreSQL 17's
/// `sslnegotiation=direct`), offering `alpn`.
async fn direct_tls(
    port: u16,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut cfg = client_config();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    handshake(tcp, cfg).await
}

async fn handshake(
    tcp: tokio::net::TcpStream,
    cfg: rustls::ClientConfig,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("direct TLS handshake")
}

/// Reads frames until one tagged `tag`; returns their tags.
async fn read_tags_until<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    tag: u8,
) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    loop {
        let mut h = [0u8; 5];
        if s.read_exact(&mut h).await.is_err() {
            return out;
        }
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        out.push((h[0], body));
        if h[0] == tag {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_postgresql() {
    use tokio::io::AsyncWriteExt;
    let s = Sluice::with(
        Cluster::shared(),
        &format!("{}\nauth_type = \"trust\"", client_tls_general("require")),
    )
    .await;
    let mut tls = direct_tls(s.port, &[b"postgresql"]).await;
    tls.write_all(&startup_packet(&[("user", SCRAM_USER.0), ("database", DB)]))
        .await
        .unwrap();
    let msgs = read_tags_until(&mut tls, b'Z').await;
    assert_eq!(msgs.first().map(|m| m.0), Some(b'R'));
    assert_eq!(
        msgs.last().map(|m| (m.0, m.1.clone())),
        Some((b'Z', b"I".to_vec()))
    );

    let mut no_alpn = direct_tls(s.port, &[]).await;
    let msgs = read_tags_until(&mut no_alpn, b'E').await;
    let err = msgs.last().expect("an error");
    assert_eq!(err.0, b'E');
    assert!(String::from_utf8_lossy(&err.1).contains("08P01"));
}

fn rustls_connector_with_cert(ca: &std::path::Path) -> tokio_postgres_rustls::MakeRustlsConnect {
    let c = certs();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(&c.client_cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&c.client_key).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    tokio_postgres_rustls::MakeRustlsConnect::new(cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_auth_matches_the_common_name_to_the_user() {
    let c = certs();
    let general = format!(
        "{}\nclient_tls_ca = \"{}\"\nauth_type = \"cert\"",
        client_tls_general("require"),
        c.ca.display()
    );
    let s = Sluice::with(Cluster::shared(), &general).await;
    // CN = sluice_scram: logs in as sluice_scram with no password at all.
    let url = format!(
        "host=127.0.0.1 port={} user={} dbname={DB} sslmode=require",
        s.port, SCRAM_USER.0
    );
    let (client, conn) = tokio_postgres::connect(&url, rustls_connector_with_cert(&c.ca))
        .await
        .expect("cert login");
    tokio::spawn(conn);
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, SCRAM_USER.0);
    // The same certificate does not let anyone log in as another user...
    let url = format!(
        "host=127.0.0.1 port={} user={} dbname={DB} sslmode=require",
        s.port,
        crate::harness::MD5_USER.0
    );
    let e = tokio_postgres::connect(&url, rustls_connector_with_cert(&c.ca))
        .await
        .err()
        .expect("CN mismatch");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28000"));
    // ...and without a certificate there is no login.
    let url = format!("{} sslmode=require", s.url(SCRAM_USER.0, SCRAM_USER.1, DB));
    let e = tokio_postgres::connect(&url, rustls_connector(&c.ca))
        .await
        .err()
        .expect("no certificate");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_certificates_and_keeps_clients() {
    let cluster = Cluster::shared();
    let s = Sluice::with(cluster, "").await;
    let plain = format!("{} sslmode=disable", s.url(SCRAM_USER.0, SCRAM_USER.1, DB));
    let (old, conn) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Reload with TLS required and a certificate: new plaintext logins are refused...
    let toml = config_for(cluster, &client_tls_general("require"), "");
    s.shared
        .as_ref()
        .unwrap()
        .reload(sluice::config::Config::parse(&toml).unwrap());
    let e = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
        .await
        .err()
        .expect("TLS now required");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("28000"));
    let url = format!("{} sslmode=require", s.url(SCRAM_USER.0, SCRAM_USER.1, DB));
    let (c, conn) = tokio_postgres::connect(&url, rustls_connector(&certs().ca))
        .await
        .expect("TLS login");
    tokio::spawn(conn);
    c.simple_query("SELECT 1").await.unwrap();
    // ...while the client connected before the reload carries on.
    old.simple_query("SELECT 1").await.unwrap();
}

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 48];

/// The FATAL PostgreSQL sends for an encryption request it already
/// negotiated (a startup packet of "protocol" 1234.5679 or 1234.5680).
fn assert_refused_request(msgs: &[(u8, Vec<u8>)], minor: &str) {
    let (tag, body) = msgs.last().expect("an error, not a hang");
    let text = String::from_utf8_lossy(body);
    assert_eq!(*tag, b'E', "{text}");
    assert!(text.contains("0A000"), "{text}");
    assert!(
        text.contains(&format!("unsupported frontend protocol 1234.{minor}")),
        "{text}"
    );
}

/// Each kind of encryption is negotiated once, as PostgreSQL's startup
/// code allows (GSS may still follow a refused SSLRequest, and the other
/// way round). Another request is refused at once with PostgreSQL's FATAL
/// 0A000. Before, an SSLRequest inside TLS was answered 'N' and the login
/// waited for a startup packet until its timeout; without TLS, 'N' again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_encryption_request_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Sluice::with(Cluster::shared(), &client_tls_general("prefer")).await;
    for (again, minor) in [(SSL_REQUEST, "5679"), (GSSENC_REQUEST, "5680")] {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        tcp.write_all(&SSL_REQUEST).await.unwrap();
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"S");
        let mut tls = handshake(tcp, client_config()).await;
        tls.write_all(&again).await.unwrap();
        let msgs = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_tags_until(&mut tls, b'E'),
        )
        .await
        .expect("refused at once, not at the login timeout");
        assert_refused_request(&msgs, minor);
    }

    let s = Sluice::with(Cluster::shared(), "").await;
    // Without TLS every request before the last is answered 'N'.
    let cases: [(&[[u8; 8]], &str); 3] = [
        (&[SSL_REQUEST, SSL_REQUEST], "5679"),
        (&[GSSENC_REQUEST, SSL_REQUEST, GSSENC_REQUEST], "5680"),
        (&[SSL_REQUEST, GSSENC_REQUEST, SSL_REQUEST], "5679"),
    ];
    for (requests, minor) in cases {
        let mut w = Wire::connect(s.port).await;
        let (last, first) = requests.split_last().unwrap();
        for r in first {
            w.send(r).await;
            let mut n = [0u8; 1];
            w.stream.read_exact(&mut n).await.unwrap();
            assert_eq!(&n, b"N");
        }
        w.send(last).await;
        let m = w.recv().await.expect("an error");
        assert_refused_request(&[(m.tag, m.body.clone())], minor);
        assert_eq!(m.field(b'V').as_deref(), Some("FATAL"));
    }
}
