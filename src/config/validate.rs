//! Turns a `RawConfig` into a `Config`, collecting every problem with its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::raw::{RawConfig, RawDatabase, RawGeneral, RawUser};
use super::units::{parse_duration, parse_size};
use super::{AuthType, Config, Database, General, HostPort, PoolMode, User};
use crate::auth::secret::Secret;
use crate::net::cidr::Cidr;

/// One thing wrong with the file, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn check<T>(&mut self, key: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|m| self.add(key, m)).ok()
    }
}

pub fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::default();
    let general = general(&raw.general, &mut p);
    let peering = super::peering::peering(&raw.general, &raw.peers, &mut |k, m| p.add(k, m));
    let databases: BTreeMap<String, Database> = raw
        .databases
        .iter()
        .filter_map(|(name, d)| Some((name.clone(), database(name, d, &mut p)?)))
        .collect();
    let users: BTreeMap<String, User> = raw
        .users
        .iter()
        .filter_map(|(name, u)| Some((name.clone(), user(name, u, &mut p)?)))
        .collect();
    if let Some(au) = &raw.general.auth_user
        && !raw.users.contains_key(au)
    {
        p.add(
            "general.auth_user",
            format!("\"{au}\" is not a [users.{au}] entry"),
        );
    }
    if let Some(mu) = &raw.general.monitor_user
        && !raw.users.contains_key(mu)
    {
        p.add(
            "general.monitor_user",
            format!("\"{mu}\" is not a [users.{mu}] entry"),
        );
    }
    if raw.databases.is_empty() {
        p.add(
            "databases",
            "at least one [databases.NAME] section is required",
        );
    }
    match (general, peering) {
        (Some(general), Some(peering)) if p.0.is_empty() => Ok(Config {
            general,
            databases,
            users,
            peering,
        }),
        _ => Err(p.0),
    }
}

fn pool_mode(key: &str, s: &str, p: &mut Problems) -> Option<PoolMode> {
    match PoolMode::parse(s) {
        Some(m) => Some(m),
        None => {
            p.add(
                key,
                format!("unknown pool mode \"{s}\" (expected session, transaction or statement)"),
            );
            None
        }
    }
}

fn duration(key: &str, s: &str, p: &mut Problems) -> Option<Duration> {
    p.check(&format!("general.{key}"), parse_duration(s))
}

/// A list of addresses or ranges (`10.0.0.0/8`, `192.0.2.7`, `::1`).
fn addresses(key: &str, list: &[String], p: &mut Problems) -> Option<Vec<Cidr>> {
    let parsed: Vec<_> = list
        .iter()
        .map(|a| {
            p.check(
                key,
                a.parse::<Cidr>()
                    .map_err(|()| format!("\"{a}\" is not an address or an address/prefix range")),
            )
        })
        .collect();
    parsed.into_iter().collect()
}

