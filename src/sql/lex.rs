//! A small SQL lexer that knows PostgreSQL's quoting: enough to split a
//! Query string into statements and read their leading words, never to
//! understand them. Strings ('..', E'..', $tag$..$tag$), quoted identifiers
//! and comments are skipped as units, so a ';' inside them does not split.

use std::borrow::Cow;

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
        // Only these bytes can start a quote, a comment or a new statement.
        if !matches!(s[i], b'-' | b'/' | b'\'' | b'"' | b'$' | b';') {
            i += 1;
            continue;
        }
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
    /// Borrowed from the statement, or from a keyword table, unless it had
    /// to be lowercased: every routed query is tokenized.
    Word(Cow<'a, str>),
    Quoted(&'a str),
    Literal(&'a str),
    Punct(char),
}

/// `word` in lowercase, allocating only for a word with capitals that is
/// not a common keyword.
fn lowercase(word: &str) -> Cow<'_, str> {
    if !word.bytes().any(|b| b.is_ascii_uppercase()) {
        return Cow::Borrowed(word);
    }
    let mut buf = [0u8; 12];
    if let Some(b) = buf.get_mut(..word.len()) {
        b.copy_from_slice(word.as_bytes());
        b.make_ascii_lowercase();
        if let Some(k) = keyword(b) {
            return Cow::Borrowed(k);
        }
    }
    Cow::Owned(word.to_ascii_lowercase())
}

/// Keywords queries are mostly written with, as static lowercase text.
fn keyword(w: &[u8]) -> Option<&'static str> {
    Some(match w {
        b"select" => "select",
        b"from" => "from",
        b"where" => "where",
        b"and" => "and",
        b"or" => "or",
        b"not" => "not",
        b"in" => "in",
        b"as" => "as",
        b"on" => "on",
        b"is" => "is",
        b"null" => "null",
        b"join" => "join",
        b"left" => "left",
        b"inner" => "inner",
        b"order" => "order",
        b"group" => "group",
        b"by" => "by",
        b"limit" => "limit",
        b"offset" => "offset",
        b"having" => "having",
        b"distinct" => "distinct",
        b"union" => "union",
        b"all" => "all",
        b"with" => "with",
        b"values" => "values",
        b"insert" => "insert",
        b"into" => "into",
        b"update" => "update",
        b"delete" => "delete",
        b"set" => "set",
        b"returning" => "returning",
        b"for" => "for",
        b"begin" => "begin",
        b"commit" => "commit",
        b"rollback" => "rollback",
        b"case" => "case",
        b"when" => "when",
        b"then" => "then",
        b"else" => "else",
        b"end" => "end",
        b"exists" => "exists",
        b"between" => "between",
        b"like" => "like",
        b"asc" => "asc",
        b"desc" => "desc",
        b"count" => "count",
        b"true" => "true",
        b"false" => "false",
        _ => return None,
    })
}

/// Tokens of one statement (comments dropped).
pub fn tokens(stmt: &str) -> Vec<Token<'_>> {
    spanned_tokens(stmt).into_iter().map(|(t, _)| t).collect()
}

/// Tokens with the byte offset where each starts.
pub fn spanned_tokens(stmt: &str) -> Vec<(Token<'_>, usize)> {
    Lexer::new(stmt).collect()
}

/// Bytes that continue an identifier or keyword.
static WORD_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        b += 1;
    }
    t
};

/// The tokens of a statement, one at a time, with the byte offset where
/// each starts: a caller that can decide early stops early, and needs no
/// list of them.
pub struct Lexer<'a> {
    stmt: &'a str,
    i: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(stmt: &'a str) -> Self {
        Self { stmt, i: 0 }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = (Token<'a>, usize);

    fn next(&mut self) -> Option<Self::Item> {
        let (stmt, s) = (self.stmt, self.stmt.as_bytes());
        while self.i < s.len() {
            let c = s[self.i];
            let at = self.i;
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
                let end = s[at..]
                    .iter()
                    .position(|b| !WORD_BYTE[*b as usize])
                    .map_or(s.len(), |n| at + n);
                if end - at == 1 && matches!(c, b'e' | b'E') && s.get(end) == Some(&b'\'') {
                    self.i = skip_quoted(s, end).unwrap_or(s.len());
                    return Some((Token::Literal(&stmt[at..self.i]), at));
                }
                self.i = end;
                return Some((Token::Word(lowercase(&stmt[at..end])), at));
            } else if let Some(end) = skip_quoted(s, self.i) {
                self.i = end.max(at + 1);
                let text = &stmt[at..end];
                match c {
                    b'"' => return Some((Token::Quoted(text), at)),
                    b'\'' | b'$' => return Some((Token::Literal(text), at)),
                    _ => {} // comment
                }
            } else if c.is_ascii_digit() {
                let end = s[at..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.'))
                    .map_or(s.len(), |n| at + n);
                self.i = end;
                return Some((Token::Literal(&stmt[at..end]), at));
            } else {
                let ch = stmt[at..].chars().next().unwrap_or(' ');
                self.i += ch.len_utf8();
                return Some((Token::Punct(ch), at));
            }
        }
        None
    }
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
    fn words_are_lowercased_without_allocating_where_they_can() {
        let t = tokens("SELECT Abalance FROM x WHERE ÄB = 1");
        assert!(matches!(&t[0], Token::Word(Cow::Borrowed("select"))));
        assert!(matches!(&t[1], Token::Word(Cow::Owned(w)) if w == "abalance"));
        assert!(matches!(&t[2], Token::Word(Cow::Borrowed("from"))));
        assert!(matches!(&t[3], Token::Word(Cow::Borrowed("x"))));
        assert_eq!(t[5], Token::Word("Äb".into()), "only ASCII is folded");
        assert_eq!(
            tokens("A_VERY_LONG_NAME")[0],
            Token::Word("a_very_long_name".into())
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
