//! One PostgreSQL connection: login, the state it is in, reset before reuse.

pub mod conn;
pub mod login;
pub mod state;

#[cfg(test)]
pub use conn::params_of;
pub use conn::{Params, ServerConn, set_param};
pub use login::{ServerPassword, ServerTarget};
pub use state::ServerState;
