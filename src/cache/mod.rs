//! The result cache (issue #27, in progress): what is built so far is its
//! source of invalidations, the primary's committed changes read through
//! logical replication (`stream`), decoded into the tables each
//! transaction changed (`wal`). Nothing is cached yet.

pub mod stream;
pub mod wal;
