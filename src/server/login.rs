//! Opening a server connection: TCP connect, StartupMessage, authentication
//! (trust, cleartext, md5, SCRAM-SHA-256), then ParameterStatus and
//! BackendKeyData up to the first ReadyForQuery.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::ScramClientAuth;
use tokio::net::TcpStream;

use crate::auth::md5;
use crate::config::HostPort;
use crate::error::{Error, ServerError};
use crate::net::{Conn, PgStream};
use crate::protocol::build;
use crate::protocol::inspect::{self, ErrorFields, take_cstr, take_i32};
use crate::protocol::tags::BackendTag;

/// Auth messages from a server are small; anything bigger is hostile.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

/// How sluice proves itself to PostgreSQL.
#[derive(Clone)]
pub enum ServerPassword {
    None,
    Plain(String),
    /// md5(password || user) in hex: enough for md5 auth, not for SCRAM.
    Md5Hash(String),
    /// SCRAM pass-through: the user's verifier, and the ClientKey learnt
    /// from the first client that logged in with it.
    PassThrough(std::sync::Arc<PassThrough>),
}

pub struct PassThrough {
    pub verifier: crate::auth::secret::ScramVerifier,
    client_key: std::sync::Mutex<Option<Vec<u8>>>,
}

impl PassThrough {
    pub fn new(verifier: crate::auth::secret::ScramVerifier) -> Self {
        Self {
            verifier,
            client_key: std::sync::Mutex::new(None),
        }
    }

    pub fn learn(&self, key: Vec<u8>) {
        *self.client_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    fn key(&self) -> Option<Vec<u8>> {
        self.client_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for ServerPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerPassword(<redacted>)")
    }
}

/// Everything needed to open one server connection.
#[derive(Debug, Clone)]
pub struct ServerTarget {
    pub addr: HostPort,
    pub dbname: String,
    pub user: String,
    pub password: ServerPassword,
    pub connect_timeout: Duration,
    pub tls: crate::config::ServerTls,
    /// Sent at login unless empty, so that a DBA can tell sluice's own
    /// connections apart in pg_stat_activity.
    pub application_name: String,
    /// `replication=database`: a logical replication connection.
    pub replication: bool,
}

/// What the server told us during login.
pub struct LoginResult {
    pub conn: Conn,
    pub params: BTreeMap<String, String>,
    pub key: (i32, i32),
}

pub async fn connect(t: &ServerTarget) -> Result<LoginResult, ServerError> {
    let addr = t.addr.to_string();
    let fut = async {
        let tcp = TcpStream::connect((t.addr.host.as_str(), t.addr.port))
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = negotiate_tls(tcp, t)
            .await
            .map_err(|e| ServerError::from_io(&addr, e))?;
        let mut conn = Conn::new(stream);
        login(&mut conn, t)
            .await
            .map_err(|e| ServerError::from_io(&addr, e))?;
        finish_startup(conn, &addr).await
    };
    match tokio::time::timeout(t.connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(ServerError::ConnectTimeout { addr }),
    }
}

/// SSLRequest to the server as server_tls_mode says. Exactly one byte is
/// read before the handshake, so nothing the server sent in plaintext can be
/// taken for TLS data.
async fn negotiate_tls(mut tcp: TcpStream, t: &ServerTarget) -> Result<PgStream, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(connector) = &t.tls.connector else {
        return Ok(PgStream::Plain(tcp));
    };
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(Error::from_read)?;
    match answer[0] {
        b'S' => {
            let name = rustls::pki_types::ServerName::try_from(t.addr.host.clone())
                .map_err(|e| auth_err(t, format!("invalid server name for TLS: {e}")))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| auth_err(t, format!("TLS handshake failed: {e}")))?;
            Ok(PgStream::ServerTls(Box::new(tls)))
        }
        b'N' if !t.tls.mode.required() => Ok(PgStream::Plain(tcp)),
        b'N' => Err(auth_err(
            t,
            format!(
                "server does not support TLS (server_tls_mode = {:?})",
                t.tls.mode
            ),
        )),
        other => Err(auth_err(
            t,
            format!("unexpected answer {other} to SSLRequest"),
        )),
    }
}

