//! Where a statement may run: a pure function of its text. Cheap lexical
//! rules decide transaction control, settings and plain SELECTs; anything
//! else goes through sqlparser. When in doubt, the primary.

use std::ops::ControlFlow;

use sqlparser::ast::{
    CopySource, Expr, Query, SetExpr, Statement, UtilityOption, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::sql::lex::{Lexer, Token, spanned_tokens, statements};

/// Statements longer than this are not parsed (parsing is ~100 ns/byte):
/// unless the lexical rules prove them reads, they go to the primary.
pub const MAX_PARSED_LEN: usize = 16 * 1024;

/// Why a statement must run on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Writes, DDL, and every statement that is not a read.
    Write,
    /// SELECT ... FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    LockingRead,
    /// INSERT/UPDATE/DELETE/MERGE inside a WITH.
    WritableCte,
    SelectInto,
    /// Calls a function that writes, locks, or uses sequences.
    WriteFunction,
    /// BEGIN / START TRANSACTION not read-only.
    Transaction,
    /// sqlparser could not parse it.
    Unparsed,
    /// Too long to parse (MAX_PARSED_LEN).
    TooLarge,
    /// A replica refused it before (a function that writes, or one only a
    /// primary runs): learnt, not read from the text.
    Learned,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::LockingRead => "locking_read",
            Self::WritableCte => "writable_cte",
            Self::SelectInto => "select_into",
            Self::WriteFunction => "write_function",
            Self::Transaction => "transaction",
            Self::Unparsed => "unparsed",
            Self::TooLarge => "too_large",
            Self::Learned => "learned",
        }
    }
}

/// Where a statement may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Only reads: a replica may run it.
    Read,
    /// Transaction control and session settings: whichever server the
    /// client holds. Starting a checkout, it goes to the primary.
    Neutral,
    Primary(Reason),
}

/// What a statement does to the client's transaction, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnEffect {
    None,
    /// Opens a read-only transaction (BEGIN READ ONLY, ...).
    OpensReadOnly,
    /// COMMIT / END / ROLLBACK / ABORT.
    Ends,
}

/// A leading `/* sluice:primary */` or `/* sluice:replica */` comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    None,
    Primary,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Class {
    pub route: Route,
    pub txn: TxnEffect,
    pub hint: Hint,
}

impl Class {
    const fn new(route: Route) -> Self {
        Self {
            route,
            txn: TxnEffect::None,
            hint: Hint::None,
        }
    }

    pub fn is_read(&self) -> bool {
        self.route == Route::Read
    }
}

pub use crate::config::PrimaryFunctions;

const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "set_config",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "dblink_exec",
    // Answered from the LISTENs sluice makes there (a standby refuses them).
    "pg_listening_channels",
];
const WRITE_FUNCTION_PREFIXES: &[&str] = &["pg_advisory_", "pg_try_advisory_", "lo_"];

impl PrimaryFunctions {
    fn matches(&self, name: &str) -> bool {
        let listed = WRITE_FUNCTIONS.contains(&name)
            || WRITE_FUNCTION_PREFIXES.iter().any(|p| name.starts_with(p))
            || self.primary.iter().any(|f| f == name);
        // (Most statements call no listed function: the safe list is read
        // only for those that do.)
        listed && !self.replica_safe.iter().any(|f| f == name)
    }
}

/// Classifies a (possibly multi-statement) SQL string.
pub fn classify(sql: &str, extra: &PrimaryFunctions) -> Class {
    classify_noting(sql, extra).0
}

/// `classify`, and whether the answer is worth caching: not for a lone
/// plain SELECT with values written into it and no parameters (the simple
/// protocol's way of sending values). The one-pass check decides that in
/// well under a microsecond, and such a text seldom comes again (a cache
/// would only churn with them).
pub fn classify_noting(sql: &str, extra: &PrimaryFunctions) -> (Class, bool) {
    let hint = leading_hint(sql);
    let stmts = statements(sql);
    if let [stmt] = stmts.as_slice()
        && let Some(one_off) = plain_select(stmt, extra)
    {
        let class = Class {
            hint,
            ..Class::new(Route::Read)
        };
        return (class, !one_off);
    }
    let mut route = Route::Neutral;
    let mut txn = TxnEffect::None;
    let mut i = 0;
    while i < stmts.len() {
        let mut c = statement(stmts[i], extra);
        // BEGIN; SET TRANSACTION READ ONLY: a read-only transaction.
        if c.route == Route::Primary(Reason::Transaction)
            && is_plain_begin(stmts[i])
            && stmts.get(i + 1).is_some_and(|s| sets_read_only(s))
        {
            c = Class {
                route: Route::Read,
                txn: TxnEffect::OpensReadOnly,
                hint: Hint::None,
            };
            i += 1;
        }
        route = match (route, c.route) {
            (Route::Primary(r), _) | (_, Route::Primary(r)) => Route::Primary(r),
            (Route::Read, _) | (_, Route::Read) => Route::Read,
            _ => Route::Neutral,
        };
        if c.txn != TxnEffect::None {
            txn = c.txn;
        }
        i += 1;
    }
    (Class { route, txn, hint }, true)
}

