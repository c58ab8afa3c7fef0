//! Integration tests: real PostgreSQL (primary + streaming replica started
//! from the system binaries), sluice in-process, real clients.

#![allow(clippy::unwrap_used, clippy::err_expect)]

mod harness;

mod admin;
mod auth;
mod bad_input;
mod cache;
mod cache_stream;
mod cancel;
mod cli;
mod database_ddl;
mod faults;
mod hardening;
mod kubernetes;
mod limits;
mod listen;
mod metrics;
mod passthrough;
mod peers;
mod pooling;
mod prepared;
mod prometheus;
mod route_retry;
mod routing;
mod schema_change;
mod session_state;
mod systemd;
mod takeover;
mod tls;
mod tls_drivers;
mod tools;
mod txn_pooling;
