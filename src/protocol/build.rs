//! Builders for the messages sluice writes itself. Infallible: each appends
//! one complete frame to `out`.

use bytes::{BufMut, BytesMut};

use super::tags::TxnStatus;

/// Appends a typed message whose body is written by `body`: the one place
/// that writes a length for a message sluice builds.
pub(crate) fn typed(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_u32(0);
    body(out);
    let len = (out.len() - start - 1) as u32;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

fn cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
            Self::Notice => "NOTICE",
            Self::Warning => "WARNING",
        }
    }
}

/// ErrorResponse ('E') or NoticeResponse ('N') with severity, code and message.
pub fn error_or_notice(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let tag = match severity {
        Severity::Error | Severity::Fatal => b'E',
        Severity::Notice | Severity::Warning => b'N',
    };
    typed(out, tag, |b| {
        for (field, value) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(field);
            cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn error(out: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    error_or_notice(out, severity, code, message)
}

/// PostgreSQL's own error for a prepared statement whose row shape changed
/// under it, with the routine field drivers look for (asyncpg re-prepares
/// on it).
pub fn stale_plan_error(out: &mut BytesMut) {
    typed(out, b'E', |b| {
        for (field, value) in [
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', super::sqlstate::FEATURE_NOT_SUPPORTED),
            (b'M', "cached plan must not change result type"),
            (b'F', "plancache.c"),
            (b'R', "RevalidateCachedQuery"),
        ] {
            b.put_u8(field);
            cstr(b, value.as_bytes());
        }
        b.put_u8(0);
    });
}

pub fn ready_for_query(out: &mut BytesMut, status: TxnStatus) {
    typed(out, b'Z', |b| b.put_u8(status.byte()));
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    typed(out, b'S', |b| {
        cstr(b, name.as_bytes());
        cstr(b, value.as_bytes());
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    typed(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// Authentication request ('R') with a code and raw payload.
pub fn authentication(out: &mut BytesMut, code: i32, payload: &[u8]) {
    typed(out, b'R', |b| {
        b.put_i32(code);
        b.put_slice(payload);
    });
}

pub fn auth_sasl_mechanisms(out: &mut BytesMut, mechanisms: &[&str]) {
    typed(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

/// NegotiateProtocolVersion: the newest minor we speak and the options we ignored.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: u32, unsupported: &[&str]) {
    typed(out, b'v', |b| {
        b.put_u32(minor);
        b.put_u32(unsupported.len() as u32);
        for o in unsupported {
            cstr(b, o.as_bytes());
        }
    });
}

/// RowDescription with text columns.
pub fn row_description(out: &mut BytesMut, names: &[&str]) {
    typed(out, b'T', |b| {
        b.put_i16(names.len() as i16);
        for n in names {
            cstr(b, n.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_i32(25); // text
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values (None is NULL).
pub fn data_row(out: &mut BytesMut, values: &[Option<&str>]) {
    typed(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    typed(out, b'C', |b| cstr(b, tag.as_bytes()));
}

// ---- frontend messages sluice sends to servers ----

/// StartupMessage for protocol 3.0.
pub fn startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_u32(0);
    out.put_u32(super::tags::codes::PROTOCOL_3_0);
    for (k, v) in params {
        cstr(out, k.as_bytes());
        cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - start) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u32(16);
    out.put_u32(super::tags::codes::CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// A CancelRequest passed to a peer sluice (see `codes::PEER_CANCEL_REQUEST`).
pub fn peer_cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u32(16);
    out.put_u32(super::tags::codes::PEER_CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

pub fn password(out: &mut BytesMut, password: &[u8]) {
    typed(out, b'p', |b| cstr(b, password));
}

pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    typed(out, b'p', |b| {
        cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    typed(out, b'p', |b| b.put_slice(data));
}

pub fn query(out: &mut BytesMut, sql: &str) {
    typed(out, b'Q', |b| cstr(b, sql.as_bytes()));
}

/// Parse of the unnamed statement with untyped parameters.
pub fn parse_unnamed(out: &mut BytesMut, sql: &str) {
    typed(out, b'P', |b| {
        b.put_u8(0);
        cstr(b, sql.as_bytes());
        b.put_i16(0);
    });
}

/// Bind of the unnamed portal to the unnamed statement, text parameters and results.
pub fn bind_unnamed_text(out: &mut BytesMut, params: &[&str]) {
    typed(out, b'B', |b| {
        b.put_u8(0);
        b.put_u8(0);
        b.put_i16(0);
        b.put_i16(params.len() as i16);
        for p in params {
            b.put_i32(p.len() as i32);
            b.put_slice(p.as_bytes());
        }
        b.put_i16(0);
    });
}

pub fn execute_unnamed(out: &mut BytesMut) {
    typed(out, b'E', |b| {
        b.put_u8(0);
        b.put_i32(0);
    });
}

pub fn sync(out: &mut BytesMut) {
    typed(out, b'S', |_| {});
}

pub fn flush(out: &mut BytesMut) {
    typed(out, b'H', |_| {});
}

pub fn terminate(out: &mut BytesMut) {
    typed(out, b'X', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split;
    use crate::protocol::inspect::ErrorFields;

    #[test]
    fn error_response_round_trips_through_inspect() {
        let mut out = BytesMut::new();
        error(
            &mut out,
            Severity::Fatal,
            "28P01",
            "password authentication failed for user \"x\"",
        );
        let f = split(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag, b'E');
        let e = ErrorFields::parse(f.body());
        assert_eq!(e.code.as_deref(), Some("28P01"));
        assert_eq!(e.severity.as_deref(), Some("FATAL"));
    }

    #[test]
    fn ready_for_query_is_six_bytes() {
        let mut out = BytesMut::new();
        ready_for_query(&mut out, TxnStatus::InTransaction);
        assert_eq!(&out[..], b"Z\0\0\0\x05T");
    }

    #[test]
    fn startup_packet_length_covers_itself() {
        let mut out = BytesMut::new();
        startup(&mut out, &[("user", "u"), ("database", "d")]);
        assert_eq!(
            u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize,
            out.len()
        );
        assert_eq!(*out.last().unwrap(), 0);
    }
}
