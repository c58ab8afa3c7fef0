pub mod certs;
pub mod cluster;
pub mod drivers;
pub mod run;
pub mod sluice;
pub mod sql;
pub mod wire;

pub use cluster::{Cluster, DB, MD5_USER, PLAIN_USER, SCRAM_USER, TLS_USER, TRUST_USER};
pub use sluice::{AppSetting, Sluice, config_for, pooled, wait_until};
pub use wire::Wire;
