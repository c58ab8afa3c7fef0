//! Authenticating a client against its configured secret: SCRAM-SHA-256
//! (with a stored verifier, so the plaintext is never needed at login), md5
//! or trust. Unknown users go through the same exchange and fail with the
//! same message as a wrong password, so user names cannot be probed.

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use pgwire::error::PgWireError;

use super::md5;
use super::secret::{ScramVerifier, Secret};
use crate::config::{AuthType, User};
use crate::error::Error;
use crate::net::Conn;
use crate::protocol::build;
use crate::protocol::inspect::{take_cstr, take_i32};
use crate::protocol::sqlstate;
use crate::protocol::tags::FrontendTag;

/// PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH.
const MAX_AUTH_MESSAGE: usize = 65_535;

fn failed(user: &str) -> Error {
    Error::refuse(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

fn malformed(what: &str) -> Error {
    Error::refuse(sqlstate::PROTOCOL_VIOLATION, format!("malformed {what}"))
}

enum Method {
    Trust,
    /// A verified client certificate naming the user.
    Cert,
    /// The stored hash: md5(password || user) in hex.
    Md5(String),
    /// `learn_key`: recover the ClientKey, which only a stored verifier
    /// needs (with a plain password sluice logs in to PostgreSQL itself).
    Scram {
        verifier: ScramVerifier,
        learn_key: bool,
    },
    /// A user that may not log in: run an exchange that cannot succeed.
    Reject(AuthType),
}

fn method(name: &str, user: Option<&User>, auth_type: AuthType) -> Method {
    if auth_type == AuthType::Cert {
        return Method::Cert;
    }
    let Some(u) = user else {
        return Method::Reject(auth_type);
    };
    match (auth_type, &u.secret) {
        (AuthType::Trust, _) => Method::Trust,
        (_, Secret::None) => Method::Reject(auth_type),
        (AuthType::Md5, Secret::Plain { password, .. }) => {
            Method::Md5(md5::stored_hash(name, password))
        }
        (_, Secret::Md5(hash)) => Method::Md5(hash.clone()),
        (_, Secret::Plain { verifier, .. }) => Method::Scram {
            verifier: verifier.clone(),
            learn_key: false,
        },
        (_, Secret::Scram(verifier)) => Method::Scram {
            verifier: verifier.clone(),
            learn_key: true,
        },
    }
}

/// Runs the exchange; on success the caller sends AuthenticationOk. A SCRAM
/// login against a stored verifier also yields the client's ClientKey, with
/// which sluice can log in to PostgreSQL (pass-through); one against a plain
/// password does not spend the HMACs that takes. SCRAM's last message
/// (AuthenticationSASLFinal) is appended to `owed`, not written: the caller
/// sends it in the same write as AuthenticationOk, which saves a write and
/// a wake-up of the client per login.
pub async fn authenticate(
    conn: &mut Conn,
    name: &str,
    user: Option<&User>,
    auth_type: AuthType,
    owed: &mut BytesMut,
) -> Result<Option<Vec<u8>>, Error> {
    match method(name, user, auth_type) {
        Method::Trust => Ok(None),
        Method::Cert => match conn.client_cert_cn() {
            Some(cn) if cn == name => Ok(None),
            _ => Err(Error::refuse(
                sqlstate::INVALID_AUTHORIZATION,
                format!("certificate authentication failed for user \"{name}\""),
            )),
        },
        Method::Md5(stored) => md5_exchange(conn, name, Some(&stored)).await.map(|()| None),
        Method::Scram {
            verifier,
            learn_key,
        } => scram_exchange(conn, name, &verifier, learn_key, owed).await,
        Method::Reject(AuthType::Md5) => md5_exchange(conn, name, None).await.map(|()| None),
        Method::Reject(_) => {
            let impossible = ScramVerifier::impossible();
            scram_exchange(conn, name, &impossible, false, owed).await
        }
    }
}

/// Reads the client's next 'p' message body.
async fn read_password_message(conn: &mut Conn) -> Result<bytes::Bytes, Error> {
    let f = conn.read_frame(MAX_AUTH_MESSAGE).await?;
    // A client may quit in the middle of authenticating: a clean close.
    if FrontendTag::from_byte(f.tag) == FrontendTag::Terminate {
        return Err(Error::Eof);
    }
    if FrontendTag::from_byte(f.tag) != FrontendTag::Password {
        return Err(Error::refuse(
            sqlstate::PROTOCOL_VIOLATION,
            format!("expected password response, got message type {}", f.tag),
        ));
    }
    Ok(f.bytes.slice(crate::protocol::frame::HEADER_LEN..))
}

async fn md5_exchange(conn: &mut Conn, name: &str, stored: Option<&str>) -> Result<(), Error> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    build::authentication(&mut out, 5, &salt);
    conn.write_all(&out).await?;
    let body = read_password_message(conn).await?;
    let (got, _) = take_cstr(&body).ok_or_else(|| malformed("password message"))?;
    match stored {
        Some(s) if md5::responses_match(&md5::response_from_hash(s, &salt), got) => Ok(()),
        _ => Err(failed(name)),
    }
}

async fn scram_exchange(
    conn: &mut Conn,
    name: &str,
    verifier: &ScramVerifier,
    learn_key: bool,
    owed: &mut BytesMut,
) -> Result<Option<Vec<u8>>, Error> {
    let mut out = BytesMut::new();
    build::auth_sasl_mechanisms(&mut out, &["SCRAM-SHA-256"]);
    conn.write_all(&out).await?;

    let body = read_password_message(conn).await?;
    let (mechanism, rest) = take_cstr(&body).ok_or_else(|| malformed("SASL initial response"))?;
    if mechanism != b"SCRAM-SHA-256" {
        return Err(Error::refuse(
            sqlstate::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let (len, data) = take_i32(rest).ok_or_else(|| malformed("SASL initial response"))?;
    if len < 0 || len as usize != data.len() {
        return Err(malformed("SASL initial response"));
    }
    let server = ScramServerAuth::new();
    let (server_first, waiting) = server
        .on_client_first_message_with_secret(data, verifier.to_scram_secret())
        .map_err(|_| malformed("SCRAM client-first message"))?;
    out.clear();
    build::authentication(&mut out, 11, server_first.as_bytes());
    conn.write_all(&out).await?;

    let client_final = read_password_message(conn).await?;
    match waiting.on_client_final_message(&client_final) {
        Ok(server_final) => {
            build::authentication(owed, 12, server_final.as_bytes());
            if !learn_key {
                return Ok(None);
            }
            super::scram::recover_client_key(verifier, data, &server_first, &client_final)
                .map(Some)
                .ok_or_else(|| malformed("SCRAM client-final message"))
        }
        Err(PgWireError::InvalidPassword(_)) => Err(failed(name)),
        // A proof of the wrong length or a bad nonce is a failed login too.
        Err(_) => Err(failed(name)),
    }
}
