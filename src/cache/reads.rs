//! Whether a statement's result may be cached, and which tables it reads
//! (its cached result is dropped when one of them changes). Pure, from the
//! text: only a single plain SELECT that calls nothing but immutable
//! functions, reads no system catalog and no table function qualifies.
//! Temporary tables and views are the caller's to refuse or name (it knows
//! the client's temporary objects and the rules' table lists).

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::Duration;

use sqlparser::ast::{
    BinaryOperator, Expr, Ident, ObjectName, ObjectNamePart, Query, SetExpr, Statement,
    TableFactor, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

/// A table a statement reads: its schema when the statement names one
/// (an unqualified name matches a change to that name in any schema).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Table {
    pub schema: Option<String>,
    pub name: String,
}

/// Functions whose result depends on their arguments alone (PostgreSQL's
/// IMMUTABLE ones most used in reads), and the aggregates over them.
const IMMUTABLE: &[&str] = &[
    "abs",
    "avg",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "btrim",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "every",
    "floor",
    "greatest",
    "initcap",
    "least",
    "left",
    "length",
    "lower",
    "lpad",
    "ltrim",
    "max",
    "md5",
    "min",
    "mod",
    "nullif",
    "octet_length",
    "position",
    "power",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "strpos",
    "string_agg",
    "array_agg",
    "substr",
    "substring",
    "sum",
    "trim",
    "trunc",
    "upper",
    "json_agg",
    "jsonb_agg",
    "json_build_object",
    "jsonb_build_object",
    "row_number",
    "rank",
    "dense_rank",
    "lag",
    "lead",
    "first_value",
    "last_value",
];

/// SQL's value functions written without parentheses: not immutable.
const SESSION_VALUES: &[&str] = &[
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "localtime",
    "localtimestamp",
    "session_user",
    "user",
];

/// What a cacheable statement reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readable {
    pub tables: BTreeSet<Table>,
    /// When it reads one table, once, and its WHERE requires a column to
    /// equal an integer or a parameter: only rows with that value matter.
    pub row: Option<RowKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKey {
    /// As PostgreSQL names it (unquoted names folded to lower case).
    pub column: String,
    pub value: KeyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValue {
    Int(i64),
    /// `$n`, as an index from 0.
    Param(usize),
}

/// What `sql` reads, when its result may be cached; None when not.
pub fn cacheable(sql: &str) -> Option<Readable> {
    let dialect = PostgreSqlDialect {};
    let stmts = Parser::new(&dialect)
        .with_recursion_limit(100)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .ok()?;
    let [Statement::Query(q)] = stmts.as_slice() else {
        return None;
    };
    if !q.locks.is_empty() {
        return None;
    }
    let mut f = Reads::default();
    if q.visit(&mut f).is_break() || f.tables.is_empty() {
        return None;
    }
    let row = if f.relations == 1 { row_key(q) } else { None };
    Some(Readable {
        tables: f.tables,
        row,
    })
}

/// `SELECT ... FROM t [alias] WHERE ... AND col = <integer or $n> AND ...`
/// with no other table, CTE or set operation.
fn row_key(q: &Query) -> Option<RowKey> {
    if q.with.is_some() {
        return None;
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return None;
    };
    let [from] = s.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, alias, .. } = &from.relation else {
        return None;
    };
    let qualifier = match alias {
        Some(a) => part(&a.name),
        None => parts(name).pop()?,
    };
    key_in(s.selection.as_ref()?, &qualifier)
}

/// A conjunct of `e` that is `column = value`.
fn key_in(e: &Expr, qualifier: &str) -> Option<RowKey> {
    match e {
        Expr::Nested(inner) => key_in(inner, qualifier),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => key_in(left, qualifier).or_else(|| key_in(right, qualifier)),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } => column_is(left, right, qualifier).or_else(|| column_is(right, left, qualifier)),
        _ => None,
    }
}

