//! The opening of a client connection: SSL/GSS negotiation, CancelRequest,
//! StartupMessage, and the session settings it asks for.

use crate::app::Shared;
use crate::error::Error;
use crate::net::Conn;
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, StartupPacket, StartupParams};

pub enum Opening {
    Startup(StartupParams),
    /// A CancelRequest was handled; the connection just closes.
    Cancelled,
}

/// Reads packets until a StartupMessage or CancelRequest, upgrading to TLS
/// when the client asks and sluice offers it. Returns the connection as it
/// ends up (None when a TLS handshake failed half-way) and the outcome.
pub async fn open(mut conn: Conn, shared: &Shared) -> (Option<Conn>, Result<Opening, Error>) {
    let tls = shared.config().general.client_tls.clone();
    // As PostgreSQL's ProcessStartupPacket: each kind of encryption is
    // negotiated once, and TLS once set up rules out GSS. Another request
    // is then a startup packet of protocol 1234.5679 (or .5680), refused.
    let (mut ssl_done, mut gss_done) = (false, false);
    if let Some(acceptor) = &tls.acceptor
        && conn.starts_with_tls().await
    {
        // Direct TLS (PostgreSQL 17): only with ALPN "postgresql", as PostgreSQL requires.
        conn = match conn.accept_tls(acceptor).await {
            Ok(c) => c,
            Err(e) => return (None, Err(e)),
        };
        if conn.alpn() != Some(crate::net::tls::ALPN_POSTGRESQL) {
            let e = Error::refuse(
                sqlstate::PROTOCOL_VIOLATION,
                "direct TLS connection without ALPN protocol \"postgresql\"",
            );
            return (Some(conn), Err(e));
        }
        (ssl_done, gss_done) = (true, true);
    }
    loop {
        let pkt = match conn.read_startup_packet().await {
            Ok(p) => p,
            Err(e) => return (Some(conn), Err(e)),
        };
        let parsed = match startup::parse(&pkt) {
            Ok(p) => p,
            Err(e) => return (Some(conn), Err(e.into())),
        };
        let parsed = match parsed {
            StartupPacket::SslRequest if ssl_done => StartupPacket::Unsupported {
                major: 1234,
                minor: 5679,
            },
            StartupPacket::GssEncRequest if gss_done => StartupPacket::Unsupported {
                major: 1234,
                minor: 5680,
            },
            other => other,
        };
        match parsed {
            StartupPacket::SslRequest => {
                ssl_done = true;
                let Some(acceptor) = tls.acceptor.as_ref().filter(|_| !conn.stream.is_tls()) else {
                    if let Err(e) = conn.write_all(b"N").await {
                        return (Some(conn), Err(e));
                    }
                    continue;
                };
                if !conn.rbuf.is_empty() {
                    // CVE-2021-23214: plaintext pipelined after SSLRequest.
                    let e = Error::refuse(
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request",
                    );
                    return (Some(conn), Err(e));
                }
                if let Err(e) = conn.write_all(b"S").await {
                    return (Some(conn), Err(e));
                }
                match conn.accept_tls(acceptor).await {
                    Ok(c) => conn = c,
                    Err(e) => return (None, Err(e)),
                }
                gss_done = true;
            }
            StartupPacket::GssEncRequest => {
                gss_done = true;
                if let Err(e) = conn.write_all(b"N").await {
                    return (Some(conn), Err(e));
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                super::peer_cancel::handle(shared, pid, secret, false).await;
                return (Some(conn), Ok(Opening::Cancelled));
            }
            StartupPacket::PeerCancel { pid, secret } => {
                super::peer_cancel::handle(shared, pid, secret, true).await;
                return (Some(conn), Ok(Opening::Cancelled));
            }
            StartupPacket::Startup(_) if tls.required && !conn.stream.is_tls() => {
                let e = Error::refuse(
                    sqlstate::INVALID_AUTHORIZATION,
                    "TLS is required: connect with sslmode=require (client_tls_mode = require)",
                );
                return (Some(conn), Err(e));
            }
            StartupPacket::Startup(p) => return (Some(conn), Ok(Opening::Startup(p))),
            StartupPacket::Unsupported { major, minor } => {
                let msg = format!(
                    "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                );
                return (
                    Some(conn),
                    Err(Error::refuse(sqlstate::FEATURE_NOT_SUPPORTED, msg)),
                );
            }
        }
    }
}

/// The settings a client asked for at startup, to apply on its server with
/// set_config: every parameter except the ones that pick the connection,
/// with `options` (`-c name=value`) expanded.
pub fn session_settings(p: &StartupParams) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for (k, v) in &p.params {
        match k.as_str() {
            "user" | "database" => {}
            "replication" => {
                return Err(Error::refuse(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "replication connections are not supported through sluice",
                ));
            }
            "options" => out.extend(
                startup::parse_options(v)
                    .map_err(|m| Error::refuse(sqlstate::PROTOCOL_VIOLATION, m))?,
            ),
            k if k.starts_with("_pq_.") => {}
            _ => out.push((k.clone(), v.clone())),
        }
    }
    Ok(out)
}

/// Protocol options (`_pq_.*`) the client asked for, which sluice does not support.
pub fn unsupported_options(p: &StartupParams) -> Vec<&str> {
    p.params
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with("_pq_."))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> StartupParams {
        StartupParams {
            minor: 0,
            params: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn settings_expand_options_and_skip_identity() {
        let s = session_settings(&params(&[
            ("user", "u"),
            ("database", "d"),
            ("application_name", "app"),
            ("options", "-c statement_timeout=5s"),
            ("_pq_.x", "1"),
        ]))
        .unwrap();
        assert_eq!(
            s,
            vec![
                ("application_name".into(), "app".into()),
                ("statement_timeout".into(), "5s".into())
            ]
        );
    }

    #[test]
    fn replication_is_refused() {
        assert!(session_settings(&params(&[("replication", "true")])).is_err());
    }
}
