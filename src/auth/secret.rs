//! A user's configured secret: plaintext, an md5 hash or a SCRAM verifier.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};

/// Iterations PostgreSQL uses by default (scram_iterations).
pub const SCRAM_ITERATIONS: usize = 4096;

/// A SCRAM-SHA-256 verifier as PostgreSQL stores it in pg_authid.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramVerifier {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let v = Self {
            iterations: iter.parse().ok().filter(|&n| n > 0)?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored).ok()?,
            server_key: STANDARD.decode(server).ok()?,
        };
        (v.stored_key.len() == 32 && v.server_key.len() == 32 && !v.salt.is_empty()).then_some(v)
    }

    /// Derives a verifier from a plaintext password with a random salt.
    pub fn from_password(password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
        Self::from_scram_secret(ScramSecret::verifier_from_salted_password(
            salt.to_vec(),
            salted,
            SCRAM_ITERATIONS,
        ))
    }

    /// A verifier no password matches, so unknown users fail exactly like wrong passwords.
    pub fn impossible() -> Self {
        Self {
            iterations: SCRAM_ITERATIONS,
            salt: rand::random::<[u8; 16]>().to_vec(),
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    fn from_scram_secret(s: ScramSecret) -> Self {
        match s {
            ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            } => Self {
                iterations,
                salt,
                stored_key,
                server_key,
            },
            // verifier_from_salted_password always returns a Verifier.
            ScramSecret::SaltedPassword { salt, .. } => Self {
                salt,
                ..Self::impossible()
            },
        }
    }

    pub fn to_scram_secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

impl std::fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramVerifier(<redacted>)")
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// No password configured: the user may log in only with auth_type = "trust".
    None,
    /// Plaintext, with a SCRAM verifier derived from it once at load time.
    Plain {
        password: String,
        verifier: ScramVerifier,
    },
    /// `md5` followed by 32 hex digits: md5(password || user).
    Md5(String),
    Scram(ScramVerifier),
}

impl Secret {
    pub fn parse(user: &str, s: &str) -> Result<Self, String> {
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(s).map(Secret::Scram).ok_or_else(|| {
                "malformed SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
                    .to_string()
            });
        }
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Secret::Md5(s[3..].to_ascii_lowercase()));
        }
        if s.is_empty() {
            return Err(format!(
                "empty password for user \"{user}\"; omit the key instead"
            ));
        }
        Ok(Secret::Plain {
            password: s.to_string(),
            verifier: ScramVerifier::from_password(s),
        })
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Secret::None => "none",
            Secret::Plain { .. } => "plain",
            Secret::Md5(_) => "md5",
            Secret::Scram(_) => "scram",
        };
        write!(f, "Secret({kind}, <redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_postgres_verifier() {
        // A verifier in the format PostgreSQL 15 stores in pg_authid.
        let v = "SCRAM-SHA-256$4096:yzr9mJ2hqlOgNiTIuzr76g==$1FSr+F/cqz+pKxDYsrA3HKzrtY+UwVJXgK6VslRjabY=:+YMRj3kxU6XmVUtL1ENM6YM4KwOT5y0HMYs4HiwWiW0=";
        let s = Secret::parse("u", v).unwrap();
        assert!(matches!(s, Secret::Scram(ref v) if v.iterations == 4096));
        assert!(Secret::parse("u", "SCRAM-SHA-256$4096:abc$x:y").is_err());
    }

    #[test]
    fn md5_and_plain_are_told_apart() {
        assert!(matches!(
            Secret::parse("u", "md5d21a2fdb1d8d14b0cd8c1e2ef1e9c4f1"),
            Ok(Secret::Md5(_))
        ));
        assert!(matches!(
            Secret::parse("u", "md5short"),
            Ok(Secret::Plain { .. })
        ));
        assert!(Secret::parse("u", "").is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let s = Secret::parse("u", "hunter2").unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