fn column_is(column: &Expr, value: &Expr, qualifier: &str) -> Option<RowKey> {
    let column = match column {
        Expr::Identifier(i) => part(i),
        Expr::CompoundIdentifier(ids) => match ids.as_slice() {
            [q, c] if part(q) == qualifier => part(c),
            _ => return None,
        },
        _ => return None,
    };
    let Expr::Value(v) = value else {
        return None;
    };
    let value = match &v.value {
        Value::Number(n, false) => KeyValue::Int(integer(n.as_bytes())?),
        Value::SingleQuotedString(s) => KeyValue::Int(integer(s.as_bytes())?),
        Value::Placeholder(p) => {
            let n: usize = p.strip_prefix('$')?.parse().ok()?;
            KeyValue::Param(n.checked_sub(1)?)
        }
        _ => return None,
    };
    Some(RowKey { column, value })
}

/// An integer written plainly (`-?[0-9]+`, in range): PostgreSQL reads it
/// as that integer, and writes it back as `i64::to_string` does.
pub fn integer(b: &[u8]) -> Option<i64> {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

#[derive(Default)]
struct Reads {
    tables: BTreeSet<Table>,
    /// Relations named, counting repeats.
    relations: usize,
}

fn part(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_ascii_lowercase(),
    }
}

fn parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => part(i),
            other => other.to_string(),
        })
        .collect()
}

impl Visitor for Reads {
    type Break = ();

    fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
        match t {
            // `FROM f(...)`: a function, not a table.
            TableFactor::Table { args: Some(_), .. } => ControlFlow::Break(()),
            TableFactor::Table { .. }
            | TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. } => ControlFlow::Continue(()),
            _ => ControlFlow::Break(()),
        }
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        let mut p = parts(r);
        let name = p.pop().unwrap_or_default();
        let schema = p.pop();
        let catalog = schema.as_deref().is_some_and(|s| {
            s == "pg_catalog" || s == "information_schema" || s.starts_with("pg_")
        });
        if catalog || name.starts_with("pg_") {
            return ControlFlow::Break(());
        }
        self.tables.insert(Table { schema, name });
        self.relations += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Function(f) => {
                let name = parts(&f.name).pop().unwrap_or_default();
                if IMMUTABLE.contains(&name.as_str()) {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            }
            Expr::Identifier(i) if SESSION_VALUES.contains(&part(i).as_str()) => {
                ControlFlow::Break(())
            }
            // A subquery that may write, or read a sequence: not here, but
            // nextval() and friends are functions, refused above.
            _ => ControlFlow::Continue(()),
        }
    }
}

/// A leading `/* sluice:cache ttl=30s */` or `/* sluice:nocache */`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHint {
    None,
    /// Cache it; for this long when given.
    Cache(Option<Duration>),
    NoCache,
}

