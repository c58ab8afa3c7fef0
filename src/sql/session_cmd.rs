//! What a statement does to session state that outlives a transaction:
//! settings (SET/RESET) that must follow a client from server to server in
//! transaction pooling, and features (LISTEN, advisory locks, temp tables,
//! WITH HOLD cursors, SQL PREPARE) that tie a client to one server.

use super::lex::{Token, spanned_tokens};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET [SESSION] name TO|= value`: the value as SQL text.
    Set {
        name: String,
        value: String,
    },
    /// `RESET name` or `SET name TO DEFAULT`.
    Reset(String),
    ResetAll,
    /// `SET LOCAL`, `SET TRANSACTION`, `SET CONSTRAINTS`: a `SET` tag with
    /// no effect past the transaction.
    LocalSet,
    DiscardAll,
    Listen(String),
    Unlisten(String),
    UnlistenAll,
    Prepare(String),
    Deallocate(String),
    DeallocateAll,
    DeclareHold(String),
    Close(String),
    CloseAll,
    CreateTemp(String),
    Drop(Vec<String>),
    DiscardTemp,
    AdvisoryLock,
    AdvisoryUnlockAll,
}

fn word<'a>(t: Option<&'a (Token<'_>, usize)>) -> Option<&'a str> {
    match t {
        Some((Token::Word(w), _)) => Some(w),
        _ => None,
    }
}

/// A possibly qualified name starting at token `i`; returns it and the next index.
fn name(toks: &[(Token<'_>, usize)], mut i: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    loop {
        match toks.get(i) {
            Some((Token::Word(w), _)) => out.push_str(w),
            Some((Token::Quoted(q), _)) => out.push_str(q.trim_matches('"')),
            _ => return None,
        }
        i += 1;
        if matches!(toks.get(i), Some((Token::Punct('.'), _))) {
            out.push('.');
            i += 1;
        } else {
            return Some((out, i));
        }
    }
}

/// The effects of one statement (see `lex::statements` to split a Query).
pub fn effects(stmt: &str) -> Vec<Effect> {
    let toks = spanned_tokens(stmt);
    let w = |i: usize| word(toks.get(i));
    let mut out = Vec::new();
    match w(0) {
        Some("set") => out.extend(set(stmt, &toks)),
        Some("reset") => match w(1) {
            Some("all") => out.push(Effect::ResetAll),
            _ => out.extend(name(&toks, 1).map(|(n, _)| Effect::Reset(n))),
        },
        Some("discard") => match w(1) {
            Some("all") => out.push(Effect::DiscardAll),
            Some("temp") | Some("temporary") => out.push(Effect::DiscardTemp),
            _ => {}
        },
        Some("listen") => out.extend(name(&toks, 1).map(|(n, _)| Effect::Listen(n))),
        Some("unlisten") => match toks.get(1) {
            Some((Token::Punct('*'), _)) => out.push(Effect::UnlistenAll),
            _ => out.extend(name(&toks, 1).map(|(n, _)| Effect::Unlisten(n))),
        },
        Some("prepare") if w(1) != Some("transaction") => {
            out.extend(name(&toks, 1).map(|(n, _)| Effect::Prepare(n)))
        }
        Some("deallocate") => {
            let i = if w(1) == Some("prepare") { 2 } else { 1 };
            match w(i) {
                Some("all") => out.push(Effect::DeallocateAll),
                _ => out.extend(name(&toks, i).map(|(n, _)| Effect::Deallocate(n))),
            }
        }
        Some("declare") => {
            let hold = toks
                .windows(2)
                .any(|p| word(Some(&p[0])) == Some("with") && word(Some(&p[1])) == Some("hold"));
            if hold {
                out.extend(name(&toks, 1).map(|(n, _)| Effect::DeclareHold(n)));
            }
        }
        Some("close") => match w(1) {
            Some("all") => out.push(Effect::CloseAll),
            _ => out.extend(name(&toks, 1).map(|(n, _)| Effect::Close(n))),
        },
        Some("create") => out.extend(create_temp(&toks)),
        Some("drop") if w(1) == Some("table") => {
            let mut i = 2;
            if w(2) == Some("if") && w(3) == Some("exists") {
                i = 4;
            }
            let mut names = Vec::new();
            while let Some((n, next)) = name(&toks, i) {
                names.push(n.rsplit('.').next().unwrap_or_default().to_string());
                match toks.get(next) {
                    Some((Token::Punct(','), _)) => i = next + 1,
                    _ => break,
                }
            }
            out.push(Effect::Drop(names));
        }
        _ => {}
    }
    out.extend(advisory(&toks));
    out
}

fn set(stmt: &str, toks: &[(Token<'_>, usize)]) -> Option<Effect> {
    let mut i = 1;
    match word(toks.get(1)) {
        Some("local") | Some("transaction") | Some("constraints") => return Some(Effect::LocalSet),
        Some("session") => {
            if matches!(word(toks.get(2)), Some("characteristics")) {
                return None;
            }
            i = 2;
            if word(toks.get(2)) == Some("authorization") {
                let value = stmt[toks.get(3)?.1..].trim().to_string();
                return Some(Effect::Set {
                    name: "session_authorization".into(),
                    value,
                });
            }
        }
        _ => {}
    }
    let (name, next) = match (word(toks.get(i)), word(toks.get(i + 1))) {
        (Some("time"), Some("zone")) => ("timezone".to_string(), i + 2),
        (Some("role"), _) => ("role".to_string(), i + 1),
        _ => {
            let (n, next) = name(toks, i)?;
            match toks.get(next) {
                Some((Token::Punct('='), _)) => (n, next + 1),
                Some((Token::Word(w), _)) if w == "to" => (n, next + 1),
                _ => return None, // SET x FROM CURRENT and the unknown
            }
        }
    };
    let start = toks.get(next)?.1;
    let value = stmt[start..].trim().to_string();
    if value.eq_ignore_ascii_case("default") {
        return Some(Effect::Reset(name));
    }
    Some(Effect::Set { name, value })
}

fn create_temp(toks: &[(Token<'_>, usize)]) -> Option<Effect> {
    let mut i = 1;
    if word(toks.get(1)) == Some("global") || word(toks.get(1)) == Some("local") {
        i = 2;
    }
    if word(toks.get(i)) == Some("or") && word(toks.get(i + 1)) == Some("replace") {
        i += 2;
    }
    if !matches!(word(toks.get(i)), Some("temp") | Some("temporary")) {
        return in_pg_temp(toks, i);
    }
    i += 1;
    if word(toks.get(i)) == Some("unlogged") {
        i += 1;
    }
    if !matches!(
        word(toks.get(i)),
        Some("table") | Some("sequence") | Some("view")
    ) {
        return None;
    }
    i += 1;
    if word(toks.get(i)) == Some("if") {
        i += 3;
    }
    name(toks, i)
        .map(|(n, _)| Effect::CreateTemp(n.rsplit('.').next().unwrap_or_default().to_string()))
}

/// `CREATE <kind> pg_temp.name`: types, domains, sequences, views,
/// functions and tables made in the session's temporary schema, which
/// vanish with the server connection like temporary tables. `i` is the
/// token after CREATE [OR REPLACE].
fn in_pg_temp(toks: &[(Token<'_>, usize)], mut i: usize) -> Option<Effect> {
    // The object's kind: one or two words (MATERIALIZED VIEW, ...), then
    // IF NOT EXISTS.
    for _ in 0..2 {
        if matches!(toks.get(i + 1), Some((Token::Word(w), _)) if w != "if")
            && !matches!(toks.get(i + 2), Some((Token::Punct('.'), _)))
        {
            i += 1;
        }
    }
    i += 1;
    if word(toks.get(i)) == Some("if") {
        i += 3;
    }
    let (n, _) = name(toks, i)?;
    let (schema, object) = n.rsplit_once('.')?;
    schema
        .eq_ignore_ascii_case("pg_temp")
        .then(|| Effect::CreateTemp(object.to_string()))
}

/// Session-level advisory lock calls anywhere in the statement.
fn advisory(toks: &[(Token<'_>, usize)]) -> Option<Effect> {
    let mut lock = None;
    for t in toks {
        if let (Token::Word(w), _) = t {
            match w.as_ref() {
                "pg_advisory_unlock_all" => lock = Some(Effect::AdvisoryUnlockAll),
                "pg_advisory_lock"
                | "pg_advisory_lock_shared"
                | "pg_try_advisory_lock"
                | "pg_try_advisory_lock_shared" => lock = Some(Effect::AdvisoryLock),
                _ => {}
            }
        }
    }
    lock
}

#[cfg(test)]
mod tests {
    use super::Effect::*;
    use super::*;

    fn set(n: &str, v: &str) -> Effect {
        Set {
            name: n.into(),
            value: v.into(),
        }
    }

    #[test]
    fn settings() {
        assert_eq!(
            effects("SET search_path TO a, \"B\""),
            vec![set("search_path", "a, \"B\"")]
        );
        assert_eq!(
            effects("set SESSION statement_timeout = '5s'"),
            vec![set("statement_timeout", "'5s'")]
        );
        assert_eq!(
            effects("SET TIME ZONE 'Asia/Tokyo'"),
            vec![set("timezone", "'Asia/Tokyo'")]
        );
        assert_eq!(
            effects("SET myapp.user_id = 42"),
            vec![set("myapp.user_id", "42")]
        );
        assert_eq!(
            effects("SET work_mem TO DEFAULT"),
            vec![Reset("work_mem".into())]
        );
        assert_eq!(effects("SET LOCAL work_mem = '1MB'"), vec![LocalSet]);
        assert_eq!(
            effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            vec![LocalSet]
        );
        assert_eq!(effects("SET SCHEMA 's1'"), vec![]);
        assert_eq!(
            effects("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            vec![]
        );
        assert_eq!(effects("RESET DateStyle"), vec![Reset("datestyle".into())]);
        assert_eq!(effects("reset all"), vec![ResetAll]);
        assert_eq!(effects("DISCARD ALL"), vec![DiscardAll]);
        assert_eq!(effects("SET ROLE admin"), vec![set("role", "admin")]);
    }

    #[test]
    fn session_features() {
        assert_eq!(effects("LISTEN chan"), vec![Listen("chan".into())]);
        assert_eq!(effects("UNLISTEN *"), vec![UnlistenAll]);
        assert_eq!(
            effects("PREPARE q(int) AS SELECT $1"),
            vec![Prepare("q".into())]
        );
        assert_eq!(effects("PREPARE TRANSACTION 'x'"), vec![]);
        assert_eq!(
            effects("DEALLOCATE PREPARE q"),
            vec![Deallocate("q".into())]
        );
        assert_eq!(effects("DEALLOCATE ALL"), vec![DeallocateAll]);
        assert_eq!(
            effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            vec![DeclareHold("c".into())]
        );
        assert_eq!(effects("DECLARE c CURSOR FOR SELECT 1"), vec![]);
        assert_eq!(effects("CLOSE ALL"), vec![CloseAll]);
        assert_eq!(
            effects("CREATE TEMP TABLE t (x int)"),
            vec![CreateTemp("t".into())]
        );
        assert_eq!(
            effects("create temporary table if not exists pg_temp.t2 as select 1"),
            vec![CreateTemp("t2".into())]
        );
        assert_eq!(effects("CREATE TABLE t (x int)"), vec![]);
        for sql in [
            "CREATE TYPE pg_temp.mood AS ENUM ('sad', 'ok')",
            "create domain PG_TEMP.mood as int",
            "CREATE SEQUENCE IF NOT EXISTS pg_temp.mood",
            "CREATE OR REPLACE VIEW pg_temp.mood AS SELECT 1",
            "CREATE MATERIALIZED VIEW pg_temp.mood AS SELECT 1",
            "CREATE OR REPLACE FUNCTION pg_temp.mood() RETURNS int AS 'SELECT 1' LANGUAGE sql",
            "CREATE TEMP VIEW mood AS SELECT 1",
            "CREATE OR REPLACE TEMP VIEW mood AS SELECT 1",
        ] {
            assert_eq!(effects(sql), vec![CreateTemp("mood".into())], "{sql}");
        }
        assert_eq!(effects("CREATE TYPE public.mood AS ENUM ('a')"), vec![]);
        assert_eq!(effects("CREATE TYPE mood AS ENUM ('a')"), vec![]);
        assert_eq!(
            effects("DROP TABLE IF EXISTS t, s.u"),
            vec![Drop(vec!["t".into(), "u".into()])]
        );
        assert_eq!(effects("SELECT pg_advisory_lock(1)"), vec![AdvisoryLock]);
        assert_eq!(effects("SELECT pg_advisory_xact_lock(1)"), vec![]);
        assert_eq!(
            effects("select pg_advisory_unlock_all()"),
            vec![AdvisoryUnlockAll]
        );
        assert_eq!(effects("SELECT 'pg_advisory_lock(1)'"), vec![]);
    }
}
