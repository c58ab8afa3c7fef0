//! The file format, exactly as serde reads it. Durations and sizes stay
//! strings here so that `validate` can report every bad one at once.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub general: RawGeneral,
    #[serde(default)]
    pub databases: BTreeMap<String, RawDatabase>,
    #[serde(default)]
    pub users: BTreeMap<String, RawUser>,
    /// Other sluice instances by peer id, for cancel requests.
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawGeneral {
    pub listen_addr: String,
    pub pool_mode: String,
    pub default_pool_size: u32,
    pub min_pool_size: u32,
    pub max_client_conn: u32,
    /// Runtime worker threads; 0 means one per CPU.
    pub worker_threads: u32,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub query_wait_timeout: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub server_connect_timeout: String,
    pub server_reset_query: String,
    pub max_packet_size: String,
    pub auth_type: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub server_lifetime: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub server_idle_timeout: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub client_idle_timeout: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub idle_transaction_timeout: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub query_timeout: String,
    pub on_session_state: String,
    pub trust_functions: bool,
    pub reserve_pool_size: u32,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub reserve_pool_timeout: String,
    pub max_db_connections: u32,
    pub max_user_connections: u32,
    pub max_prepared_statements: u32,
    pub client_tls_mode: String,
    pub client_tls_cert: Option<String>,
    pub client_tls_key: Option<String>,
    pub client_tls_ca: Option<String>,
    pub server_tls_mode: String,
    pub server_tls_ca: Option<String>,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub client_login_timeout: String,
    pub auth_failure_limit: u32,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub auth_failure_window: String,
    pub auth_throttle_exempt: Vec<String>,
    pub admin_reserved_connections: u32,
    pub default_application_name: String,
    pub max_notification_backlog: String,
    pub cache_size: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub max_cache_lag: String,
    pub cache_publication: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub cache_settle: String,
    pub max_user_client_connections: u32,
    pub max_db_client_connections: u32,
    pub auth_hba_file: Option<String>,
    pub auth_user: Option<String>,
    pub auth_query: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub auth_query_ttl: String,
    pub max_user_connect_rate: u32,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub shutdown_timeout: String,
    pub metrics_addr: Option<String>,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub query_wait_notify: String,
    pub admin_users: Vec<String>,
    pub stats_users: Vec<String>,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub lsn_poll_interval: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub max_replica_lag: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub replica_ban_time: String,
    #[serde(deserialize_with = "super::units::seconds_or_text")]
    pub replica_read_timeout: String,
    pub load_balance: String,
    pub consistency: String,
    pub primary_functions: Vec<String>,
    pub replica_safe_functions: Vec<String>,
    pub monitor_user: Option<String>,
    pub peer_id: u32,
    pub peers_dns: Option<String>,
    pub peer_listen_addr: Option<String>,
    pub so_reuseport: bool,
    pub takeover_socket: Option<String>,
}

impl Default for RawGeneral {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:6432".into(),
            pool_mode: "session".into(),
            default_pool_size: 20,
            min_pool_size: 0,
            max_client_conn: 1000,
            worker_threads: 1,
            query_wait_timeout: "120s".into(),
            server_connect_timeout: "15s".into(),
            server_reset_query: "DISCARD ALL".into(),
            max_packet_size: "256MB".into(),
            auth_type: "scram-sha-256".into(),
            server_lifetime: "3600s".into(),
            server_idle_timeout: "600s".into(),
            client_idle_timeout: "0".into(),
            idle_transaction_timeout: "0".into(),
            query_timeout: "0".into(),
            on_session_state: "pin".into(),
            trust_functions: false,
            reserve_pool_size: 0,
            reserve_pool_timeout: "5s".into(),
            max_db_connections: 0,
            max_user_connections: 0,
            max_prepared_statements: 200,
            client_tls_mode: "disable".into(),
            client_tls_cert: None,
            client_tls_key: None,
            client_tls_ca: None,
            server_tls_mode: "prefer".into(),
            server_tls_ca: None,
            client_login_timeout: "60s".into(),
            auth_failure_limit: 20,
            auth_failure_window: "60s".into(),
            auth_throttle_exempt: Vec::new(),
            admin_reserved_connections: 5,
            default_application_name: String::new(),
            max_notification_backlog: "1MB".into(),
            cache_size: super::cache::DEFAULT_SIZE.into(),
            max_cache_lag: super::cache::DEFAULT_MAX_LAG.into(),
            cache_publication: super::cache::DEFAULT_PUBLICATION.into(),
            cache_settle: super::cache::DEFAULT_SETTLE.into(),
            max_user_client_connections: 0,
            max_db_client_connections: 0,
            auth_hba_file: None,
            auth_user: None,
            auth_query: "SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1"
                .into(),
            auth_query_ttl: "60s".into(),
            max_user_connect_rate: 0,
            shutdown_timeout: "30s".into(),
            metrics_addr: None,
            query_wait_notify: "0".into(),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
            lsn_poll_interval: "20ms".into(),
            max_replica_lag: "10s".into(),
            replica_ban_time: "5s".into(),
            replica_read_timeout: "1s".into(),
            load_balance: "round_robin".into(),
            consistency: "session".into(),
            primary_functions: Vec::new(),
            replica_safe_functions: Vec::new(),
            monitor_user: None,
            peer_id: 0,
            peers_dns: None,
            peer_listen_addr: None,
            so_reuseport: false,
            takeover_socket: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub primary: String,
    #[serde(default)]
    pub replicas: Vec<String>,
    pub dbname: Option<String>,
    pub pool_size: Option<u32>,
    pub min_pool_size: Option<u32>,
    pub pool_mode: Option<String>,
    pub max_db_connections: Option<u32>,
    pub route: Option<String>,
    #[serde(default)]
    pub cache: Vec<super::cache::RawCacheRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub password: Option<String>,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    pub pool_mode: Option<String>,
    pub max_user_connections: Option<u32>,
}
