//! "Did you mean": the key the file probably meant, when serde refuses an
//! unknown one ("unknown field `listen_adress`, expected one of ...").

/// `message` with a suggestion appended when it names an unknown key that
/// is a small typo away from one it expected.
pub fn did_you_mean(message: &str) -> String {
    let Some(suggestion) = closest(message) else {
        return message.to_string();
    };
    format!("{}\ndid you mean `{suggestion}`?", message.trim_end())
}

fn closest(message: &str) -> Option<&str> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split("expected one of ").nth(1)?;
    let candidates = expected.split(", ").filter_map(|c| {
        c.trim()
            .trim_start_matches("or ")
            .strip_prefix('`')?
            .split('`')
            .next()
    });
    // A typo, not another word: at most a third of the name changed.
    let limit = (unknown.len() / 3).max(1);
    candidates
        .map(|c| (strsim::levenshtein(unknown, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_gets_the_key_it_meant_and_a_stranger_nothing() {
        let m = "TOML parse error at line 2\nunknown field `listen_adress`, expected one of `listen_addr`, `pool_mode`";
        assert!(did_you_mean(m).ends_with("did you mean `listen_addr`?"));
        let m = "unknown field `colour`, expected one of `listen_addr`, `pool_mode`";
        assert_eq!(did_you_mean(m), m);
        let m = "unknown field `pol_mode`, expected `pool_mode` or `route`";
        assert_eq!(did_you_mean(m), m, "another shape of message: left alone");
        assert_eq!(
            did_you_mean("missing field `primary`"),
            "missing field `primary`"
        );
    }
}
