//! Whether a statement may change session settings in a way its text does
//! not show: a call of `set_config`, a DO block, or a call of a function
//! sluice does not know (a user function may run `SET` or `set_config`
//! inside). Transaction pooling then reads the server's session settings
//! before the server goes back (see `session::vars::learn_sql`).

use super::lex::{Lexer, Token};

/// Words that take a parenthesis without being a function call, and
/// built-in functions that cannot change a setting. Sorted, for a binary
/// search. A name missing here only costs a settings check after the
/// transaction; a name here that could set a GUC would leak it, so only
/// PostgreSQL's own functions belong here.
const NOT_SETTING: &[&str] = &[
    "abs",
    "age",
    "all",
    "and",
    "any",
    "array",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_position",
    "array_prepend",
    "array_remove",
    "array_to_string",
    "as",
    "avg",
    "between",
    "bit",
    "bool_and",
    "bool_or",
    "btrim",
    "by",
    "cardinality",
    "case",
    "cast",
    "ceil",
    "ceiling",
    "char",
    "char_length",
    "character",
    "check",
    "clock_timestamp",
    "coalesce",
    "concat",
    "concat_ws",
    "conflict",
    "count",
    "cube",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_setting",
    "date",
    "date_part",
    "date_trunc",
    "decimal",
    "decode",
    "default",
    "dense_rank",
    "distinct",
    "else",
    "encode",
    "every",
    "except",
    "exists",
    "exp",
    "extract",
    "filter",
    "first_value",
    "float",
    "floor",
    "foreign",
    "format",
    "from",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "generated",
    "greatest",
    "group",
    "grouping",
    "groups",
    "in",
    "include",
    "intersect",
    "interval",
    "is",
    "join",
    "json_agg",
    "json_array_elements",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_extract_path_text",
    "json_object_agg",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_insert",
    "jsonb_object_agg",
    "jsonb_path_query",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "key",
    "lag",
    "last_value",
    "lateral",
    "lead",
    "least",
    "left",
    "length",
    "like",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "make_timestamptz",
    "materialized",
    "max",
    "md5",
    "min",
    "mod",
    "mode",
    "not",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "numeric",
    "octet_length",
    "on",
    "or",
    "over",
    "overlay",
    "partition",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_column_size",
    "pg_is_in_recovery",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_total_relation_size",
    "pg_typeof",
    "position",
    "power",
    "primary",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "random",
    "range",
    "rank",
    "recursive",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "returning",
    "reverse",
    "right",
    "rollup",
    "round",
    "row",
    "row_number",
    "row_to_json",
    "rows",
    "rpad",
    "rtrim",
    "select",
    "set",
    "sets",
    "sign",
    "some",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "stddev",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "trim",
    "trunc",
    "union",
    "unique",
    "unnest",
    "upper",
    "using",
    "values",
    "varchar",
    "variance",
    "varying",
    "when",
    "where",
    "window",
    "with",
    "within",
];

/// Words after which `name (` names a table, an index's table or a
/// column list, not a function.
const BEFORE_RELATION: &[&str] = &[
    "copy",
    "exists",
    "into",
    "on",
    "only",
    "references",
    "table",
];

/// Whether running `sql` may change a session setting that sluice cannot
/// read from its text: `sets_settings`, or (unless `trust_functions`) a
/// call of a function sluice does not know.
pub fn may_change_settings(sql: &str, trust_functions: bool) -> bool {
    sets_settings(sql.as_bytes()) || (!trust_functions && calls_unknown_function(sql))
}

