//! The routing decision for one checkout: a pure function of the request's
//! class, the client's session route and read-your-writes need, and the
//! replicas' state. No IO, so tests call it directly.

use std::time::Instant;

use super::classify::{Class, Hint, Route};
use super::replicas::{ReplicaView, Topology};
use crate::config::{Balance, Consistency};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Primary,
    Replica(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    /// Why, for the routing counters: "read", "hint", a classify::Reason, ...
    pub reason: &'static str,
}

/// `SET sluice.route TO ...` for the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionRoute {
    #[default]
    Auto,
    Primary,
    Replica,
}

impl SessionRoute {
    /// The value of a `sluice.route` setting as the client wrote it.
    pub fn parse(v: &str) -> Self {
        let v = v.trim().trim_matches('\'').trim_matches('"');
        if v.eq_ignore_ascii_case("primary") {
            Self::Primary
        } else if v.eq_ignore_ascii_case("replica") {
            Self::Replica
        } else {
            Self::Auto
        }
    }
}

/// Read-your-writes: what a client that wrote needs of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Need {
    #[default]
    None,
    /// It wrote at this moment; no primary sample taken after it yet.
    Pending(Instant),
    /// A replica must have replayed at least this far.
    Lsn(u64),
}

impl Need {
    /// Turns a pending need into an LSN once the monitor has a sample
    /// taken after the write.
    pub fn resolve(&mut self, topo: &Topology) {
        if let Self::Pending(t) = *self
            && let Some(s) = topo.sample_after(t)
        {
            *self = Self::Lsn(s.lsn);
        }
    }
}

fn primary(reason: &'static str) -> Decision {
    Decision {
        target: Target::Primary,
        reason,
    }
}

