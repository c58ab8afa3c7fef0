//! Counters every session updates; the admin console and /metrics read them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Transaction-pooled clients currently pinned to their server.
    pinned_clients: AtomicI64,
    /// Times a client became pinned.
    pins_total: AtomicU64,
    /// Statements prepared on a server on a client's behalf (transaction pooling).
    reprepares_total: AtomicU64,
    /// Statements closed to keep a server within max_prepared_statements.
    evictions_total: AtomicU64,
    /// DROP/CREATE ... TEMPLATE/ALTER ... RENAME DATABASE statements
    /// before which sluice closed its idle servers to the database.
    database_clears_total: AtomicU64,
}

impl Stats {
    pub fn pinned(&self) {
        self.pinned_clients.fetch_add(1, Ordering::Relaxed);
        self.pins_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn unpinned(&self) {
        self.pinned_clients.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn prepared(&self, reprepares: u64, evictions: u64) {
        if reprepares > 0 {
            self.reprepares_total
                .fetch_add(reprepares, Ordering::Relaxed);
        }
        if evictions > 0 {
            self.evictions_total.fetch_add(evictions, Ordering::Relaxed);
        }
    }

    pub fn database_cleared(&self) {
        self.database_clears_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn database_clears_total(&self) -> u64 {
        self.database_clears_total.load(Ordering::Relaxed)
    }

    pub fn reprepares_total(&self) -> u64 {
        self.reprepares_total.load(Ordering::Relaxed)
    }

    pub fn evictions_total(&self) -> u64 {
        self.evictions_total.load(Ordering::Relaxed)
    }

    pub fn pinned_clients(&self) -> i64 {
        self.pinned_clients.load(Ordering::Relaxed)
    }

    pub fn pins_total(&self) -> u64 {
        self.pins_total.load(Ordering::Relaxed)
    }
}