fn auth_err(t: &ServerTarget, detail: impl Into<String>) -> Error {
    Error::Server(ServerError::Auth {
        addr: t.addr.to_string(),
        detail: detail.into(),
    })
}

fn plain<'a>(t: &'a ServerTarget, method: &str) -> Result<&'a str, Error> {
    match &t.password {
        ServerPassword::Plain(p) => Ok(p),
        _ => Err(auth_err(
            t,
            format!(
                "server asks for {method} but no plaintext server password is configured for user \"{}\"",
                t.user
            ),
        )),
    }
}

/// Runs the authentication exchange until AuthenticationOk.
async fn login(conn: &mut Conn, t: &ServerTarget) -> Result<(), Error> {
    let mut out = BytesMut::new();
    let mut params = vec![("user", t.user.as_str()), ("database", t.dbname.as_str())];
    if !t.application_name.is_empty() {
        params.push(("application_name", t.application_name.as_str()));
    }
    if t.replication {
        params.push(("replication", "database"));
    }
    build::startup(&mut out, &params);
    conn.write_all(&out).await?;
    let mut sasl = Sasl::None;
    loop {
        let f = conn.read_frame(MAX_AUTH_MESSAGE).await?;
        match BackendTag::from_byte(f.tag) {
            BackendTag::ErrorResponse => {
                return Err(Error::Server(ServerError::Refused {
                    addr: t.addr.to_string(),
                    fields: ErrorFields::parse(f.body()),
                }));
            }
            BackendTag::NoticeResponse | BackendTag::NegotiateProtocolVersion => continue,
            BackendTag::Authentication => {}
            _ => {
                let msg = format!(
                    "unexpected message '{}' during authentication",
                    f.tag as char
                );
                return Err(auth_err(t, msg));
            }
        }
        let (code, data) =
            take_i32(f.body()).ok_or_else(|| auth_err(t, "short authentication message"))?;
        let mut out = BytesMut::new();
        match code {
            0 => return Ok(()),
            3 => build::password(&mut out, plain(t, "a cleartext password")?.as_bytes()),
            5 => {
                let salt: [u8; 4] = data.try_into().map_err(|_| auth_err(t, "bad md5 salt"))?;
                let hash = match &t.password {
                    ServerPassword::Plain(p) => md5::stored_hash(&t.user, p),
                    ServerPassword::Md5Hash(h) => h.clone(),
                    ServerPassword::None | ServerPassword::PassThrough(_) => {
                        return Err(auth_err(
                            t,
                            "server asks for md5 but no server password is configured",
                        ));
                    }
                };
                build::password(&mut out, md5::response_from_hash(&hash, &salt).as_bytes());
            }
            10..=12 => sasl = sasl_step(code, data, t, sasl, &mut out)?,
            other => {
                return Err(auth_err(
                    t,
                    format!("unsupported authentication method {other}"),
                ));
            }
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
        }
    }
}

/// Where a SCRAM exchange with the server stands.
enum Sasl {
    None,
    /// With a plaintext password (pgwire's client).
    First(pgwire::api::auth::sasl::scram::ScramClientAuthWaitingForServerFirst),
    Final(pgwire::api::auth::sasl::scram::ScramClientAuthWaitingForServerFinal),
    /// Pass-through with a ClientKey learnt from a client.
    Key(crate::auth::scram::KeyLogin, Vec<u8>),
    Done,
}

