//! SCRAM-SHA-256 login, the CPU a pooler spends per new client: sluice's
//! server side (pgwire's exchange against a stored verifier, plus the
//! ClientKey recovery for pass-through) and, for reference, the PBKDF2 a
//! plaintext password costs when a verifier is derived from it. The
//! handshake figure includes the client computing its proof (a few HMACs).
//! Run: cargo bench --bench scram

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, KeyInit, Mac};
use pgwire::api::auth::sasl::scram::{ScramServerAuth, gen_salted_password};
use sha2::{Digest, Sha256};
use sluice::auth::scram::{KeyLogin, recover_client_key};
use sluice::auth::secret::{SCRAM_ITERATIONS, ScramVerifier};

fn hmac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// A verifier for "secret" and the ClientKey a client derives from it.
fn verifier_and_client_key() -> (ScramVerifier, Vec<u8>) {
    let salt = b"sluice-bench-salt".to_vec();
    let salted = gen_salted_password("secret", &salt, SCRAM_ITERATIONS);
    let client_key = hmac(&salted, b"Client Key");
    let v = ScramVerifier {
        iterations: SCRAM_ITERATIONS,
        salt,
        stored_key: Sha256::digest(&client_key).to_vec(),
        server_key: hmac(&salted, b"Server Key"),
    };
    (v, client_key)
}

fn bench_scram(c: &mut Criterion) {
    let (v, client_key) = verifier_and_client_key();
    let mut g = c.benchmark_group("scram");
    g.bench_function("handshake_with_verifier", |b| {
        b.iter(|| {
            let (client_first, mut client) = KeyLogin::start();
            let (server_first, waiting) = ScramServerAuth::new()
                .on_client_first_message_with_secret(client_first.as_bytes(), v.to_scram_secret())
                .expect("valid client-first");
            let client_final = client
                .finish(server_first.as_bytes(), &v, &client_key)
                .expect("valid server-first");
            let server_final = waiting
                .on_client_final_message(client_final.as_bytes())
                .expect("proof accepted");
            let key = recover_client_key(
                &v,
                client_first.as_bytes(),
                &server_first,
                client_final.as_bytes(),
            );
            assert!(client.verify(server_final.as_bytes()) && key.is_some());
        })
    });
    g.sample_size(10);
    g.bench_function("pbkdf2_4096_from_plain_password", |b| {
        b.iter(|| ScramVerifier::from_password("secret"))
    });
    g.finish();
}

criterion_group!(benches, bench_scram);
criterion_main!(benches);
