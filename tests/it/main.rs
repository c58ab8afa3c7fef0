//! Integration tests: real PostgreSQL (primary + streaming replica started
//! from the system binaries), sluice in-process, real clients.

mod harness;

mod auth;
mod bad_input;
mod cancel;
mod cli;
mod passthrough;
mod pooling;
mod tools;