/// One SASL step (AuthenticationSASL, SASLContinue, SASLFinal).
fn sasl_step(
    code: i32,
    data: &[u8],
    t: &ServerTarget,
    st: Sasl,
    out: &mut BytesMut,
) -> Result<Sasl, Error> {
    match (code, st, &t.password) {
        (10, Sasl::None, ServerPassword::PassThrough(pt)) => {
            let key = pt.key().ok_or_else(|| {
                auth_err(t, "SCRAM pass-through: no client has logged in yet to learn the key; set server_password")
            })?;
            let (first, login) = crate::auth::scram::KeyLogin::start();
            build::sasl_initial_response(out, "SCRAM-SHA-256", first.as_bytes());
            Ok(Sasl::Key(login, key))
        }
        (10, Sasl::None, _) => {
            if !sasl_mechanisms(data).any(|m| m == b"SCRAM-SHA-256") {
                return Err(auth_err(
                    t,
                    "server offers no SASL mechanism sluice supports",
                ));
            }
            let client =
                ScramClientAuth::new(t.user.clone(), plain(t, "SCRAM-SHA-256")?.to_string());
            let (first, waiting) = client
                .build_client_first()
                .map_err(|e| auth_err(t, e.to_string()))?;
            build::sasl_initial_response(out, "SCRAM-SHA-256", first.as_bytes());
            Ok(Sasl::First(waiting))
        }
        (11, Sasl::Key(mut login, key), ServerPassword::PassThrough(pt)) => {
            let fin = login
                .finish(data, &pt.verifier, &key)
                .map_err(|e| auth_err(t, e))?;
            build::sasl_response(out, fin.as_bytes());
            Ok(Sasl::Key(login, key))
        }
        (11, Sasl::First(w), _) => {
            // PBKDF2 runs as many rounds as the server says: bound what a
            // hostile server can make sluice compute.
            let rounds = crate::auth::scram::iterations(data).unwrap_or(0);
            if !(1..=crate::auth::scram::MAX_ITERATIONS).contains(&rounds) {
                return Err(auth_err(
                    t,
                    format!("server asks for {rounds} SCRAM iterations"),
                ));
            }
            let (fin, waiting) = w
                .build_client_final(data)
                .map_err(|e| auth_err(t, e.to_string()))?;
            build::sasl_response(out, fin.as_bytes());
            Ok(Sasl::Final(waiting))
        }
        (12, Sasl::Key(login, _), _) if login.verify(data) => Ok(Sasl::Done),
        (12, Sasl::Final(w), _) => {
            w.verify_server_final(data)
                .map_err(|e| auth_err(t, format!("server signature invalid: {e}")))?;
            Ok(Sasl::Done)
        }
        (12, _, _) => Err(auth_err(t, "server signature invalid")),
        (code, _, _) => Err(auth_err(t, format!("unexpected SASL message {code}"))),
    }
}

fn sasl_mechanisms(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (m, rest) = take_cstr(data)?;
        data = rest;
        (!m.is_empty()).then_some(m)
    })
}

/// Collects ParameterStatus and BackendKeyData until ReadyForQuery.
async fn finish_startup(mut conn: Conn, addr: &str) -> Result<LoginResult, ServerError> {
    let mut params = BTreeMap::new();
    let mut key = (0, 0);
    loop {
        let f = conn
            .read_frame(MAX_AUTH_MESSAGE)
            .await
            .map_err(|e| ServerError::from_io(addr, e))?;
        match BackendTag::from_byte(f.tag) {
            BackendTag::ParameterStatus => {
                if let Some((k, v)) = inspect::parameter_status(f.body()) {
                    params.insert(k, v);
                }
            }
            BackendTag::BackendKeyData => {
                key = inspect::backend_key_data(f.body()).unwrap_or((0, 0))
            }
            BackendTag::ReadyForQuery => return Ok(LoginResult { conn, params, key }),
            BackendTag::ErrorResponse => {
                return Err(ServerError::Refused {
                    addr: addr.to_string(),
                    fields: ErrorFields::parse(f.body()),
                });
            }
            BackendTag::NoticeResponse => {}
            _ => {
                return Err(ServerError::Protocol {
                    addr: addr.to_string(),
                    detail: format!(
                        "unexpected message '{}' after authentication",
                        f.tag as char
                    ),
                });
            }
        }
    }
}
