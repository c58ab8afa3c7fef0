//! A small SQL lexer that knows PostgreSQL's quoting: enough to split a
//! Query string into statements and read their leading words, never to
//! understand them. Strings ('..', E'..', $tag$..$tag$), quoted identifiers
//! and comments are skipped as units, so a ';' inside them does not split.

/// Byte offset just past the quoted construct or comment starting at `i`,
/// or `None` when `s[i..]` does not start one.
fn skip_quoted(s: &[u8], i: usize) -> Option<usize> {
    let rest = &s[i..];
    match rest {
        [b'-', b'-', ..] => Some(
            s[i..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(s.len(), |p| i + p + 1),
        ),
        [b'/', b'*', ..] => {
            // Block comments nest in PostgreSQL.
            let (mut depth, mut j) = (0usize, i);
            while j < s.len() {
                if s[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if s[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        return Some(j);
                    }
                } else {
                    j += 1;
                }
            }
            Some(s.len())
        }
        [b'\'', ..] => Some(skip_string(
            s,
            i + 1,
            i > 0 && matches!(s[i - 1], b'e' | b'E'),
        )),
        [b'"', ..] => Some(
            s[i + 1..]
                .iter()
                .position(|&b| b == b'"')
                .map_or(s.len(), |p| i + p + 2),
        ),
        [b'$', ..] => {
            let tag_len = rest[1..]
                .iter()
                .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_'))?;
            if rest.get(1 + tag_len) != Some(&b'$') || rest.get(1).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let tag = &rest[..tag_len + 2];
            let body = i + tag.len();
            Some(find(&s[body..], tag).map_or(s.len(), |p| body + p + tag.len()))
        }
        _ => None,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// End of a single-quoted string whose body starts at `i`.
fn skip_string(s: &[u8], mut i: usize, backslash_escapes: bool) -> usize {
    while i < s.len() {
        match s[i] {
            b'\\' if backslash_escapes => i += 2,
            b'\'' if s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// The statements of a (possibly multi-statement) Query string, trimmed,
/// without empty ones.
pub fn statements(sql: &str) -> Vec<&str> {
    let s = sql.as_bytes();
    let (mut out, mut start, mut i) = (Vec::new(), 0, 0);
    while i < s.len() {
        if let Some(end) = skip_quoted(s, i) {
            i = end.max(i + 1);
        } else if s[i] == b';' {
            push_trimmed(&mut out, &sql[start..i]);
            i += 1;
            start = i;
        } else {
            i += 1;
        }
    }
    push_trimmed(&mut out, &sql[start.min(sql.len())..]);
    out
}

fn push_trimmed<'a>(out: &mut Vec<&'a str>, stmt: &'a str) {
    let t = strip_leading_comments(stmt).trim();
    if !t.is_empty() {
        out.push(t);
    }
}

/// `stmt` without leading whitespace and comments.
pub fn strip_leading_comments(stmt: &str) -> &str {
    let rest = strip_leading_comments_bytes(stmt.as_bytes());
    // `rest` starts after ASCII whitespace or a comment's ASCII end: a
    // character boundary.
    &stmt[stmt.len() - rest.len()..]
}

/// The same on bytes not yet checked as UTF-8. Whitespace is PostgreSQL's:
/// ASCII only.
pub fn strip_leading_comments_bytes(stmt: &[u8]) -> &[u8] {
    let mut t = trim_space(stmt);
    while t.starts_with(b"--") || t.starts_with(b"/*") {
        let end = skip_quoted(t, 0).unwrap_or(t.len());
        t = trim_space(&t[end.min(t.len())..]);
    }
    t
}

fn trim_space(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| is_space(**c)).count();
    &b[n..]
}

/// PostgreSQL's whitespace between tokens.
pub fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// A token: a word (identifier or keyword, lowercased unless quoted), or
/// any other single character; strings and dollar-quoted bodies are whole tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token<'a> {
    Word(String),
    Quoted(&'a str),
    Literal(&'a str),
    Punct(char),
}

/// Tokens of one statement (comments dropped).
pub fn tokens(stmt: &str) -> Vec<Token<'_>> {
    spanned_tokens(stmt).into_iter().map(|(t, _)| t).collect()
}

/// Tokens with the byte offset where each starts.
pub fn spanned_tokens(stmt: &str) -> Vec<(Token<'_>, usize)> {
    let s = stmt.as_bytes();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < s.len() {
        let c = s[i];
        let at = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let start = i;
            while i < s.len()
                && (s[i].is_ascii_alphanumeric() || s[i] == b'_' || s[i] == b'$' || s[i] >= 0x80)
            {
                i += 1;
            }
            if i < s.len() && s[i] == b'\'' && i - start == 1 && matches!(c, b'e' | b'E') {
                let end = skip_quoted(s, i).unwrap_or(s.len());
                out.push((Token::Literal(&stmt[start..end]), at));
                i = end;
            } else {
                out.push((Token::Word(stmt[start..i].to_ascii_lowercase()), at));
            }
        } else if let Some(end) = skip_quoted(s, i) {
            let text = &stmt[i..end];
            match c {
                b'"' => out.push((Token::Quoted(text), at)),
                b'\'' | b'$' => out.push((Token::Literal(text), at)),
                _ => {} // comment
            }
            i = end.max(i + 1);
        } else if c.is_ascii_digit() {
            let start = i;
            while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'.') {
                i += 1;
            }
            out.push((Token::Literal(&stmt[start..i]), at));
        } else {
            let ch = stmt[i..].chars().next().unwrap_or(' ');
            out.push((Token::Punct(ch), at));
            i += ch.len_utf8();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes() {
        let sql = "SET a = 'x;y'; select \"se;mi\" -- c;\n; DO $f$ BEGIN; END $f$ ; /* a; /* b; */ c; */ SELECT 1;";
        assert_eq!(
            statements(sql),
            vec![
                "SET a = 'x;y'",
                "select \"se;mi\" -- c;",
                "DO $f$ BEGIN; END $f$",
                "SELECT 1"
            ]
        );
    }

    #[test]
    fn escape_strings_and_doubled_quotes() {
        assert_eq!(
            statements(r"SELECT E'a\';b'; SELECT 'it''s;'"),
            vec![r"SELECT E'a\';b'", "SELECT 'it''s;'"]
        );
        assert_eq!(
            statements("SELECT $1; SELECT 2"),
            vec!["SELECT $1", "SELECT 2"]
        );
    }

    #[test]
    fn tokens_lowercase_words_and_keep_literals() {
        let t = tokens("SET Search_Path TO \"My\", public, E'x'");
        assert_eq!(
            t,
            vec![
                Token::Word("set".into()),
                Token::Word("search_path".into()),
                Token::Word("to".into()),
                Token::Quoted("\"My\""),
                Token::Punct(','),
                Token::Word("public".into()),
                Token::Punct(','),
                Token::Literal("E'x'"),
            ]
        );
    }

    #[test]
    fn unterminated_constructs_do_not_panic() {
        for s in [
            "'abc", "\"abc", "$a$ x", "/* x", "-- x", "E'\\", "$", "$1", "é;ü",
        ] {
            let _ = statements(s);
            let _ = tokens(s);
        }
    }
}