fn general(g: &RawGeneral, p: &mut Problems) -> Option<General> {
    let listen_addr = p.check(
        "general.listen_addr",
        g.listen_addr
            .parse::<SocketAddr>()
            .map_err(|e| format!("\"{}\" is not an address:port ({e})", g.listen_addr)),
    );
    let auth_type = auth_type(g, p);
    let metrics_addr = metrics_addr(g, p);
    let max_packet_size = p.check("general.max_packet_size", parse_size(&g.max_packet_size));
    let max_notification_backlog = p.check(
        "general.max_notification_backlog",
        parse_size(&g.max_notification_backlog),
    );
    if max_packet_size.is_some_and(|m| !(1024..=i32::MAX as usize).contains(&m)) {
        p.add("general.max_packet_size", "must be between 1kB and 2GB");
    }
    bounds(g, p);
    // Evaluate every field before combining, so each problem is reported.
    let mode = pool_mode("general.pool_mode", &g.pool_mode, p);
    let query_wait_timeout = duration("query_wait_timeout", &g.query_wait_timeout, p);
    let server_connect_timeout = duration("server_connect_timeout", &g.server_connect_timeout, p);
    let server_lifetime = duration("server_lifetime", &g.server_lifetime, p);
    let server_idle_timeout = duration("server_idle_timeout", &g.server_idle_timeout, p);
    let client_idle_timeout = duration("client_idle_timeout", &g.client_idle_timeout, p);
    let idle_transaction_timeout =
        duration("idle_transaction_timeout", &g.idle_transaction_timeout, p);
    let query_timeout = duration("query_timeout", &g.query_timeout, p);
    let client_tls = client_tls(g, p);
    let server_tls = server_tls(g, p);
    let auth_failure_window = duration("auth_failure_window", &g.auth_failure_window, p);
    let auth_throttle_exempt =
        addresses("general.auth_throttle_exempt", &g.auth_throttle_exempt, p);
    let hba = hba(g, p);
    let query_wait_notify = duration("query_wait_notify", &g.query_wait_notify, p);
    let shutdown_timeout = duration("shutdown_timeout", &g.shutdown_timeout, p);
    let auth_query_ttl = duration("auth_query_ttl", &g.auth_query_ttl, p);
    let client_login_timeout = duration("client_login_timeout", &g.client_login_timeout, p);
    let reserve_pool_timeout = duration("reserve_pool_timeout", &g.reserve_pool_timeout, p);
    let reject_session_state = on_session_state(g, p);
    let routing = super::routing::routing(g, &mut |k, m| p.add(k, m));
    let cache = cache(g, p);
    Some(General {
        routing: routing?,
        cache: cache?,
        pool_mode: mode?,
        query_wait_timeout: query_wait_timeout?,
        server_connect_timeout: server_connect_timeout?,
        server_lifetime: server_lifetime?,
        server_idle_timeout: server_idle_timeout?,
        client_idle_timeout: client_idle_timeout?,
        idle_transaction_timeout: idle_transaction_timeout?,
        query_timeout: query_timeout?,
        reject_session_state: reject_session_state?,
        trust_functions: g.trust_functions,
        reserve_pool_size: g.reserve_pool_size as usize,
        reserve_pool_timeout: reserve_pool_timeout?,
        max_db_connections: g.max_db_connections as usize,
        max_user_connections: g.max_user_connections as usize,
        max_prepared_statements: g.max_prepared_statements as usize,
        client_tls: client_tls?,
        client_login_timeout: client_login_timeout?,
        auth_failure_limit: g.auth_failure_limit,
        auth_failure_window: auth_failure_window?,
        auth_throttle_exempt: auth_throttle_exempt?,
        admin_reserved_connections: g.admin_reserved_connections as usize,
        default_application_name: g.default_application_name.clone(),
        max_notification_backlog: max_notification_backlog?,
        max_user_client_connections: g.max_user_client_connections as usize,
        max_db_client_connections: g.max_db_client_connections as usize,
        hba: hba?,
        auth_user: g.auth_user.clone(),
        auth_query: g.auth_query.clone(),
        auth_query_ttl: auth_query_ttl?,
        max_user_connect_rate: g.max_user_connect_rate,
        shutdown_timeout: shutdown_timeout?,
        metrics_addr: metrics_addr?,
        query_wait_notify: query_wait_notify?,
        admin_users: g.admin_users.clone(),
        stats_users: g.stats_users.clone(),
        server_tls: server_tls?,
        listen_addr: listen_addr?,
        default_pool_size: g.default_pool_size as usize,
        min_pool_size: g.min_pool_size as usize,
        max_client_conn: g.max_client_conn as usize,
        worker_threads: g.worker_threads as usize,
        server_reset_query: g.server_reset_query.trim().to_string(),
        max_packet_size: max_packet_size?,
        auth_type: auth_type?,
    })
}

fn metrics_addr(g: &RawGeneral, p: &mut Problems) -> Option<Option<SocketAddr>> {
    let Some(a) = &g.metrics_addr else {
        return Some(None);
    };
    p.check(
        "general.metrics_addr",
        a.parse::<SocketAddr>()
            .map_err(|e| format!("\"{a}\" is not an address:port ({e})")),
    )
    .map(Some)
}

