//! Session-scoped server state a client created, which pins it to its
//! server in transaction pooling until the state is released.

use std::collections::BTreeSet;

use crate::sql::session_cmd::Effect;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    listen: BTreeSet<String>,
    advisory: bool,
    temp: BTreeSet<String>,
    cursors: BTreeSet<String>,
    prepared: BTreeSet<String>,
}

impl Pins {
    pub fn apply(&mut self, e: &Effect) {
        match e {
            Effect::Listen(n) => {
                self.listen.insert(n.clone());
            }
            Effect::Unlisten(n) => {
                self.listen.remove(n);
            }
            Effect::UnlistenAll => self.listen.clear(),
            Effect::AdvisoryLock => self.advisory = true,
            Effect::AdvisoryUnlockAll => self.advisory = false,
            Effect::CreateTemp(n) => {
                self.temp.insert(n.clone());
            }
            Effect::Drop(names) => {
                for n in names {
                    self.temp.remove(n);
                }
            }
            Effect::DiscardTemp => self.temp.clear(),
            Effect::DeclareHold(n) => {
                self.cursors.insert(n.clone());
            }
            Effect::Close(n) => {
                self.cursors.remove(n);
            }
            Effect::CloseAll => self.cursors.clear(),
            Effect::Prepare(n) => {
                self.prepared.insert(n.clone());
            }
            Effect::Deallocate(n) => {
                self.prepared.remove(n);
            }
            Effect::DeallocateAll => self.prepared.clear(),
            Effect::DiscardAll => *self = Pins::default(),
            Effect::Set { .. } | Effect::Reset(_) | Effect::ResetAll => {}
        }
    }

    /// What an effect would pin, if it pins anything.
    pub fn pins(e: &Effect) -> Option<&'static str> {
        match e {
            Effect::Listen(_) => Some("LISTEN"),
            Effect::AdvisoryLock => Some("session advisory locks"),
            Effect::CreateTemp(_) => Some("temporary tables"),
            Effect::DeclareHold(_) => Some("WITH HOLD cursors"),
            Effect::Prepare(_) => Some("SQL PREPARE"),
            _ => None,
        }
    }

    pub fn is_pinned(&self) -> bool {
        self.advisory
            || !(self.listen.is_empty()
                && self.temp.is_empty()
                && self.cursors.is_empty()
                && self.prepared.is_empty())
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
        }
    }
}
