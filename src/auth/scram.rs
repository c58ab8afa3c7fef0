//! SCRAM-SHA-256 pass-through (RFC 5802 arithmetic, done here because
//! pgwire's SCRAM types keep ClientKey to themselves): recover a client's
//! ClientKey from its proof against a stored verifier, and log in to
//! PostgreSQL with that ClientKey instead of a plaintext password. Works when
//! the configured verifier is the one PostgreSQL stores (same salt and
//! iteration count).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::secret::ScramVerifier;

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// client-first-message-bare: the client-first message without its GS2 header.
fn first_bare(client_first: &str) -> Option<&str> {
    let mut commas = client_first.match_indices(',');
    commas.next()?;
    let (i, _) = commas.next()?;
    Some(&client_first[i + 1..])
}

/// The most PBKDF2 rounds sluice computes for a server (PostgreSQL's
/// default is 4096).
pub const MAX_ITERATIONS: usize = 1_000_000;

/// The iteration count (`i=`) of a server-first message.
pub fn iterations(server_first: &[u8]) -> Option<usize> {
    std::str::from_utf8(server_first)
        .ok()?
        .split(',')
        .find_map(|p| p.strip_prefix("i=")?.parse().ok())
}

/// The ClientKey behind a client's proof, once pgwire has accepted it.
pub fn recover_client_key(
    v: &ScramVerifier,
    client_first: &[u8],
    server_first: &str,
    client_final: &[u8],
) -> Option<Vec<u8>> {
    let bare = first_bare(std::str::from_utf8(client_first).ok()?)?;
    let client_final = std::str::from_utf8(client_final).ok()?;
    let (without_proof, proof) = client_final.rsplit_once(",p=")?;
    let proof = STANDARD.decode(proof).ok()?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let key = xor(&proof, &hmac(&v.stored_key, auth_message.as_bytes()));
    (key.len() == 32 && Sha256::digest(&key).as_slice() == v.stored_key.as_slice()).then_some(key)
}

/// A SCRAM login to PostgreSQL with a ClientKey.
pub struct KeyLogin {
    nonce: String,
    bare: String,
    expected_server_signature: Option<String>,
}

impl KeyLogin {
    /// The client-first message (the user name comes from the StartupMessage).
    pub fn start() -> (String, Self) {
        let nonce = STANDARD.encode(rand::random::<[u8; 18]>());
        let bare = format!("n=,r={nonce}");
        (
            format!("n,,{bare}"),
            Self {
                nonce,
                bare,
                expected_server_signature: None,
            },
        )
    }