fn cache(g: &RawGeneral, p: &mut Problems) -> Option<super::cache::CacheSettings> {
    super::cache::settings(
        &g.cache_size,
        &g.max_cache_lag,
        &g.cache_publication,
        &g.cache_settle,
        &mut |k, m| p.add(k, m),
    )
}

/// Numbers and texts of [general] that have bounds of their own.
fn bounds(g: &RawGeneral, p: &mut Problems) {
    if g.default_pool_size == 0 {
        p.add("general.default_pool_size", "must be at least 1");
    }
    if g.min_pool_size > g.default_pool_size {
        p.add("general.min_pool_size", "must not exceed default_pool_size");
    }
    if g.max_client_conn == 0 {
        p.add("general.max_client_conn", "must be at least 1");
    }
    if g.server_reset_query.contains(';') {
        p.add("general.server_reset_query", "must be a single statement");
    }
}

fn auth_type(g: &RawGeneral, p: &mut Problems) -> Option<AuthType> {
    match g.auth_type.as_str() {
        "scram-sha-256" => Some(AuthType::ScramSha256),
        "md5" => Some(AuthType::Md5),
        "trust" => Some(AuthType::Trust),
        "cert" => Some(AuthType::Cert),
        other => {
            let msg = format!(
                "unknown auth type \"{other}\" (expected scram-sha-256, md5, cert or trust)"
            );
            p.add("general.auth_type", msg);
            None
        }
    }
}

fn on_session_state(g: &RawGeneral, p: &mut Problems) -> Option<bool> {
    match g.on_session_state.as_str() {
        "pin" => Some(false),
        "error" => Some(true),
        other => {
            p.add(
                "general.on_session_state",
                format!("unknown value \"{other}\" (expected pin or error)"),
            );
            None
        }
    }
}

fn hba(g: &RawGeneral, p: &mut Problems) -> Option<Option<std::sync::Arc<crate::auth::hba::Hba>>> {
    let Some(path) = &g.auth_hba_file else {
        return Some(None);
    };
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {path}: {e}"))
        .and_then(|t| crate::auth::hba::Hba::parse(&t).map_err(|e| format!("{path}: {e}")));
    p.check("general.auth_hba_file", parsed)
        .map(|h| Some(std::sync::Arc::new(h)))
}

fn client_tls(g: &RawGeneral, p: &mut Problems) -> Option<super::ClientTls> {
    let (offer, required) = match g.client_tls_mode.as_str() {
        "disable" => (false, false),
        "allow" | "prefer" => (true, false),
        "require" => (true, true),
        other => {
            p.add(
                "general.client_tls_mode",
                format!("unknown mode \"{other}\" (expected disable, allow, prefer or require)"),
            );
            return None;
        }
    };
    if !offer {
        return Some(super::ClientTls::default());
    }
    let (Some(cert), Some(key)) = (&g.client_tls_cert, &g.client_tls_key) else {
        p.add(
            "general.client_tls_cert",
            "client_tls_cert and client_tls_key are required unless client_tls_mode = \"disable\"",
        );
        return None;
    };
    let acceptor = p.check(
        "general.client_tls_cert",
        crate::net::tls::acceptor(
            cert.as_ref(),
            key.as_ref(),
            g.client_tls_ca.as_deref().map(std::path::Path::new),
        ),
    )?;
    Some(super::ClientTls {
        acceptor: Some(acceptor),
        required,
    })
}

fn server_tls(g: &RawGeneral, p: &mut Problems) -> Option<super::ServerTls> {
    let Some(mode) = crate::net::tls::ServerTlsMode::parse(&g.server_tls_mode) else {
        p.add(
            "general.server_tls_mode",
            format!(
                "unknown mode \"{}\" (expected disable, prefer, require, verify-ca or verify-full)",
                g.server_tls_mode
            ),
        );
        return None;
    };
    let ca = g.server_tls_ca.as_deref().map(std::path::Path::new);
    let connector = p.check(
        "general.server_tls_ca",
        crate::net::tls::connector(mode, ca),
    )?;
    Some(super::ServerTls { mode, connector })
}

