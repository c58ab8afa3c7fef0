//! Statements that need no other session connected to a database:
//! `DROP DATABASE x`, `CREATE DATABASE ... TEMPLATE x` and
//! `ALTER DATABASE x RENAME TO ...`. PostgreSQL refuses them while any
//! session is connected to x, and sluice's idle pooled servers are such
//! sessions; so sluice closes them first.

use super::lex::{Lexer, Token};

/// The server-side name of the database `sql` needs free of sessions, if
/// it is one of those statements (unquoted names fold to lowercase, as
/// PostgreSQL folds them).
pub fn target_database(sql: &str) -> Option<String> {
    let toks: Vec<Token<'_>> = Lexer::new(sql).map(|(t, _)| t).take(64).collect();
    let word = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) => Some(w.as_ref()),
        _ => None,
    };
    let name_at = |i: usize| match toks.get(i) {
        Some(Token::Word(w)) => Some(w.to_string()),
        Some(Token::Quoted(q)) => Some(q[1..q.len().saturating_sub(1)].replace("\"\"", "\"")),
        _ => None,
    };
    if word(1) != Some("database") {
        return None;
    }
    match word(0)? {
        "drop" if word(2) == Some("if") && word(3) == Some("exists") => name_at(4),
        "drop" => name_at(2),
        "alter" if word(3) == Some("rename") => name_at(2),
        "create" => {
            let t = (3..toks.len()).find(|&i| word(i) == Some("template"))?;
            let at = if toks.get(t + 1) == Some(&Token::Punct('=')) {
                t + 2
            } else {
                t + 1
            };
            name_at(at)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_of_each_statement() {
        for (sql, want) in [
            ("DROP DATABASE scratch", Some("scratch")),
            (
                "drop database if exists \"Scratch\" WITH (FORCE)",
                Some("Scratch"),
            ),
            ("DROP DATABASE Scratch", Some("scratch")),
            ("ALTER DATABASE scratch RENAME TO old", Some("scratch")),
            ("ALTER DATABASE scratch SET work_mem = '1MB'", None),
            ("CREATE DATABASE copy TEMPLATE scratch", Some("scratch")),
            (
                "CREATE DATABASE copy WITH OWNER app TEMPLATE = scratch ENCODING 'UTF8'",
                Some("scratch"),
            ),
            ("CREATE DATABASE fresh", None),
            ("DROP TABLE database", None),
            ("SELECT 1", None),
        ] {
            assert_eq!(target_database(sql).as_deref(), want, "{sql}");
        }
    }
}
