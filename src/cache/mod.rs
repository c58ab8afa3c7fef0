//! The result cache (issue #27, in progress). Built so far: its source of
//! invalidations, the primary's committed changes read through logical
//! replication (`stream`) and decoded into the tables each transaction
//! changed (`wal`); and what may be cached (`reads`: a plain SELECT of
//! immutable functions, the tables it reads, the cache hints). Nothing is
//! cached yet: no store, no answering from it.

pub mod reads;
pub mod stream;
pub mod wal;
