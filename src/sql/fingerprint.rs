//! A statement's shape for log lines: its tokens with every value written
//! into it replaced by `?`, so that a log never carries a query's data.

use super::lex::{Lexer, Token};

/// Characters of shape a log line keeps.
const MAX_LEN: usize = 160;

/// `SELECT add_item('x', 3)` becomes `select add_item ( ? , ? )`.
/// Parameters (`$1`) are kept: they are placeholders, not values.
pub fn fingerprint(sql: &str) -> String {
    let mut out = String::new();
    let mut dollar = false;
    for (t, _) in Lexer::new(sql) {
        let piece: &str = match &t {
            Token::Word(w) => w,
            Token::Quoted(q) => q,
            Token::Literal(l) if dollar => l,
            Token::Literal(_) => "?",
            Token::Punct(_) => "",
        };
        if !out.is_empty() && !dollar {
            out.push(' ');
        }
        match t {
            Token::Punct(c) => out.push(c),
            _ => out.push_str(piece),
        }
        dollar = matches!(t, Token::Punct('$'));
        if out.len() > MAX_LEN {
            let mut end = MAX_LEN;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push_str(" ...");
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn values_are_left_out_and_placeholders_kept() {
        assert_eq!(
            fingerprint("SELECT add_item('secret', 42) FROM t WHERE id = $1"),
            "select add_item ( ? , ? ) from t where id = $1"
        );
        let long = format!("SELECT {}", "x, ".repeat(200));
        assert!(fingerprint(&long).len() < 200);
    }
}
