//! A new sluice process takes over a running one without its clients
//! noticing: started with `--takeover`, it asks the running process (over
//! `takeover_socket`, a Unix socket only their user can open) for its
//! listening socket, then for each transaction-pooled client between
//! transactions, its TCP socket and the session state sluice keeps for it
//! (`Moved`). The old process hands clients over as they come to rest
//! (those mid-transaction after their transaction), serves the rest
//! (session pooling, pinned, TLS, listening) until they leave or
//! `shutdown_timeout`, and exits.
//!
//! On the socket, old to new: messages `kind, length (u32), payload`, a
//! file descriptor with each `L` (the listener) and `C` (a client), then
//! `D` when nothing more will come.

mod fdmsg;
pub mod give;
pub mod moved;
pub mod take;

/// The new process's request.
pub const HELLO: &[u8; 4] = b"TAKE";
