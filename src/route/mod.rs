//! Read/write routing: which server a transaction-pooled request goes to.
//!
//! `classify` says where a statement may run (pure, cached here by text);
//! `replicas` holds what the `monitor` learns about each replica (replay
//! LSN, lag, health); `decide` picks primary or a replica for one checkout
//! from those facts and the client's read-your-writes needs.

pub mod classify;
pub mod decide;
pub mod monitor;
pub mod replicas;

#[cfg(test)]
mod corpus;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use classify::{Class, Hint, PrimaryFunctions, Reason, Route, TxnEffect};
pub use decide::{Decision, Need, SessionRoute, Target};
pub use replicas::Topology;

use crate::config::Config;

/// `classify` behind a bounded cache keyed by the statement text, so a
/// repeated or prepared statement is parsed once; and the statements a
/// replica refused (`learn_primary`), which go to the primary whatever
/// their text says.
pub struct Classifier {
    cache: quick_cache::sync::Cache<String, Class, TextWeight>,
    /// Kept apart from `cache`, so that its churn does not forget them
    /// (one more lookup, on a cache miss only).
    learned: quick_cache::sync::Cache<String, (), TextWeight>,
    extra: PrimaryFunctions,
}

#[derive(Clone)]
struct TextWeight;

impl<V> quick_cache::Weighter<String, V> for TextWeight {
    fn weight(&self, key: &String, _: &V) -> u64 {
        key.len() as u64 + 64
    }
}

/// Bytes of statement text the cache keeps.
const CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// Bytes of statement text kept as primary-only (`learn_primary`).
const LEARNED_BYTES: u64 = 1024 * 1024;

/// What a statement a replica refused classifies as from then on.
fn learned(c: Class) -> Class {
    Class {
        route: Route::Primary(Reason::Learned),
        ..c
    }
}

impl Classifier {
    pub fn new(extra: PrimaryFunctions) -> Self {
        Self {
            cache: quick_cache::sync::Cache::with_weighter(16_384, CACHE_BYTES, TextWeight),
            learned: quick_cache::sync::Cache::with_weighter(4_096, LEARNED_BYTES, TextWeight),
            extra,
        }
    }

    pub fn classify(&self, sql: &str) -> Class {
        if let Some(c) = self.cache.get(sql) {
            return c;
        }
        let (mut c, worth_caching) = classify::classify_noting(sql, &self.extra);
        if self.learned.get(sql).is_some() {
            c = learned(c);
        }
        if worth_caching && sql.len() <= classify::MAX_PARSED_LEN {
            self.cache.insert(sql.to_string(), c);
        }
        c
    }

    /// A replica refused `sql` as only a primary runs it: from now on it
    /// goes to the primary without a failed try. Whether it was new.
    pub fn learn_primary(&self, sql: &str) -> bool {
        if sql.len() > classify::MAX_PARSED_LEN || self.learned.get(sql).is_some() {
            return false;
        }
        self.learned.insert(sql.to_string(), ());
        if let Some(c) = self.cache.get(sql) {
            self.cache.insert(sql.to_string(), learned(c));
        }
        true
    }
}

/// The routing state of every database with replicas, and their monitors.
#[derive(Default)]
pub struct Routes {
    classifier: Mutex<Option<Arc<Classifier>>>,
    topologies: Mutex<HashMap<String, Arc<Topology>>>,
}

impl Routes {
    /// Builds topologies for `config` (keeping those whose settings did not
    /// change, with their monitors) and starts monitors for new ones.
    pub fn apply(&self, config: &Config) {
        let g = &config.general;
        {
            let mut c = self.classifier.lock().unwrap_or_else(|p| p.into_inner());
            if c.as_ref()
                .is_none_or(|c| c.extra != g.routing.primary_functions)
            {
                *c = Some(Arc::new(Classifier::new(
                    g.routing.primary_functions.clone(),
                )));
            }
        }
        let mut next = HashMap::new();
        let mut started = Vec::new();
        {
            let old = self.topologies.lock().unwrap_or_else(|p| p.into_inner());
            for (name, db) in &config.databases {
                // The result cache reads the primary's samples too: a client
                // that wrote reads its writes from it as from a replica.
                if db.replicas.is_empty() && db.cache.is_empty() {
                    continue;
                }
                let want = replicas::Settings::from_config(config, db);
                match old.get(name) {
                    Some(t) if t.settings == want => {
                        next.insert(name.clone(), t.clone());
                    }
                    _ => {
                        let t = Arc::new(Topology::new(name, want));
                        started.push(t.clone());
                        next.insert(name.clone(), t);
                    }
                }
            }
        }
        *self.topologies.lock().unwrap_or_else(|p| p.into_inner()) = next;
        // Replaced topologies' monitors stop once nothing holds them.
        for t in started {
            monitor::spawn(&t, config);
        }
    }

    pub fn classifier(&self) -> Option<Arc<Classifier>> {
        self.classifier
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn topology(&self, database: &str) -> Option<Arc<Topology>> {
        self.topologies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(database)
            .cloned()
    }

    pub fn all(&self) -> Vec<Arc<Topology>> {
        let t = self.topologies.lock().unwrap_or_else(|p| p.into_inner());
        t.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learnt_statement_goes_to_the_primary_cached_or_not() {
        let c = Classifier::new(PrimaryFunctions::default());
        let cached = "SELECT add_row($1)";
        let one_off = "SELECT add_row(7)";
        assert!(c.classify(cached).is_read());
        assert!(c.classify(one_off).is_read());
        assert!(c.learn_primary(cached));
        assert!(c.learn_primary(one_off));
        assert!(!c.learn_primary(one_off), "known already");
        for sql in [cached, one_off] {
            assert_eq!(c.classify(sql).route, Route::Primary(Reason::Learned));
        }
        // A cache that churns does not forget it.
        for i in 0..20_000 {
            c.classify(&format!("SELECT ${i} /* {i} */"));
        }
        assert_eq!(c.classify(cached).route, Route::Primary(Reason::Learned));
        assert!(c.classify("SELECT add_row($2)").is_read(), "by text");
    }

    #[test]
    fn values_written_into_a_plain_select_are_not_cached() {
        let c = Classifier::new(PrimaryFunctions::default());
        for aid in 0..100 {
            let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            assert!(c.classify(&sql).is_read());
        }
        assert_eq!(c.cache.len(), 0, "one-off texts churned the cache");
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1 LIMIT 50",
            "/* sluice:replica */ SELECT 1",
            "UPDATE t SET x = 1",
            "SELECT 1; SELECT 2",
        ] {
            let first = c.classify(sql);
            assert_eq!(c.classify(sql), first);
        }
        assert_eq!(
            c.cache.len(),
            3,
            "the parameterized SELECT (its LIMIT 50 notwithstanding), the write and the pair, not `SELECT 1`"
        );
        assert_eq!(
            c.classify("/* sluice:replica */ SELECT 1").hint,
            Hint::Replica,
            "the shortcut keeps the hint"
        );
    }
}
