//! Test certificates made with rcgen: a CA, a server certificate for
//! localhost / 127.0.0.1 signed by it, and an unrelated CA.

use std::path::PathBuf;
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct TestCerts {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate with CN = the SCRAM test user.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

pub fn certs() -> &'static TestCerts {
    static CERTS: OnceLock<TestCerts> = OnceLock::new();
    CERTS.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join(format!("sluice-it-{}", std::process::id()))
            .join("certs");
        std::fs::create_dir_all(&dir).expect("certs dir");
        let (ca_pem, issuer) = ca("sluice test CA");
        let (other_pem, _) = ca("unrelated CA");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let ckey = KeyPair::generate().expect("client key");
        let mut cparams = CertificateParams::new(Vec::<String>::new()).expect("client params");
        cparams
            .distinguished_name
            .push(DnType::CommonName, super::cluster::SCRAM_USER.0);
        let ccert = cparams
            .signed_by(&ckey, &issuer)
            .expect("client certificate");
        let c = TestCerts {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        for (path, text) in [
            (&c.ca, ca_pem),
            (&c.other_ca, other_pem),
            (&c.cert, cert.pem()),
            (&c.key, key.serialize_pem()),
            (&c.client_cert, ccert.pem()),
            (&c.client_key, ckey.serialize_pem()),
        ] {
            std::fs::write(path, text).expect("write certificate");
        }
        c
    })
}
