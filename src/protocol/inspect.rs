//! Typed views of the few message bodies sluice reads. They take a body slice
//! (after the 5-byte header) and never panic on malformed input.

use super::tags::TxnStatus;

/// Splits a NUL-terminated string off the front of `buf`.
pub fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

pub fn take_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some((i32::from_be_bytes(bytes), &buf[4..]))
}

/// Status byte of a ReadyForQuery body.
pub fn ready_status(body: &[u8]) -> Option<TxnStatus> {
    match body {
        [b] => TxnStatus::from_byte(*b),
        _ => None,
    }
}

/// A ParameterStatus body: name and value.
pub fn parameter_status(body: &[u8]) -> Option<(String, String)> {
    let (name, rest) = take_cstr(body)?;
    let (value, _) = take_cstr(rest)?;
    Some((
        String::from_utf8_lossy(name).into_owned(),
        String::from_utf8_lossy(value).into_owned(),
    ))
}

/// A BackendKeyData body (protocol 3.0: two int32).
pub fn backend_key_data(body: &[u8]) -> Option<(i32, i32)> {
    let (pid, rest) = take_i32(body)?;
    let (secret, _) = take_i32(rest)?;
    Some((pid, secret))
}

/// The fields of an ErrorResponse or NoticeResponse that sluice uses.
/// A server's message may lack any of them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

impl ErrorFields {
    pub fn parse(mut body: &[u8]) -> Self {
        let mut f = Self::default();
        while let [field, rest @ ..] = body {
            if *field == 0 {
                break;
            }
            let Some((value, rest)) = take_cstr(rest) else {
                break;
            };
            let value = || Some(String::from_utf8_lossy(value).into_owned());
            match field {
                b'V' => f.severity = value(),
                b'S' if f.severity.is_none() => f.severity = value(),
                b'C' => f.code = value(),
                b'M' => f.message = value(),
                _ => {}
            }
            body = rest;
        }
        f
    }

    pub fn code_or_internal(&self) -> &str {
        self.code
            .as_deref()
            .unwrap_or(super::sqlstate::INTERNAL_ERROR)
    }

    pub fn message_or_default(&self) -> &str {
        self.message
            .as_deref()
            .unwrap_or("server error without a message")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_fields_tolerate_truncation_and_missing_code() {
        let e = ErrorFields::parse(b"SERROR\0Mboom");
        assert_eq!(e.severity.as_deref(), Some("ERROR"));
        assert_eq!(e.code, None);
        assert_eq!(e.message, None);
        assert_eq!(e.code_or_internal(), "XX000");
    }

    #[test]
    fn ready_status_rejects_bad_bodies() {
        assert_eq!(ready_status(b"I"), Some(TxnStatus::Idle));
        assert_eq!(ready_status(b"X"), None);
        assert_eq!(ready_status(b"II"), None);
    }

    #[test]
    fn parameter_status_needs_two_strings() {
        assert_eq!(parameter_status(b"a\0b\0"), Some(("a".into(), "b".into())));
        assert_eq!(parameter_status(b"a\0b"), None);
    }

    #[test]
    fn key_data_needs_eight_bytes() {
        assert_eq!(backend_key_data(&[0, 0, 0, 7, 0, 0, 0, 9]), Some((7, 9)));
        assert_eq!(backend_key_data(&[0, 0, 0, 7, 0]), None);
    }
}
