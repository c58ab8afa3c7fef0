//! Client authentication (SCRAM-SHA-256, md5, trust) and the secrets it uses.

pub mod client;
pub mod hba;
pub mod md5;
pub mod query;
pub mod scram;
pub mod secret;
