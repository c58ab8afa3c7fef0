//! Configuration: `pooler.toml` read by serde (`raw`), then checked and
//! converted into the typed `Config` the rest of sluice uses (`validate`).

pub mod cache;
pub mod peering;
mod raw;
mod routing;
mod suggest;
pub use routing::PrimaryFunctions;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::auth::secret::Secret;

pub use validate::Problem;

/// How long a client keeps its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    Session,
    Transaction,
    Statement,
}

impl PoolMode {
    /// The name used in the config file and the admin console.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Transaction => "transaction",
            Self::Statement => "statement",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "session" => Some(Self::Session),
            "transaction" => Some(Self::Transaction),
            "statement" => Some(Self::Statement),
            _ => None,
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    ScramSha256,
    Md5,
    Trust,
    /// A verified TLS client certificate whose common name is the user name.
    Cert,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub general: General,
    pub databases: BTreeMap<String, Database>,
    pub users: BTreeMap<String, User>,
    /// This instance among others: cancel requests and listening sockets.
    pub peering: peering::Peering,
}

#[derive(Debug, Clone)]
pub struct General {
    pub listen_addr: SocketAddr,
    pub pool_mode: PoolMode,
    pub default_pool_size: usize,
    pub min_pool_size: usize,
    pub max_client_conn: usize,
    /// Runtime worker threads (0: one per CPU). Read at start only.
    pub worker_threads: usize,
    pub query_wait_timeout: Duration,
    pub server_connect_timeout: Duration,
    pub server_reset_query: String,
    pub max_packet_size: usize,
    pub auth_type: AuthType,
    pub server_lifetime: Duration,
    pub server_idle_timeout: Duration,
    /// Zero durations below mean "no limit".
    pub client_idle_timeout: Duration,
    pub idle_transaction_timeout: Duration,
    pub query_timeout: Duration,
    /// Transaction pooling: refuse session-scoped features instead of pinning.
    pub reject_session_state: bool,
    /// Transaction pooling: calls of functions sluice does not know are
    /// trusted not to change session settings (no check after them).
    pub trust_functions: bool,
    /// Extra servers a pool may open once a client waited reserve_pool_timeout.
    pub reserve_pool_size: usize,
    pub reserve_pool_timeout: Duration,
    /// 0: unlimited.
    pub max_db_connections: usize,
    pub max_user_connections: usize,
    /// Transaction pooling: statements cached per server (0: no renaming).
    pub max_prepared_statements: usize,
    pub client_tls: ClientTls,
    pub server_tls: ServerTls,
    /// A client must finish startup and authentication within this.
    pub client_login_timeout: Duration,
    /// Failed logins from one address within auth_failure_window before it
    /// is refused (0: never).
    pub auth_failure_limit: u32,
    pub auth_failure_window: Duration,
    /// Addresses never throttled (NAT gateways, health checkers).
    pub auth_throttle_exempt: Vec<crate::net::cidr::Cidr>,
    /// Console logins by admin_users/stats_users allowed past
    /// max_client_conn, so an operator can always get in.
    pub admin_reserved_connections: usize,
    /// application_name pooled servers log in with ("": none), which a
    /// client that sends none sees too.
    pub default_application_name: String,
    /// Bytes of notifications one listening client may have waiting.
    pub max_notification_backlog: usize,
    /// Clients per user / per database (0: no limit).
    pub max_user_client_connections: usize,
    pub max_db_client_connections: usize,
    /// Rules from auth_hba_file, when set: they decide the auth method.
    pub hba: Option<std::sync::Arc<crate::auth::hba::Hba>>,
    /// Users not in [users] are looked up in PostgreSQL as this user.
    pub auth_user: Option<String>,
    pub auth_query: String,
    pub auth_query_ttl: Duration,
    /// New connections per second per user (0: no limit).
    pub max_user_connect_rate: u32,
    /// SIGTERM: how long to wait for clients to finish their transactions.
    pub shutdown_timeout: Duration,
    /// Where /metrics and /health are served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// A pooled client waiting this long for a server gets a NOTICE (0: never).
    pub query_wait_notify: Duration,
    /// May use every admin console command.
    pub admin_users: Vec<String>,
    /// May use the console's SHOW commands only.
    pub stats_users: Vec<String>,
    pub routing: Routing,
    /// The result cache's shared settings.
    pub cache: cache::CacheSettings,
}

