//! The result cache (issue #27, in progress). Built so far: its source of
//! invalidations, the primary's committed changes read through logical
//! replication (`stream`) and decoded into the tables each transaction
//! changed (`wal`); what may be cached (`reads`: a plain SELECT of
//! immutable functions, the tables it reads, the cache hints); and the
//! store of results with its never-stale rules (`store`). Nothing is cached
//! yet: the session neither records nor answers from it.

pub mod live;
pub mod reads;
pub mod rules;
pub mod store;
pub mod stream;
pub mod wal;
