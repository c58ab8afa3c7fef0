//! Session-scoped server state a client created, which pins it to its
//! server in transaction pooling until the state is released.

use std::collections::BTreeSet;

use crate::sql::session_cmd::Effect;

/// Boxed on first use: most clients never pin, and every idle client
/// carries this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins(Option<Box<PinSets>>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PinSets {
    listen: BTreeSet<String>,
    advisory: bool,
    temp: BTreeSet<String>,
    cursors: BTreeSet<String>,
    prepared: BTreeSet<String>,
}

impl Pins {
    pub fn apply(&mut self, e: &Effect) {
        if Self::pins(e).is_none() && self.0.is_none() {
            return; // it can only release, and nothing is held
        }
        let p = self.0.get_or_insert_default();
        match e {
            Effect::Listen(n) => {
                p.listen.insert(n.clone());
            }
            Effect::Unlisten(n) => {
                p.listen.remove(n);
            }
            Effect::UnlistenAll => p.listen.clear(),
            Effect::AdvisoryLock => p.advisory = true,
            Effect::AdvisoryUnlockAll => p.advisory = false,
            Effect::CreateTemp(n) => {
                p.temp.insert(n.clone());
            }
            Effect::Drop(names) => {
                for n in names {
                    p.temp.remove(n);
                }
            }
            Effect::DiscardTemp => p.temp.clear(),
            Effect::DeclareHold(n) => {
                p.cursors.insert(n.clone());
            }
            Effect::Close(n) => {
                p.cursors.remove(n);
            }
            Effect::CloseAll => p.cursors.clear(),
            Effect::Prepare(n) => {
                p.prepared.insert(n.clone());
            }
            Effect::Deallocate(n) => {
                p.prepared.remove(n);
            }
            Effect::DeallocateAll => p.prepared.clear(),
            Effect::DiscardAll => self.0 = None,
            Effect::Set { .. } | Effect::Reset(_) | Effect::ResetAll | Effect::LocalSet => {}
        }
        if !self.is_pinned() {
            self.0 = None;
        }
    }

    /// What an effect would pin, if it pins anything.
    pub fn pins(e: &Effect) -> Option<&'static str> {
        match e {
            Effect::Listen(_) => Some("LISTEN"),
            Effect::AdvisoryLock => Some("session advisory locks"),
            Effect::CreateTemp(_) => Some("temporary objects"),
            Effect::DeclareHold(_) => Some("WITH HOLD cursors"),
            Effect::Prepare(_) => Some("SQL PREPARE"),
            _ => None,
        }
    }

    /// Whether `name` is one of the client's temporary objects.
    pub fn is_temp(&self, name: &str) -> bool {
        self.0.as_ref().is_some_and(|p| p.temp.contains(name))
    }

    pub fn is_pinned(&self) -> bool {
        self.0.as_ref().is_some_and(|p| {
            p.advisory
                || !(p.listen.is_empty()
                    && p.temp.is_empty()
                    && p.cursors.is_empty()
                    && p.prepared.is_empty())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::session_cmd::effects;

    fn run(p: &mut Pins, sql: &str) {
        for e in effects(sql) {
            p.apply(&e);
        }
    }

    #[test]
    fn pins_until_released() {
        let mut p = Pins::default();
        for (pin, unpin) in [
            ("LISTEN a", "UNLISTEN *"),
            (
                "SELECT pg_advisory_lock(1)",
                "SELECT pg_advisory_unlock_all()",
            ),
            ("CREATE TEMP TABLE t (x int)", "DROP TABLE t"),
            ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "CLOSE c"),
            ("PREPARE q AS SELECT 1", "DEALLOCATE q"),
            ("LISTEN b", "DISCARD ALL"),
        ] {
            run(&mut p, pin);
            assert!(p.is_pinned(), "{pin}");
            run(&mut p, unpin);
            assert!(!p.is_pinned(), "{unpin}");
            assert_eq!(p, Pins::default(), "{unpin} gives the sets back");
        }
    }
}
