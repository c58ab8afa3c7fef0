//! The routing keys of `[general]` and a database's `route`.

use super::raw::RawGeneral;
use super::units::{parse_duration, parse_size};
use super::{Balance, Consistency, DbRoute, LagBound, Routing};

/// What a DBA says about functions, beyond the router's built-in list of
/// those that write (names lowercase).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrimaryFunctions {
    /// `primary_functions`: a call sends the statement to the primary.
    pub primary: Vec<String>,
    /// `replica_safe_functions`: a call never does, even when the
    /// built-in list names the function (or a prefix of its name).
    pub replica_safe: Vec<String>,
}

impl PrimaryFunctions {
    /// Only `primary_functions`.
    pub fn primary(names: &[&str]) -> Self {
        Self {
            primary: names.iter().map(|n| n.to_string()).collect(),
            replica_safe: Vec::new(),
        }
    }
}

fn lowercase(names: &[String]) -> Vec<String> {
    names.iter().map(|f| f.to_ascii_lowercase()).collect()
}

/// "10s" or "16MB": a number followed by a size unit is an amount of WAL.
fn lag_bound(s: &str) -> Result<LagBound, String> {
    let t = s.trim();
    let unit: String = t
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
        .trim()
        .to_ascii_lowercase();
    if unit.ends_with('b') {
        return parse_size(t).map(|b| LagBound::Bytes(b as u64));
    }
    parse_duration(t).map(LagBound::Time)
}

pub(super) fn routing(g: &RawGeneral, add: &mut dyn FnMut(String, String)) -> Option<Routing> {
    let mut check = |key: &str, r: Result<std::time::Duration, String>| {
        r.map_err(|m| add(format!("general.{key}"), m)).ok()
    };
    let poll = check("lsn_poll_interval", parse_duration(&g.lsn_poll_interval));
    let ban = check("replica_ban_time", parse_duration(&g.replica_ban_time));
    let read_timeout = check(
        "replica_read_timeout",
        parse_duration(&g.replica_read_timeout),
    );
    for (key, d) in [
        ("lsn_poll_interval", poll),
        ("replica_read_timeout", read_timeout),
    ] {
        if d.is_some_and(|d| d.is_zero()) {
            add(format!("general.{key}"), "must be more than 0".into());
        }
    }
    let lag = lag_bound(&g.max_replica_lag)
        .map_err(|m| add("general.max_replica_lag".into(), m))
        .ok();
    let balance = match g.load_balance.as_str() {
        "round_robin" => Some(Balance::RoundRobin),
        "least_outstanding" => Some(Balance::LeastOutstanding),
        other => {
            add(
                "general.load_balance".into(),
                format!("unknown value \"{other}\" (expected round_robin or least_outstanding)"),
            );
            None
        }
    };
    let consistency = match g.consistency.as_str() {
        "session" => Some(Consistency::Session),
        "eventual" => Some(Consistency::Eventual),
        other => {
            add(
                "general.consistency".into(),
                format!("unknown value \"{other}\" (expected session or eventual)"),
            );
            None
        }
    };
    Some(Routing {
        lsn_poll_interval: poll.filter(|d| !d.is_zero())?,
        max_replica_lag: lag?,
        replica_ban_time: ban?,
        replica_read_timeout: read_timeout.filter(|d| !d.is_zero())?,
        load_balance: balance?,
        consistency: consistency?,
        primary_functions: PrimaryFunctions {
            primary: lowercase(&g.primary_functions),
            replica_safe: lowercase(&g.replica_safe_functions),
        },
        monitor_user: g.monitor_user.clone(),
    })
}

pub(super) fn db_route(
    key: &str,
    route: Option<&str>,
    add: &mut dyn FnMut(String, String),
) -> Option<DbRoute> {
    match route {
        None | Some("auto") => Some(DbRoute::Auto),
        Some("primary") => Some(DbRoute::Primary),
        Some("replica") => Some(DbRoute::Replica),
        Some(other) => {
            add(
                format!("{key}.route"),
                format!("unknown value \"{other}\" (expected auto, primary or replica)"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lag_bounds_are_durations_or_sizes() {
        assert_eq!(lag_bound("5s"), Ok(LagBound::Time(Duration::from_secs(5))));
        assert_eq!(
            lag_bound("250ms"),
            Ok(LagBound::Time(Duration::from_millis(250)))
        );
        assert_eq!(lag_bound("16MB"), Ok(LagBound::Bytes(16 * 1024 * 1024)));
        assert!(lag_bound("fast").is_err());
    }
}