/// Where a request of class `class` goes.
pub fn decide(
    class: &Class,
    session: SessionRoute,
    consistency: Consistency,
    need: Need,
    views: &[ReplicaView],
    balance: Balance,
    rr: usize,
) -> Decision {
    match class.route {
        Route::Primary(r) => return primary(r.as_str()),
        Route::Neutral => return primary("neutral"),
        Route::Read => {}
    }
    if class.hint == Hint::Primary {
        return primary("hint");
    }
    if session == SessionRoute::Primary && class.hint != Hint::Replica {
        return primary("session_route");
    }
    // A replica hint or session route accepts stale reads.
    let accepts_stale = class.hint == Hint::Replica || session == SessionRoute::Replica;
    let min_lsn = match (consistency, need, accepts_stale) {
        (Consistency::Eventual, _, _) | (_, Need::None, _) | (_, _, true) => 0,
        (Consistency::Session, Need::Pending(_), false) => return primary("read_your_writes"),
        (Consistency::Session, Need::Lsn(l), false) => l,
    };
    let usable = || views.iter().enumerate().filter(|(_, v)| v.usable);
    if usable().next().is_none() {
        return primary("no_replica");
    }
    // No allocation: count the candidates, then take the rr-th.
    let fresh = || usable().filter(|(_, v)| v.replay_lsn >= min_lsn);
    let n = fresh().count();
    if n == 0 {
        return primary("read_your_writes");
    }
    let pick = match balance {
        Balance::RoundRobin => fresh().nth(rr % n).map(|(i, _)| i),
        Balance::LeastOutstanding => {
            let least = fresh().map(|(_, v)| v.outstanding).min().unwrap_or(0);
            let tied = || fresh().filter(move |(_, v)| v.outstanding == least);
            tied().nth(rr % tied().count()).map(|(i, _)| i)
        }
    };
    let Some(pick) = pick else {
        return primary("no_replica");
    };
    Decision {
        target: Target::Replica(pick),
        reason: "read",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::classify::{Reason, TxnEffect};

    fn class(route: Route, hint: Hint) -> Class {
        Class {
            route,
            txn: TxnEffect::None,
            hint,
        }
    }

    fn view(usable: bool, replay_lsn: u64, outstanding: usize) -> ReplicaView {
        ReplicaView {
            usable,
            replay_lsn,
            outstanding,
        }
    }

    fn go(
        c: Class,
        s: SessionRoute,
        need: Need,
        views: &[ReplicaView],
        b: Balance,
        rr: usize,
    ) -> Decision {
        decide(&c, s, Consistency::Session, need, views, b, rr)
    }

    const READ: Route = Route::Read;
    const RR: Balance = Balance::RoundRobin;

    #[test]
    fn writes_go_to_the_primary_whatever_the_hint() {
        let v = [view(true, 10, 0)];
        for hint in [Hint::None, Hint::Replica, Hint::Primary] {
            let d = go(
                class(Route::Primary(Reason::Write), hint),
                SessionRoute::Replica,
                Need::None,
                &v,
                RR,
                0,
            );
            assert_eq!(d, primary("write"));
        }
        let d = go(
            class(Route::Neutral, Hint::Replica),
            SessionRoute::Auto,
            Need::None,
            &v,
            RR,
            0,
        );
        assert_eq!(d.target, Target::Primary);
    }

    #[test]
    fn reads_round_robin_over_usable_replicas() {
        let v = [view(true, 0, 0), view(false, 0, 0), view(true, 0, 0)];
        let picks: Vec<Target> = (0..4)
            .map(|rr| {
                go(
                    class(READ, Hint::None),
                    SessionRoute::Auto,
                    Need::None,
                    &v,
                    RR,
                    rr,
                )
                .target
            })
            .collect();
        assert_eq!(
            picks,
            [
                Target::Replica(0),
                Target::Replica(2),
                Target::Replica(0),
                Target::Replica(2)
            ]
        );
    }

    #[test]
    fn least_outstanding_picks_the_idlest_replica() {
        let v = [view(true, 0, 3), view(true, 0, 1), view(true, 0, 2)];
        let d = go(
            class(READ, Hint::None),
            SessionRoute::Auto,
            Need::None,
            &v,
            Balance::LeastOutstanding,
            7,
        );
        assert_eq!(d.target, Target::Replica(1));
    }

    #[test]
    fn no_usable_replica_means_the_primary() {
        let v = [view(false, 100, 0)];
        let d = go(
            class(READ, Hint::None),
            SessionRoute::Auto,
            Need::None,
            &v,
            RR,
            0,
        );
        assert_eq!(d, primary("no_replica"));
        assert_eq!(
            go(
                class(READ, Hint::None),
                SessionRoute::Auto,
                Need::None,
                &[],
                RR,
                0
            ),
            primary("no_replica")
        );
    }

    #[test]
    fn a_client_that_wrote_reads_only_from_replicas_that_caught_up() {
        let v = [view(true, 50, 0), view(true, 120, 0)];
        let c = class(READ, Hint::None);
        let pending = Need::Pending(Instant::now());
        assert_eq!(
            go(c, SessionRoute::Auto, pending, &v, RR, 0),
            primary("read_your_writes")
        );
        assert_eq!(
            go(c, SessionRoute::Auto, Need::Lsn(100), &v, RR, 0).target,
            Target::Replica(1)
        );
        assert_eq!(
            go(c, SessionRoute::Auto, Need::Lsn(200), &v, RR, 0),
            primary("read_your_writes")
        );
        // Eventual consistency and replica hints ignore the need.
        let d = decide(
            &c,
            SessionRoute::Auto,
            Consistency::Eventual,
            Need::Lsn(200),
            &v,
            RR,
            0,
        );
        assert_eq!(d.target, Target::Replica(0));
        let d = go(
            class(READ, Hint::Replica),
            SessionRoute::Auto,
            pending,
            &v,
            RR,
            0,
        );
        assert_eq!(d.target, Target::Replica(0));
    }

    #[test]
    fn primary_hints_and_session_route_keep_reads_on_the_primary() {
        let v = [view(true, 0, 0)];
        assert_eq!(
            go(
                class(READ, Hint::Primary),
                SessionRoute::Auto,
                Need::None,
                &v,
                RR,
                0
            ),
            primary("hint")
        );
        assert_eq!(
            go(
                class(READ, Hint::None),
                SessionRoute::Primary,
                Need::None,
                &v,
                RR,
                0
            ),
            primary("session_route")
        );
        assert_eq!(
            go(
                class(READ, Hint::Replica),
                SessionRoute::Primary,
                Need::None,
                &v,
                RR,
                0
            )
            .target,
            Target::Replica(0)
        );
    }

    #[test]
    fn session_route_values_parse() {
        assert_eq!(SessionRoute::parse("'primary'"), SessionRoute::Primary);
        assert_eq!(SessionRoute::parse("REPLICA"), SessionRoute::Replica);
        assert_eq!(SessionRoute::parse("auto"), SessionRoute::Auto);
    }
}