    /// The client-final message for the server-first message `server_first`.
    pub fn finish(
        &mut self,
        server_first: &[u8],
        v: &ScramVerifier,
        client_key: &[u8],
    ) -> Result<String, String> {
        let sf =
            std::str::from_utf8(server_first).map_err(|_| "server-first message is not UTF-8")?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in sf.split(',') {
            match part.split_once('=') {
                Some(("r", x)) => nonce = Some(x),
                Some(("s", x)) => salt = STANDARD.decode(x).ok(),
                Some(("i", x)) => iterations = x.parse::<usize>().ok(),
                _ => {}
            }
        }
        let nonce = nonce
            .filter(|n| n.starts_with(&self.nonce))
            .ok_or("server nonce does not extend ours")?;
        if salt.as_deref() != Some(v.salt.as_slice()) || iterations != Some(v.iterations) {
            return Err("the server's SCRAM secret differs from the configured verifier (salt or iterations)".into());
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{sf},{without_proof}", self.bare);
        let proof = xor(client_key, &hmac(&v.stored_key, auth_message.as_bytes()));
        self.expected_server_signature =
            Some(STANDARD.encode(hmac(&v.server_key, auth_message.as_bytes())));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final message: the server knows the verifier too.
    pub fn verify(&self, server_final: &[u8]) -> bool {
        let sf = String::from_utf8_lossy(server_final);
        match (&self.expected_server_signature, sf.strip_prefix("v=")) {
            (Some(expected), Some(got)) => expected == got,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwire::api::auth::sasl::scram::ScramClientAuth;

    #[test]
    fn recovered_key_logs_in_against_the_same_verifier() {
        // A client with the password authenticates against a verifier...
        let v = ScramVerifier::from_password("secret");
        let client = ScramClientAuth::new("u".into(), "secret".into());
        let (first, w1) = client.build_client_first().unwrap();
        let server = pgwire::api::auth::sasl::scram::ScramServerAuth::new();
        let (server_first, w) = server
            .on_client_first_message_with_secret(first.as_bytes(), v.to_scram_secret())
            .unwrap();
        let (client_final, _) = w1.build_client_final(server_first.as_bytes()).unwrap();
        w.on_client_final_message(client_final.as_bytes()).unwrap();
        let key = recover_client_key(&v, first.as_bytes(), &server_first, client_final.as_bytes())
            .expect("ClientKey");

        // ...and sluice's key login passes a server holding the same verifier.
        let (kfirst, mut login) = KeyLogin::start();
        let server = pgwire::api::auth::sasl::scram::ScramServerAuth::new();
        let (sfirst, w) = server
            .on_client_first_message_with_secret(kfirst.as_bytes(), v.to_scram_secret())
            .unwrap();
        let kfinal = login.finish(sfirst.as_bytes(), &v, &key).unwrap();
        let server_final = w
            .on_client_final_message(kfinal.as_bytes())
            .expect("server accepts the proof");
        assert!(login.verify(server_final.as_bytes()));
        assert!(!login.verify(b"v=AAAA"));
    }

    #[test]
    fn iteration_count_is_read_from_server_first() {
        assert_eq!(iterations(b"r=abc,s=c2FsdA==,i=4096"), Some(4096));
        assert_eq!(iterations(b"r=abc,s=c2FsdA=="), None);
        assert_eq!(iterations(b"r=abc,i=lots"), None);
    }

    #[test]
    fn wrong_proof_recovers_nothing() {
        let v = ScramVerifier::from_password("secret");
        assert_eq!(
            recover_client_key(
                &v,
                b"n,,n=,r=abc",
                "r=abcdef,s=c2FsdA==,i=4096",
                b"c=biws,r=abcdef,p=AAAA"
            ),
            None
        );
        assert_eq!(recover_client_key(&v, b"garbage", "x", b"y"), None);
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use pgwire::api::auth::sasl::scram::ScramServerAuth;

    /// Whatever a client sends, pgwire's SCRAM parser and ours return errors, never panic.
    #[test]
    fn malformed_scram_messages_do_not_panic() {
        let v = ScramVerifier::from_password("secret");
        let firsts: &[&[u8]] = &[
            b"",
            b"n",
            b"n,",
            b"n,,",
            b"n,,r",
            b"n,,n=,r=",
            b"p=x,,n=,r=a",
            b"y,,n=u,r=\xff",
            b"n,a=,n=,r=\xc3",
        ];
        for first in firsts {
            let server = ScramServerAuth::new();
            if let Ok((server_first, w)) =
                server.on_client_first_message_with_secret(first, v.to_scram_secret())
            {
                for fin in [
                    &b""[..],
                    b"c=biws",
                    b"c=biws,r=x,p=",
                    b"c=biws,r=x,p=!!!!",
                    b",p=AAAA",
                ] {
                    let _ = w.on_client_final_message(fin);
                    let _ = recover_client_key(&v, first, &server_first, fin);
                }
            }
            let _ = recover_client_key(&v, first, "r=x", b"c=biws,r=x,p=AAAA");
        }
        let (_, mut login) = KeyLogin::start();
        for sf in [&b""[..], b"r=", b"r=zz,s=!!,i=-1", b"\xff"] {
            assert!(login.finish(sf, &v, &[0u8; 32]).is_err());
        }
    }
}
