//! The untyped packets a connection opens with, parsed from one validated packet.

use super::inspect::{take_cstr, take_i32};
use super::tags::codes;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A cancel another sluice passes on: handled here or dropped.
    PeerCancel {
        pid: i32,
        secret: i32,
    },
    Startup(StartupParams),
    /// A protocol major version other than 3.
    Unsupported {
        major: u16,
        minor: u16,
    },
}

/// A StartupMessage: the requested minor version and its parameters in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    #[error("invalid length of startup packet")]
    BadLength,
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Layout,
    #[error("invalid startup packet: parameter is not valid UTF-8")]
    Encoding,
}

/// Parses a whole untyped packet (length word included) whose length was
/// already checked by `frame::peek_startup_len`.
pub fn parse(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    let (_len, rest) = take_i32(packet).ok_or(StartupError::BadLength)?;
    let (code, body) = take_i32(rest).ok_or(StartupError::BadLength)?;
    let code = code as u32;
    match code {
        codes::SSL_REQUEST | codes::GSSENC_REQUEST if !body.is_empty() => {
            Err(StartupError::BadLength)
        }
        codes::SSL_REQUEST => Ok(StartupPacket::SslRequest),
        codes::GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        codes::CANCEL_REQUEST | codes::PEER_CANCEL_REQUEST => {
            if body.len() != 8 {
                return Err(StartupError::BadLength);
            }
            let (pid, rest) = take_i32(body).ok_or(StartupError::BadLength)?;
            let (secret, _) = take_i32(rest).ok_or(StartupError::BadLength)?;
            Ok(if code == codes::CANCEL_REQUEST {
                StartupPacket::Cancel { pid, secret }
            } else {
                StartupPacket::PeerCancel { pid, secret }
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Ok(StartupPacket::Unsupported { major, minor });
            }
            Ok(StartupPacket::Startup(StartupParams {
                minor,
                params: parse_params(body)?,
            }))
        }
    }
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        match body {
            [0] => return Ok(params),
            [] => return Err(StartupError::Layout),
            _ => {}
        }
        let (key, rest) = take_cstr(body).ok_or(StartupError::Layout)?;
        let (value, rest) = take_cstr(rest).ok_or(StartupError::Layout)?;
        let key = std::str::from_utf8(key).map_err(|_| StartupError::Encoding)?;
        let value = std::str::from_utf8(value).map_err(|_| StartupError::Encoding)?;
        params.push((key.to_owned(), value.to_owned()));
        body = rest;
    }
}

/// Splits the `options` startup parameter the way PostgreSQL does
/// (`-c name=value`, `--name=value`, backslash escapes a space) into settings.
/// Returns an error naming the first word it cannot understand.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
                .ok_or_else(|| "-c requires a name=value argument".to_string())?
        } else if let Some(s) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            s.to_string()
        } else {
            return Err(format!(
                "invalid command-line argument for server process: {w}"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("invalid option \"{setting}\": expected name=value"))?;
        out.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parses_startup_parameters_in_order() {
        let p = parse(&packet(codes::PROTOCOL_3_0, b"user\0app\0database\0db\0\0")).unwrap();
        let StartupPacket::Startup(s) = p else {
            panic!("not a startup: {p:?}")
        };
        assert_eq!(s.get("user"), Some("app"));
        assert_eq!(s.get("database"), Some("db"));
        assert_eq!(s.minor, 0);
    }

    #[test]
    fn rejects_missing_terminator_and_dangling_key() {
        assert_eq!(
            parse(&packet(codes::PROTOCOL_3_0, b"user\0app\0")),
            Err(StartupError::Layout)
        );
        assert_eq!(
            parse(&packet(codes::PROTOCOL_3_0, b"user\0\0")),
            Err(StartupError::Layout)
        );
        assert_eq!(
            parse(&packet(codes::PROTOCOL_3_0, b"user")),
            Err(StartupError::Layout)
        );
    }

    #[test]
    fn recognises_ssl_gss_cancel_and_old_protocols() {
        assert_eq!(
            parse(&packet(codes::SSL_REQUEST, b"")),
            Ok(StartupPacket::SslRequest)
        );
        assert_eq!(
            parse(&packet(codes::GSSENC_REQUEST, b"")),
            Ok(StartupPacket::GssEncRequest)
        );
        assert_eq!(
            parse(&packet(codes::CANCEL_REQUEST, &[0, 0, 0, 5, 0, 0, 0, 6])),
            Ok(StartupPacket::Cancel { pid: 5, secret: 6 })
        );
        assert_eq!(
            parse(&packet(codes::CANCEL_REQUEST, &[0, 0, 0, 5])),
            Err(StartupError::BadLength)
        );
        assert_eq!(
            parse(&packet(2 << 16, b"")),
            Ok(StartupPacket::Unsupported { major: 2, minor: 0 })
        );
    }

    #[test]
    fn options_follow_postgres_syntax() {
        let o =
            parse_options("-c statement_timeout=5s --search-path=a,b -csearch_path=x\\ y").unwrap();
        assert_eq!(
            o,
            vec![
                ("statement_timeout".into(), "5s".into()),
                ("search_path".into(), "a,b".into()),
                ("search_path".into(), "x y".into()),
            ]
        );
        assert!(parse_options("-c").is_err());
        assert!(parse_options("bogus").is_err());
        assert!(parse_options("-c novalue").is_err());
    }
}
