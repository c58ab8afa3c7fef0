//! The PostgreSQL v3 wire protocol, sans-IO: framing with length caps, tag
//! enums, startup packets, typed views of the messages sluice reads and
//! builders for the ones it writes.

pub mod build;
pub mod extended;
pub mod frame;
pub mod inspect;
pub mod sqlstate;
pub mod startup;
pub mod tags;
