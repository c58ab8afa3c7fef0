//! Which statements a database's cache takes, and under what terms: its
//! `[[databases.NAME.cache]]` rules and hints, checked against the tables
//! the publication covers (a relation whose changes sluice would not see
//! is never cached). Pure: the caller passes what the primary said.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::reads::{CacheHint, RowKey, Table, cache_hint, cacheable};
use crate::config::cache::CacheRule;

/// A result bigger than this is not cached when no rule says otherwise.
const HINT_MAX_ENTRY: usize = 1 << 20;

/// The relations of the database, as the cache needs to know them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Relations {
    /// (schema, name) of every table the publication covers.
    published: HashSet<(String, String)>,
    /// By name: whether every relation of that name (any schema) is a
    /// published table, so an unqualified name is safe whichever schema
    /// the client's search_path finds it in.
    by_name: HashMap<String, bool>,
}

impl Relations {
    /// From the published tables and every relation (table, view,
    /// materialized view, foreign table) the database has.
    pub fn new(
        published: impl IntoIterator<Item = (String, String)>,
        all: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let published: HashSet<_> = published.into_iter().collect();
        let mut by_name = HashMap::new();
        for (schema, name) in all {
            let ok = published.contains(&(schema, name.clone()));
            let e = by_name.entry(name).or_insert(true);
            *e &= ok;
        }
        for (_, name) in &published {
            by_name.entry(name.clone()).or_insert(true);
        }
        Self { published, by_name }
    }

    fn covers(&self, t: &Table) -> bool {
        match &t.schema {
            Some(s) => self.published.contains(&(s.clone(), t.name.clone())),
            None => self.by_name.get(&t.name).copied().unwrap_or(false),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.published.is_empty()
    }
}

/// A statement the cache takes: the tables whose changes drop its results,
/// how long they live, how big one may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub tables: BTreeSet<Table>,
    /// A read of one table (not a view) by key: which rows it depends on.
    pub row: Option<RowKey>,
    pub ttl: Duration,
    pub max_entry_size: usize,
}

fn table_of(s: &str) -> Table {
    match s.split_once('.') {
        Some((schema, name)) => Table {
            schema: Some(schema.to_string()),
            name: name.to_string(),
        },
        None => Table {
            schema: None,
            name: s.to_string(),
        },
    }
}

fn spelled(t: &Table) -> String {
    match &t.schema {
        Some(s) => format!("{s}.{}", t.name),
        None => t.name.clone(),
    }
}

fn rule_takes(rule: &CacheRule, sql: &str, read: &BTreeSet<Table>) -> bool {
    if rule.pattern.as_ref().is_some_and(|p| !p.is_match(sql)) {
        return false;
    }
    if rule.tables.is_empty() && rule.views.is_empty() {
        return true;
    }
    read.iter().all(|t| {
        let name = spelled(t);
        let named = |list: &str| list == name || list == t.name;
        rule.tables.iter().any(|l| named(l)) || rule.views.keys().any(|l| named(l))
    })
}

/// Whether `sql` is cached under `rules` (or its hint), and on what terms.
pub fn candidate(sql: &str, rules: &[CacheRule], relations: &Relations) -> Option<Candidate> {
    let hint = cache_hint(sql);
    if hint == CacheHint::NoCache || rules.is_empty() {
        return None;
    }
    let read = cacheable(sql)?;
    let rule = rules.iter().find(|r| rule_takes(r, sql, &read.tables));
    let (ttl, max_entry_size) = match (hint, rule) {
        (CacheHint::Cache(Some(ttl)), r) => (ttl, r.map_or(HINT_MAX_ENTRY, |r| r.max_entry_size)),
        (_, Some(r)) => (r.ttl, r.max_entry_size),
        (CacheHint::Cache(None), None) => (rules[0].ttl, HINT_MAX_ENTRY),
        (_, None) => return None,
    };
    // A view is read through the tables a rule names for it.
    let mut tables = BTreeSet::new();
    let mut row = read.row;
    for t in read.tables {
        let name = spelled(&t);
        let view = rules
            .iter()
            .find_map(|r| r.views.get(&name).or_else(|| r.views.get(&t.name)));
        match view {
            Some(base) => {
                row = None;
                tables.extend(base.iter().map(|b| table_of(b)));
            }
            None => {
                tables.insert(t);
            }
        }
    }
    tables
        .iter()
        .all(|t| relations.covers(t))
        .then_some(Candidate {
            tables,
            row,
            ttl,
            max_entry_size,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml: &str) -> Vec<CacheRule> {
        let text = format!("[databases.app]\nprimary = \"127.0.0.1:5432\"\n{toml}");
        let c = crate::config::Config::parse(&text).expect("config");
        c.databases["app"].cache.clone()
    }

    fn rel() -> Relations {
        let s = |a: &str, b: &str| (a.to_string(), b.to_string());
        Relations::new(
            [
                s("public", "products"),
                s("public", "prices"),
                s("shop", "orders"),
            ],
            [
                s("public", "products"),
                s("public", "prices"),
                s("shop", "orders"),
                s("public", "orders"),
                s("public", "price_view"),
            ],
        )
    }

    #[test]
    fn only_what_a_rule_or_hint_names_and_the_publication_covers() {
        let r = rule("[[databases.app.cache]]\ntables = [\"products\"]\nttl = \"5s\"\n");
        let c = candidate("SELECT * FROM products WHERE id = 1", &r, &rel()).expect("cached");
        assert_eq!(c.ttl, Duration::from_secs(5));
        assert!(
            candidate("SELECT * FROM prices", &r, &rel()).is_none(),
            "not in the rule"
        );
        let hinted = "/* sluice:cache ttl=30s */ SELECT * FROM prices";
        assert_eq!(
            candidate(hinted, &r, &rel()).map(|c| c.ttl),
            Some(Duration::from_secs(30))
        );
        let no = "/* sluice:nocache */ SELECT * FROM products";
        assert!(candidate(no, &r, &rel()).is_none());
        assert!(candidate("SELECT now() FROM products", &r, &rel()).is_none());
        assert!(
            candidate("SELECT * FROM products", &[], &rel()).is_none(),
            "cache off"
        );
    }

    #[test]
    fn names_the_publication_would_not_report_are_refused() {
        let all = rule("[[databases.app.cache]]\n");
        // `orders` is also public.orders, which is not published.
        assert!(candidate("SELECT * FROM orders", &all, &rel()).is_none());
        assert!(candidate("SELECT * FROM shop.orders", &all, &rel()).is_some());
        assert!(
            candidate("SELECT * FROM price_view", &all, &rel()).is_none(),
            "a view"
        );
        assert!(
            candidate("SELECT * FROM nowhere", &all, &rel()).is_none(),
            "unknown"
        );
        let views = rule(
            "[[databases.app.cache]]\n[databases.app.cache.views]\nprice_view = [\"prices\", \"products\"]\n",
        );
        let c = candidate("SELECT * FROM price_view", &views, &rel()).expect("named view");
        let names: Vec<_> = c.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["prices", "products"]);
    }

    #[test]
    fn patterns_pick_statements() {
        let r = rule(
            "[[databases.app.cache]]\npattern = \"^select \\\\* from prices\"\nttl = \"2s\"\n",
        );
        assert!(candidate("select * from prices where id = $1", &r, &rel()).is_some());
        assert!(candidate("select id from prices", &r, &rel()).is_none());
    }
}