/// Read/write routing settings (databases with replicas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// How often the monitor samples WAL positions.
    pub lsn_poll_interval: Duration,
    /// A replica further behind is out of rotation until it catches up.
    pub max_replica_lag: LagBound,
    /// How long a replica that failed stays out of rotation.
    pub replica_ban_time: Duration,
    /// A replica that leaves the monitor's poll unanswered this long is out
    /// of rotation, and reads waiting on it with nothing of their reply
    /// sent yet run on the primary.
    pub replica_read_timeout: Duration,
    pub load_balance: Balance,
    pub consistency: Consistency,
    /// Functions whose call sends a statement to the primary, beyond the built-in list.
    pub primary_functions: PrimaryFunctions,
    /// The [users] entry the monitor logs in as (default: the first with a password).
    pub monitor_user: Option<String>,
}

/// max_replica_lag: a duration ("5s") or an amount of WAL ("16MB").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagBound {
    Time(Duration),
    Bytes(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    /// The replica with the fewest checked-out servers.
    LeastOutstanding,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// A client reads its own writes (read-your-writes).
    Session,
    /// Only max_replica_lag bounds staleness.
    Eventual,
}

/// Where a database's checkouts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DbRoute {
    /// Transaction and statement pooling route each request; session
    /// pooling stays on the primary.
    #[default]
    Auto,
    /// Everything on the primary.
    Primary,
    /// Sessions go to a replica (for read-only users); transaction and
    /// statement pooling route as `Auto`.
    Replica,
}

/// TLS towards clients: whether sluice offers it, and whether it insists.
#[derive(Clone, Default)]
pub struct ClientTls {
    pub acceptor: Option<tokio_rustls::TlsAcceptor>,
    pub required: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientTls {{ enabled: {}, required: {} }}",
            self.acceptor.is_some(),
            self.required
        )
    }
}

/// TLS towards PostgreSQL.
#[derive(Clone)]
pub struct ServerTls {
    pub mode: crate::net::tls::ServerTlsMode,
    pub connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ServerTls {{ mode: {:?} }}", self.mode)
    }
}

/// A server address, kept as host name and port so DNS names work.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    pub primary: HostPort,
    pub replicas: Vec<HostPort>,
    /// The database name on the server.
    pub dbname: String,
    pub pool_size: Option<usize>,
    pub min_pool_size: Option<usize>,
    pub pool_mode: Option<PoolMode>,
    pub max_db_connections: Option<usize>,
    pub route: DbRoute,
    /// `[[databases.NAME.cache]]`: which reads sluice answers itself
    /// (none: the cache is off for this database).
    pub cache: Vec<cache::CacheRule>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub secret: Secret,
    pub server_user: Option<String>,
    pub server_password: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub max_user_connections: Option<usize>,
}

/// Never prints passwords, even at debug level.
impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("secret", &self.secret)
            .field("server_user", &self.server_user)
            .field(
                "server_password",
                &self.server_password.as_ref().map(|_| "<redacted>"),
            )
            .field("pool_mode", &self.pool_mode)
            .field("max_user_connections", &self.max_user_connections)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("{} problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(suggest::did_you_mean(&e.to_string())))?;
        validate::validate(raw).map_err(ConfigError::Invalid)
    }

    /// Pool size for `db`: its own override or the default.
    pub fn pool_size(&self, db: &Database) -> usize {
        db.pool_size.unwrap_or(self.general.default_pool_size)
    }

    pub fn min_pool_size(&self, db: &Database) -> usize {
        db.min_pool_size.unwrap_or(self.general.min_pool_size)
    }

    /// Server connections allowed to `db` across all its pools (0: no limit).
    pub fn max_db_connections(&self, db: &Database) -> usize {
        db.max_db_connections
            .unwrap_or(self.general.max_db_connections)
    }

    pub fn max_user_connections(&self, user: Option<&User>) -> usize {
        user.and_then(|u| u.max_user_connections)
            .unwrap_or(self.general.max_user_connections)
    }

    /// Pool mode for a (database, user) pair: user beats database beats general.
    pub fn pool_mode(&self, db: &Database, user: Option<&User>) -> PoolMode {
        user.and_then(|u| u.pool_mode)
            .or(db.pool_mode)
            .unwrap_or(self.general.pool_mode)
    }
}