pub(super) fn host_port(s: &str) -> Result<HostPort, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{s}\" must be host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("\"{s}\" has an empty host"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("\"{s}\" has an invalid port"))?;
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

fn database(name: &str, d: &RawDatabase, p: &mut Problems) -> Option<Database> {
    let key = format!("databases.{name}");
    let primary = p.check(&format!("{key}.primary"), host_port(&d.primary));
    let replicas: Vec<HostPort> = d
        .replicas
        .iter()
        .enumerate()
        .filter_map(|(i, r)| p.check(&format!("{key}.replicas[{i}]"), host_port(r)))
        .collect();
    if d.pool_size == Some(0) {
        p.add(format!("{key}.pool_size"), "must be at least 1");
    }
    if let (Some(min), Some(max)) = (d.min_pool_size, d.pool_size)
        && min > max
    {
        p.add(format!("{key}.min_pool_size"), "must not exceed pool_size");
    }
    let mode = match &d.pool_mode {
        Some(m) => Some(pool_mode(&format!("{key}.pool_mode"), m, p)?),
        None => None,
    };
    Some(Database {
        primary: primary?,
        replicas,
        dbname: d.dbname.clone().unwrap_or_else(|| name.to_string()),
        pool_size: d.pool_size.map(|n| n as usize),
        min_pool_size: d.min_pool_size.map(|n| n as usize),
        pool_mode: mode,
        max_db_connections: d.max_db_connections.map(|n| n as usize),
        route: super::routing::db_route(&key, d.route.as_deref(), &mut |k, m| p.add(k, m))?,
        cache: super::cache::rules(&key, &d.cache, &mut |k, m| p.add(k, m))?,
    })
}

fn user(name: &str, u: &RawUser, p: &mut Problems) -> Option<User> {
    let key = format!("users.{name}");
    let secret = match &u.password {
        None => Secret::None,
        Some(pw) => p.check(&format!("{key}.password"), Secret::parse(name, pw))?,
    };
    let mode = match &u.pool_mode {
        Some(m) => Some(pool_mode(&format!("{key}.pool_mode"), m, p)?),
        None => None,
    };
    Some(User {
        secret,
        server_user: u.server_user.clone(),
        server_password: u.server_password.clone(),
        pool_mode: mode,
        max_user_connections: u.max_user_connections.map(|n| n as usize),
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text) {
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse("[databases.app]\nprimary = \"127.0.0.1:5432\"\n").unwrap();
        assert_eq!(c.general.default_pool_size, 20);
        assert_eq!(c.databases["app"].dbname, "app");
        assert_eq!(c.general.max_packet_size, 256 << 20);
        assert_eq!(c.general.worker_threads, 1, "one runtime thread");
        let per_cpu = Config::parse(
            "[general]\nworker_threads = 0\n[databases.app]\nprimary = \"127.0.0.1:5432\"\n",
        )
        .unwrap();
        assert_eq!(per_cpu.general.worker_threads, 0);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let p = problems(
            "[general]\nquery_wait_timeout = \"30x\"\nmax_packet_size = \"1TB\"\npool_mode = \"bogus\"\nauth_user = \"ghost\"\n\
             [databases.app]\nprimary = \"nohost\"\n[users.u]\npassword = \"SCRAM-SHA-256$bad\"\n",
        );
        let joined = p.join("\n");
        for key in [
            "general.query_wait_timeout",
            "general.max_packet_size",
            "general.pool_mode",
            "databases.app.primary",
            "users.u.password",
            "general.auth_user",
        ] {
            assert!(joined.contains(key), "{key} missing from:\n{joined}");
        }
    }

    #[test]
    fn debug_output_never_shows_passwords() {
        let c = Config::parse(
            "[databases.app]\nprimary = \"h:1\"\n[users.u]\npassword = \"p1-secret\"\nserver_password = \"p2-secret\"\n",
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("p1-secret") && !d.contains("p2-secret"), "{d}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let Err(ConfigError::Syntax(s)) = Config::parse("[general]\nlisten_adr = \"x\"\n") else {
            panic!("expected a syntax error")
        };
        assert!(s.contains("listen_adr"), "{s}");
    }
}