/// The cache hint among a statement's leading comments.
pub fn cache_hint(sql: &str) -> CacheHint {
    let mut t = sql.trim_start();
    while let Some(rest) = t.strip_prefix("/*") {
        let Some(end) = rest.find("*/") else {
            return CacheHint::None;
        };
        let body = rest[..end].trim();
        let mut words = body.split_whitespace();
        match words.next().map(str::to_ascii_lowercase).as_deref() {
            Some("sluice:nocache") => return CacheHint::NoCache,
            Some("sluice:cache") => {
                let ttl = words
                    .find_map(|w| w.strip_prefix("ttl="))
                    .and_then(|v| crate::config::units::parse_duration(v).ok());
                return CacheHint::Cache(ttl);
            }
            _ => {}
        }
        t = rest[end + 2..].trim_start();
    }
    CacheHint::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Option<Vec<String>> {
        cacheable(sql).map(|t| {
            t.tables
                .into_iter()
                .map(|t| match t.schema {
                    Some(s) => format!("{s}.{}", t.name),
                    None => t.name,
                })
                .collect()
        })
    }

    #[test]
    fn plain_reads_name_their_tables() {
        assert_eq!(
            names(
                "SELECT o.id, count(*) FROM Orders o JOIN app.items i ON i.o = o.id WHERE o.id = $1 GROUP BY 1"
            ),
            Some(vec!["orders".into(), "app.items".into()])
        );
        assert_eq!(
            names("SELECT * FROM \"Mixed\" WHERE id IN (SELECT id FROM other)"),
            Some(vec!["Mixed".into(), "other".into()])
        );
        assert_eq!(
            names("WITH t AS (SELECT lower(name) AS n FROM users) SELECT n FROM t"),
            Some(vec!["t".into(), "users".into()]),
            "a CTE's name counts too: dropping more than needed is fine"
        );
    }

    fn row(sql: &str) -> Option<(String, KeyValue)> {
        cacheable(sql)
            .expect("cacheable")
            .row
            .map(|r| (r.column, r.value))
    }

    #[test]
    fn a_read_of_one_table_by_key_says_which_rows() {
        let id = |v| Some(("id".to_string(), v));
        assert_eq!(row("SELECT v FROM kv WHERE id = 5"), id(KeyValue::Int(5)));
        assert_eq!(
            row("SELECT v FROM kv WHERE ID = '-7'"),
            id(KeyValue::Int(-7))
        );
        assert_eq!(
            row("SELECT k.v FROM app.kv k WHERE k.v > 3 AND (7 = k.id)"),
            id(KeyValue::Int(7))
        );
        assert_eq!(
            row("SELECT v FROM kv WHERE id = $2"),
            id(KeyValue::Param(1))
        );
        assert_eq!(
            row("SELECT count(*) FROM kv WHERE \"Id\" = 1"),
            Some(("Id".to_string(), KeyValue::Int(1)))
        );
        for sql in [
            "SELECT v FROM kv",
            "SELECT v FROM kv WHERE id = 5 OR v = 1",
            "SELECT v FROM kv WHERE id = 5.0",
            "SELECT v FROM kv WHERE id = '05x'",
            "SELECT v FROM kv WHERE id = 5::int8",
            "SELECT v FROM kv WHERE id = 99999999999999999999",
            "SELECT v FROM kv WHERE id <> 5",
            "SELECT v FROM kv WHERE NOT (id = 5)",
            "SELECT v FROM kv WHERE other.id = 5",
            // Other rows of the same table, or other tables.
            "SELECT v, (SELECT max(v) FROM kv) FROM kv WHERE id = 5",
            "SELECT v FROM kv WHERE id = 5 AND v IN (SELECT v FROM kv)",
            "SELECT v FROM kv JOIN other USING (id) WHERE id = 5",
            "SELECT v FROM kv, other WHERE kv.id = 5",
            "WITH x AS (SELECT 1) SELECT v FROM kv WHERE id = 5",
            "SELECT v FROM kv WHERE id = 5 UNION SELECT v FROM kv WHERE id = 6",
        ] {
            assert_eq!(row(sql), None, "{sql}");
        }
        assert_eq!(integer(b"0"), Some(0));
        assert_eq!(integer(b"-"), None);
        assert_eq!(integer(b"+1"), None);
        assert_eq!(integer(b" 1"), None);
    }

    #[test]
    fn what_may_change_without_a_write_is_never_cached() {
        for sql in [
            "SELECT now(), id FROM orders",
            "SELECT random() FROM orders",
            "SELECT current_user, id FROM orders",
            "SELECT nextval('s') FROM orders",
            "SELECT my_function(id) FROM orders",
            "SELECT * FROM pg_class",
            "SELECT * FROM pg_catalog.pg_tables",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM generate_series(1, 3)",
            "SELECT * FROM orders FOR UPDATE",
            "SELECT 1",
            "UPDATE orders SET id = 1",
            "SELECT 1 FROM orders; SELECT 2 FROM orders",
            "SELEC nonsense",
        ] {
            assert_eq!(names(sql), None, "{sql}");
        }
    }

    #[test]
    fn hints_say_cache_or_not() {
        assert_eq!(
            cache_hint("/* sluice:cache ttl=30s */ SELECT 1"),
            CacheHint::Cache(Some(Duration::from_secs(30)))
        );
        assert_eq!(
            cache_hint("/* x */ /* sluice:cache */ SELECT 1"),
            CacheHint::Cache(None)
        );
        assert_eq!(
            cache_hint("/* sluice:nocache */ SELECT 1"),
            CacheHint::NoCache
        );
        assert_eq!(cache_hint("SELECT 1 /* sluice:cache */"), CacheHint::None);
    }
}