/// A leading comment naming a route, before any other token.
fn leading_hint(sql: &str) -> Hint {
    let mut t = sql.trim_start();
    while let Some(rest) = t.strip_prefix("/*") {
        let Some(end) = rest.find("*/") else {
            return Hint::None;
        };
        let body = rest[..end].trim();
        if body.eq_ignore_ascii_case("sluice:primary") {
            return Hint::Primary;
        }
        if body.eq_ignore_ascii_case("sluice:replica") {
            return Hint::Replica;
        }
        t = rest[end + 2..].trim_start();
    }
    Hint::None
}

fn words<'t>(tokens: &'t [(Token<'_>, usize)]) -> impl Iterator<Item = &'t str> {
    tokens.iter().filter_map(|(t, _)| match t {
        Token::Word(w) => Some(w.as_ref()),
        _ => None,
    })
}

fn is_plain_begin(stmt: &str) -> bool {
    let t = spanned_tokens(stmt);
    let w: Vec<&str> = words(&t).collect();
    matches!(
        w.as_slice(),
        ["begin"] | ["begin", "work" | "transaction"] | ["start", "transaction"]
    )
}

fn sets_read_only(stmt: &str) -> bool {
    let t = spanned_tokens(stmt);
    let w: Vec<&str> = words(&t).collect();
    w.starts_with(&["set", "transaction"]) && says_read_only(&w)
}

/// "READ ONLY" among a transaction's modes (the last access mode wins).
fn says_read_only(w: &[&str]) -> bool {
    w.windows(2)
        .rev()
        .find_map(|p| match p {
            ["read", "only"] => Some(true),
            ["read", "write"] => Some(false),
            _ => None,
        })
        .unwrap_or(false)
}

/// Calls any function that must run on the primary.
fn calls_write_function(tokens: &[(Token<'_>, usize)], extra: &PrimaryFunctions) -> bool {
    tokens
        .windows(2)
        .any(|w| w[1].0 == Token::Punct('(') && calls(&w[0].0, extra))
}

/// Whether `stmt` is a plain SELECT, decided in one pass over its tokens
/// without keeping them: the rules below for a SELECT, for the commonest
/// statement. Anything else (or a doubt) is left to them. Some: it is, and
/// whether it has values written into it but no parameters.
pub(super) fn plain_select(stmt: &str, extra: &PrimaryFunctions) -> Option<bool> {
    let mut tokens = Lexer::new(stmt);
    if !matches!(tokens.next(), Some((Token::Word(w), _)) if w == "select") {
        return None;
    }
    let mut callee: Option<Token<'_>> = None;
    let (mut literals, mut params) = (false, false);
    for (t, _) in tokens {
        match &t {
            Token::Word(w)
                if matches!(
                    w.as_ref(),
                    "for" | "into" | "insert" | "update" | "delete" | "merge"
                ) =>
            {
                return None;
            }
            Token::Punct('(') if callee.as_ref().is_some_and(|c| calls(c, extra)) => {
                return None;
            }
            // `$1` lexes as `$` and `1`: a parameter, not a value.
            Token::Literal(_) if matches!(callee, Some(Token::Punct('$'))) => params = true,
            Token::Literal(_) => literals = true,
            _ => {}
        }
        callee = Some(t);
    }
    Some(literals && !params)
}

/// Whether a token followed by `(` calls a function that must run on the primary.
fn calls(name: &Token<'_>, extra: &PrimaryFunctions) -> bool {
    match name {
        Token::Word(n) => extra.matches(n),
        Token::Quoted(q) => extra.matches(q.trim_matches('"')),
        _ => false,
    }
}

/// One statement.
fn statement(stmt: &str, extra: &PrimaryFunctions) -> Class {
    if plain_select(stmt, extra).is_some() {
        return Class::new(Route::Read);
    }
    by_rules(stmt, extra)
}

/// One statement, by the lexical rules, then sqlparser.
pub(super) fn by_rules(stmt: &str, extra: &PrimaryFunctions) -> Class {
    let tokens = spanned_tokens(stmt);
    let mut w = words(&tokens);
    let first = w.next().unwrap_or("");
    let second = w.next().unwrap_or("");
    match first {
        "begin" | "start" => {
            let all: Vec<&str> = words(&tokens).collect();
            return if says_read_only(&all) {
                Class {
                    route: Route::Read,
                    txn: TxnEffect::OpensReadOnly,
                    hint: Hint::None,
                }
            } else {
                Class::new(Route::Primary(Reason::Transaction))
            };
        }
        "commit" | "end" | "rollback" | "abort" => {
            // Two-phase commit writes; ROLLBACK TO keeps the transaction;
            // AND CHAIN opens a new one like the last.
            return if second == "prepared" {
                Class::new(Route::Primary(Reason::Write))
            } else if second == "to" || words(&tokens).any(|x| x == "chain") {
                Class::new(Route::Neutral)
            } else {
                Class {
                    txn: TxnEffect::Ends,
                    ..Class::new(Route::Neutral)
                }
            };
        }
        "savepoint" | "release" | "set" | "reset" | "discard" | "deallocate" | "fetch" | "move"
        | "close" => {
            if first == "set" && calls_write_function(&tokens, extra) {
                return Class::new(Route::Primary(Reason::WriteFunction));
            }
            return Class::new(Route::Neutral);
        }
        "show" => return Class::new(Route::Read),
        "table" => return Class::new(Route::Read),
        "" => return Class::new(Route::Neutral),
        _ => {}
    }
    if calls_write_function(&tokens, extra) {
        return Class::new(Route::Primary(Reason::WriteFunction));
    }
    // A plain SELECT: no locking clause, no INTO, no nested DML (a
    // writable CTE), no ';' (split already).
    if first == "select"
        && !words(&tokens)
            .any(|x| matches!(x, "for" | "into" | "insert" | "update" | "delete" | "merge"))
    {
        return Class::new(Route::Read);
    }
    if stmt.len() > MAX_PARSED_LEN {
        return Class::new(Route::Primary(Reason::TooLarge));
    }
    Class::new(parsed(stmt))
}

fn parsed(stmt: &str) -> Route {
    let dialect = PostgreSqlDialect {};
    let parsed = Parser::new(&dialect)
        .with_recursion_limit(200)
        .try_with_sql(stmt)
        .and_then(|mut p| p.parse_statements());
    let Ok(list) = parsed else {
        return Route::Primary(Reason::Unparsed);
    };
    list.iter()
        .fold(Route::Neutral, |acc, s| match (acc, of_statement(s)) {
            (Route::Primary(r), _) | (_, Route::Primary(r)) => Route::Primary(r),
            (Route::Read, _) | (_, Route::Read) => Route::Read,
            _ => Route::Neutral,
        })
}

fn of_statement(s: &Statement) -> Route {
    match s {
        Statement::Query(q) => of_query(q),
        Statement::Explain {
            analyze,
            statement,
            options,
            ..
        } => {
            let analyze = *analyze || options.as_deref().is_some_and(analyze_option);
            if analyze {
                match of_statement(statement) {
                    Route::Primary(r) => Route::Primary(r),
                    _ => Route::Read,
                }
            } else {
                Route::Read
            }
        }
        Statement::Copy {
            to: true, source, ..
        } => match source {
            CopySource::Query(q) => of_query(q),
            CopySource::Table { .. } => Route::Read,
        },
        _ => Route::Primary(Reason::Write),
    }
}

/// `EXPLAIN (ANALYZE)` or `(ANALYZE true)`, not `(ANALYZE false)`.
fn analyze_option(opts: &[UtilityOption]) -> bool {
    opts.iter().any(|o| {
        o.name.value.eq_ignore_ascii_case("analyze")
            && !matches!(
                &o.arg,
                Some(Expr::Value(v)) if matches!(&v.value, Value::Boolean(false))
                    || matches!(&v.value, Value::Number(n, _) if n == "0")
                    || matches!(&v.value, Value::SingleQuotedString(s) if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("false"))
            )
            && !matches!(&o.arg, Some(Expr::Identifier(i)) if i.value.eq_ignore_ascii_case("off") || i.value.eq_ignore_ascii_case("false"))
    })
}

/// Finds what makes a query a write, at any depth.
struct Finder(Option<Reason>);

impl Visitor for Finder {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !q.locks.is_empty() {
            self.0 = Some(Reason::LockingRead);
            return ControlFlow::Break(());
        }
        if let SetExpr::Select(s) = q.body.as_ref()
            && s.into.is_some()
        {
            self.0 = Some(Reason::SelectInto);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Reached only for statements nested in a query: a writable CTE.
    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<()> {
        self.0 = Some(Reason::WritableCte);
        ControlFlow::Break(())
    }
}

fn of_query(q: &Query) -> Route {
    let mut f = Finder(None);
    let _ = q.visit(&mut f);
    match f.0 {
        Some(r) => Route::Primary(r),
        None => Route::Read,
    }
}
