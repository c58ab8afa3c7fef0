//! sluice: a PostgreSQL connection pooler.
//!
//! The path of a message: `app::run` accepts a connection and spawns a
//! `session`; `session::startup` reads the StartupMessage, `auth` checks the
//! client, `pool` checks out a server; `session::relay` moves frames split
//! by `protocol::frame` between the two, tracking the server's state in
//! `server::state`; when the client leaves, `session::cleanup` resets the
//! server and returns it to the pool, or discards it.

pub mod admin;
pub mod admission;
pub mod app;
pub mod auth;
pub mod cache;
pub mod clients;
pub mod config;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod metrics_http;
pub mod net;
pub mod pool;
pub mod protocol;
pub mod route;
pub mod server;
pub mod session;
pub mod signal;
pub mod sql;
pub mod stats;
pub mod takeover;

pub use error::Error;
