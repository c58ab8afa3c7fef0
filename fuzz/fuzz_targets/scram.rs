//! SCRAM messages from both directions: a client's first and final messages
//! (with sluice's ClientKey recovery), a server's first and final messages
//! (pass-through login), and stored secrets.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::auth::scram::{KeyLogin, iterations, recover_client_key};
use sluice::auth::secret::{ScramVerifier, Secret};

/// Derived once: PBKDF2 per input would leave the fuzzer at ~100 runs/s.
fn verifier() -> &'static ScramVerifier {
    static V: std::sync::OnceLock<ScramVerifier> = std::sync::OnceLock::new();
    V.get_or_init(|| match Secret::parse("u", "password") {
        Ok(Secret::Plain { verifier, .. }) => verifier,
        _ => unreachable!("a plain password derives a verifier"),
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Stored verifiers and md5 hashes; anything else is a plain password.
    if text.starts_with("SCRAM-SHA-256$") || text.starts_with("md5") {
        let _ = Secret::parse("u", &text);
    }
    let _ = iterations(data);
    let v = verifier();
    let mut parts = data.splitn(3, |b| *b == 0);
    let (a, b, c) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let _ = recover_client_key(v, a, &String::from_utf8_lossy(b), c);
    let (_, mut login) = KeyLogin::start();
    let _ = login.finish(a, v, &[0u8; 32]);
    let _ = login.verify(b);
});