/// Whether `sql` calls `set_config` or is (or holds) a DO block: it
/// changes session settings, or may, whatever functions it calls. Read
/// as bytes: every Query is checked.
pub fn sets_settings(sql: &[u8]) -> bool {
    // set_config may hide in a DO body or a string passed to EXECUTE: the
    // raw bytes are searched, so a literal mentioning it also counts.
    if contains_ignore_case(sql, b"set_config") {
        return true;
    }
    let is_do = |stmt: &str| {
        let first = super::lex::strip_leading_comments(stmt).as_bytes();
        first.len() >= 2
            && first[..2].eq_ignore_ascii_case(b"do")
            && !first
                .get(2)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
    };
    // Split into statements only when the word DO occurs at all.
    has_word_do(sql)
        && std::str::from_utf8(sql)
            .is_ok_and(|t| is_do(t) || super::lex::statements(t).into_iter().any(is_do))
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Whether `do` (any case) stands alone as a word somewhere in `sql`.
fn has_word_do(sql: &[u8]) -> bool {
    memchr::memchr2_iter(b'd', b'D', sql).any(|i| {
        matches!(sql.get(i + 1), Some(b'o' | b'O'))
            && (i == 0 || !is_word_byte(sql[i - 1]))
            && !sql.get(i + 2).is_some_and(|b| is_word_byte(*b))
    })
}

/// A quick look at each `(` of `sql` without lexing: true when every one
/// follows a word that is not a call sluice needs to know of (a known
/// function or keyword, or a relation after INTO, TABLE, ...). Quoting is
/// not read: a `(` it cannot vouch for sends the statement to the lexer.
fn no_unknown_call_at_a_glance(sql: &[u8]) -> bool {
    // (start of the word before `end`, skipping spaces; the word)
    let word_before = |end: usize| {
        let mut e = end;
        while e > 0 && sql[e - 1] == b' ' {
            e -= 1;
        }
        let mut s = e;
        while s > 0 && is_word_byte(sql[s - 1]) {
            s -= 1;
        }
        (s, &sql[s..e])
    };
    memchr::memchr_iter(b'(', sql).all(|i| {
        let (start, w) = word_before(i);
        if w.is_empty() {
            // After an operator or a comma: a grouping, not a call. After
            // a quote, a comment or anything else: the lexer decides.
            return start == 0
                || matches!(
                    sql[start - 1],
                    b',' | b'(' | b'=' | b'<' | b'>' | b'+' | b'|' | b'['
                );
        }
        if start > 0 && sql[start - 1] == b'.' {
            return false; // schema.name(
        }
        // A relation's column list (INTO t (...)): the commonest case, and
        // no copy needed to see it.
        let (_, prev) = word_before(start);
        if BEFORE_RELATION
            .iter()
            .any(|r| r.as_bytes().eq_ignore_ascii_case(prev))
        {
            return true;
        }
        let mut lower = [0u8; 32];
        let Some(l) = lower.get_mut(..w.len()) else {
            return false;
        };
        l.copy_from_slice(w);
        l.make_ascii_lowercase();
        NOT_SETTING
            .binary_search_by(|k| k.as_bytes().cmp(l))
            .is_ok()
    })
}

/// The functions `sql` calls that sluice does not know, by name (as
/// pg_proc spells it: unquoted names lowercased, without their schema).
pub fn unknown_functions(sql: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = sql.as_bytes();
    if b.contains(&b'(') && !no_unknown_call_at_a_glance(b) {
        scan_calls(sql, |name| {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
            false
        });
    }
    names
}

/// Whether a function of language `lang` whose body is `body` may change
/// session settings when called: C and internal functions (PostgreSQL's
/// own and extensions') are trusted not to; SQL and PL/pgSQL bodies are
/// read (a SET or RESET statement, set_config, dynamic SQL, or a call of a
/// function sluice does not know means it may); other languages may.
pub fn body_may_change_settings(lang: &str, body: &str) -> bool {
    match lang {
        "c" | "internal" => false,
        "sql" | "plpgsql" => {
            may_change_settings(body, false) || has_setting_statement(body) || {
                let toks = Lexer::new(body).map(|(t, _)| t);
                toks.into_iter()
                    .any(|t| matches!(t, Token::Word(w) if w == "execute"))
            }
        }
        _ => true,
    }
}

/// A `SET` or `RESET` at the start of a statement of a function body.
fn has_setting_statement(body: &str) -> bool {
    let mut prev: Option<Token<'_>> = None;
    for (tok, _) in Lexer::new(body) {
        if let Token::Word(w) = &tok
            && (w == "set" || w == "reset")
        {
            let starts = match &prev {
                None | Some(Token::Punct(';')) => true,
                Some(Token::Word(p)) => {
                    matches!(p.as_ref(), "begin" | "then" | "else" | "loop" | "do")
                }
                _ => false,
            };
            if starts {
                return true;
            }
        }
        prev = Some(tok);
    }
    false
}

/// The setting names that `set_config('name', ...)` calls in `sql` give
/// as literals, lowercased.
pub fn set_config_names(sql: &str) -> Vec<String> {
    let toks: Vec<Token<'_>> = Lexer::new(sql).map(|(t, _)| t).collect();
    toks.windows(3)
        .filter_map(|w| match w {
            [Token::Word(f), Token::Punct('('), Token::Literal(l)] if f == "set_config" => {
                let l = l.trim_start_matches(['E', 'e']);
                let inner = l.strip_prefix('\'')?.strip_suffix('\'')?;
                Some(inner.replace("''", "'").to_ascii_lowercase())
            }
            _ => None,
        })
        .collect()
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memchr_iter(b'_', hay).any(|i| {
        i >= 3
            && hay
                .get(i - 3..i - 3 + needle.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    })
}

fn calls_unknown_function(sql: &str) -> bool {
    let b = sql.as_bytes();
    b.contains(&b'(') && !no_unknown_call_at_a_glance(b) && scan_calls(sql, |_| true)
}

/// Calls `found` with the name of each call of an unknown function in
/// `sql`, in order, until it returns true; whether it did.
fn scan_calls(sql: &str, mut found: impl FnMut(&str) -> bool) -> bool {
    // The three tokens before the current one, nearest last.
    let mut before: [Option<Token<'_>>; 3] = [None, None, None];
    let mut prev: Option<Token<'_>> = None;
    for (tok, _) in Lexer::new(sql) {
        if tok == Token::Punct('(')
            && let Some(name) = &prev
            && is_unknown_call(name, &before)
        {
            let name = match name {
                Token::Quoted(q) => q.trim_matches('"'),
                Token::Word(w) => w.as_ref(),
                _ => "",
            };
            if found(name) {
                return true;
            }
        }
        before = [before[1].take(), before[2].take(), prev.take()];
        prev = Some(tok);
    }
    false
}

fn is_word_in(t: Option<&Token<'_>>, list: &[&str]) -> bool {
    matches!(t, Some(Token::Word(w)) if list.contains(&w.as_ref()))
}

/// `name (`, with the tokens before `name` in `b` (nearest last).
fn is_unknown_call(name: &Token<'_>, b: &[Option<Token<'_>>; 3]) -> bool {
    let [b3, b2, b1] = [b[0].as_ref(), b[1].as_ref(), b[2].as_ref()];
    let word = match name {
        Token::Word(w) => w.as_ref(),
        // "MyFunc"(...): a quoted name is nobody's keyword.
        Token::Quoted(_) => return !is_word_in(b1, BEFORE_RELATION),
        _ => return false,
    };
    if matches!(b1, Some(Token::Punct('.'))) {
        // schema.name (: a table's column list, PostgreSQL's own schema
        // (pg_catalog.set_config was caught before), or a call.
        return !is_word_in(b3, BEFORE_RELATION) && !is_word_in(b2, &["pg_catalog"]);
    }
    if is_word_in(b1, BEFORE_RELATION) {
        return false; // INSERT INTO t (...), CREATE TABLE t (...)
    }
    NOT_SETTING.binary_search(&word).is_err()
        && !word.starts_with("pg_advisory")
        && !word.starts_with("pg_try_advisory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_sorted() {
        assert!(NOT_SETTING.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn ordinary_statements_need_no_check() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
            "INSERT INTO app.t (a) VALUES (1) ON CONFLICT (a) DO NOTHING",
            "SELECT count(*), max(x), coalesce(y, 0) FROM t WHERE z IN (1, 2) AND EXISTS (SELECT 1)",
            "CREATE TABLE t (id int PRIMARY KEY, b numeric(10, 2) CHECK (b > 0))",
            "CREATE INDEX i ON t (a)",
            "COPY foo (id, name) FROM STDIN",
            "SELECT now(), pg_catalog.upper('x'), pg_sleep(0.1), row_number() OVER (PARTITION BY a)",
            "SELECT 'my_func(1)'",
            "UPDATE t SET a = a + 1 WHERE id = 3",
        ] {
            assert!(!may_change_settings(sql, false), "{sql}");
        }
    }

    #[test]
    fn set_config_do_and_unknown_functions_need_a_check() {
        for sql in [
            "SELECT set_config('search_path', 's1', false)",
            "select PG_CATALOG.SET_CONFIG('a.b', '1', false)",
            "DO $$ BEGIN PERFORM set_config('x.y', '1', false); END $$",
            "DO $$ BEGIN EXECUTE 'SET search_path TO s1'; END $$",
            "SELECT my_function()",
            "SELECT app.f(1)",
            "CALL refresh_all()",
            "SELECT \"MixedCase\"(2)",
            "SELECT * FROM t WHERE id = lookup_id($1)",
        ] {
            assert!(may_change_settings(sql, false), "{sql}");
        }
    }

    #[test]
    fn a_glance_vouches_only_for_what_the_lexer_would_pass() {
        for sql in [
            "INSERT INTO pgbench_history (tid, bid) VALUES (1, 2)",
            "SELECT count(*), max(a) FROM t WHERE x IN (1, (2))",
            "CREATE TABLE t (a numeric(10, 2))",
        ] {
            assert!(no_unknown_call_at_a_glance(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT f(1)",
            "SELECT app.count(1)",
            "SELECT \"f\"(1)",
            "SELECT f/**/(1)",
            "SELECT 'x' || g (2)",
            "SELECT \"f\" (1)",
            "SELECT f /* c */ (1)",
        ] {
            assert!(!no_unknown_call_at_a_glance(sql.as_bytes()), "{sql}");
        }
        assert!(has_word_do(b"x; DO $$ $$") && has_word_do(b"do"));
        assert!(!has_word_do(b"SELECT random() FROM todo, dot"));
    }

    #[test]
    fn unknown_functions_are_named() {
        assert_eq!(
            unknown_functions("SELECT app.f(1), count(*), G(2), \"Mixed\"(3), f(4) FROM t"),
            vec!["f".to_string(), "g".into(), "Mixed".into()]
        );
        assert!(unknown_functions("SELECT 1").is_empty());
    }

    #[test]
    fn function_bodies_are_read_for_settings() {
        for (lang, body, may) in [
            ("c", "anything", false),
            ("internal", "int4pl", false),
            ("plpgsql", "BEGIN RETURN 1; END", false),
            ("sql", "SELECT $1 + 1", false),
            ("plpgsql", "BEGIN UPDATE t SET a = 1; RETURN 1; END", false),
            (
                "plpgsql",
                "BEGIN PERFORM set_config('a.b', '1', false); RETURN 1; END",
                true,
            ),
            (
                "plpgsql",
                "BEGIN SET search_path TO s1; RETURN 1; END",
                true,
            ),
            ("plpgsql", "BEGIN IF x THEN RESET ALL; END IF; END", true),
            ("plpgsql", "BEGIN EXECUTE 'SE' || 'T x = 1'; END", true),
            ("plpgsql", "BEGIN RETURN other_func(); END", true),
            ("plpython3u", "return 1", true),
        ] {
            assert_eq!(body_may_change_settings(lang, body), may, "{lang}: {body}");
        }
    }

    #[test]
    fn set_config_names_are_read_from_literals() {
        assert_eq!(
            set_config_names(
                "SELECT set_config('MyApp.User', '1', false), pg_catalog.set_config(E'a.b', $1, false), set_config($2, 'x', false)"
            ),
            vec!["myapp.user".to_string(), "a.b".to_string()]
        );
    }

    #[test]
    fn trusting_functions_keeps_set_config_and_do() {
        assert!(!may_change_settings("SELECT my_function()", true));
        assert!(may_change_settings(
            "SELECT set_config('a.b', '1', false)",
            true
        ));
        assert!(may_change_settings("do 'BEGIN NULL; END'", true));
        assert!(!may_change_settings("DOMAIN", true));
        assert!(may_change_settings("SELECT 1; DO 'BEGIN NULL; END'", true));
    }
}
