//! Sockets: the stream type and buffered connection used outside the relay.

pub mod cidr;
pub mod conn;
pub mod stream;
pub mod tls;

pub use conn::Conn;
pub use stream::PgStream;
