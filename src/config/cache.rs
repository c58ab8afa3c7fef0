//! The result cache's settings: `[general]`'s cache_* keys and each
//! database's `[[databases.NAME.cache]]` rules, validated.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::units::{parse_duration, parse_size};

/// `[general]` keys every database's cache shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// Bytes of results one database's cache may hold.
    pub size: usize,
    /// How far behind the primary a cached answer may be for a client that
    /// has not written (the same rule as max_replica_lag for replicas).
    pub max_lag: Duration,
    /// The publication whose changes invalidate cached results.
    pub publication: String,
    /// A read on the primary is not stored when a table it read changed
    /// this shortly before it began: PostgreSQL makes a commit visible a
    /// moment after the WAL that announces it is flushed.
    pub settle: Duration,
}

/// One `[[databases.NAME.cache]]` rule: which reads are cached, how long.
#[derive(Debug, Clone)]
pub struct CacheRule {
    /// Matches the statement's text (any part of it).
    pub pattern: Option<regex::Regex>,
    /// The statement reads only these tables (lowercase; a schema-qualified
    /// entry matches that schema only).
    pub tables: Vec<String>,
    /// Views allowed, each with the tables it reads: a change of one of
    /// those drops what read the view.
    pub views: BTreeMap<String, Vec<String>>,
    pub ttl: Duration,
    /// A larger result is passed through uncached.
    pub max_entry_size: usize,
}

impl PartialEq for CacheRule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern.as_ref().map(regex::Regex::as_str)
            == other.pattern.as_ref().map(regex::Regex::as_str)
            && self.tables == other.tables
            && self.views == other.views
            && self.ttl == other.ttl
            && self.max_entry_size == other.max_entry_size
    }
}

impl Eq for CacheRule {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub pattern: Option<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub views: BTreeMap<String, Vec<String>>,
    #[serde(default, deserialize_with = "super::units::opt_seconds_or_text")]
    pub ttl: Option<String>,
    pub max_entry_size: Option<String>,
}

/// The defaults of `[general]`'s cache keys.
pub const DEFAULT_SIZE: &str = "64MB";
pub const DEFAULT_MAX_LAG: &str = "1s";
pub const DEFAULT_PUBLICATION: &str = "sluice_cache";
pub const DEFAULT_SETTLE: &str = "100ms";
const DEFAULT_TTL: Duration = Duration::from_secs(60);
const DEFAULT_MAX_ENTRY: usize = 1 << 20;

pub fn settings(
    size: &str,
    max_lag: &str,
    publication: &str,
    settle: &str,
    add: &mut impl FnMut(String, String),
) -> Option<CacheSettings> {
    let mut check = |key: &str, r: Result<Duration, String>| {
        r.map_err(|e| add(format!("general.{key}"), e)).ok()
    };
    let max_lag = check("max_cache_lag", parse_duration(max_lag));
    let settle = check("cache_settle", parse_duration(settle));
    let size = parse_size(size)
        .map_err(|e| add("general.cache_size".into(), e))
        .ok();
    if publication.is_empty() {
        add(
            "general.cache_publication".into(),
            "must not be empty".into(),
        );
    }
    Some(CacheSettings {
        size: size?,
        max_lag: max_lag?,
        publication: publication.to_string(),
        settle: settle?,
    })
}

pub fn rules(
    key: &str,
    raw: &[RawCacheRule],
    add: &mut impl FnMut(String, String),
) -> Option<Vec<CacheRule>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, r) in raw.iter().enumerate() {
        let key = format!("{key}.cache[{i}]");
        let pattern = match &r.pattern {
            None => None,
            Some(p) => match regex::RegexBuilder::new(p).case_insensitive(true).build() {
                Ok(re) => Some(re),
                Err(e) => {
                    add(
                        format!("{key}.pattern"),
                        format!("not a regular expression: {e}"),
                    );
                    ok = false;
                    None
                }
            },
        };
        let ttl = match r.ttl.as_deref().map(parse_duration) {
            None => DEFAULT_TTL,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                add(format!("{key}.ttl"), "must be more than 0".into());
                ok = false;
                continue;
            }
            Some(Err(e)) => {
                add(format!("{key}.ttl"), e);
                ok = false;
                continue;
            }
        };
        let max_entry_size = match r.max_entry_size.as_deref().map(parse_size) {
            None => DEFAULT_MAX_ENTRY,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                add(format!("{key}.max_entry_size"), e);
                ok = false;
                continue;
            }
        };
        let lower = |v: &[String]| v.iter().map(|t| t.to_ascii_lowercase()).collect();
        out.push(CacheRule {
            pattern,
            tables: lower(&r.tables),
            views: r
                .views
                .iter()
                .map(|(v, t)| (v.to_ascii_lowercase(), lower(t)))
                .collect(),
            ttl,
            max_entry_size,
        });
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Vec<RawCacheRule> {
        #[derive(Deserialize)]
        struct W {
            cache: Vec<RawCacheRule>,
        }
        toml::from_str::<W>(text).expect("toml").cache
    }

    #[test]
    fn rules_are_validated_with_their_keys() {
        let mut problems = Vec::new();
        let mut add = |k: String, m: String| problems.push(format!("{k}: {m}"));
        let r = rules(
            "databases.app",
            &raw("[[cache]]\ntables = [\"Products\"]\nttl = \"5s\"\n[[cache]]\npattern = \"FROM prices\"\n"),
            &mut add,
        )
        .expect("valid");
        assert_eq!(r[0].tables, vec!["products".to_string()]);
        assert_eq!(r[0].ttl, Duration::from_secs(5));
        assert_eq!(r[1].ttl, DEFAULT_TTL);
        assert!(
            r[1].pattern
                .as_ref()
                .is_some_and(|p| p.is_match("select * from PRICES"))
        );
        let bad = rules(
            "databases.app",
            &raw("[[cache]]\npattern = \"(\"\n[[cache]]\nttl = \"0s\"\n"),
            &mut add,
        );
        assert!(bad.is_none());
        assert!(
            problems[0].starts_with("databases.app.cache[0].pattern"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("databases.app.cache[1].ttl"),
            "{problems:?}"
        );
    }
}
