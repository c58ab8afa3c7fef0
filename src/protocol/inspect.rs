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

/// A fingerprint of a statement's result shape from its RowDescription
/// (`T`) or NoData (`n`) body: each column's name, type and type modifier,
/// which PostgreSQL compares before it runs a prepared statement again
/// after a schema change (not the table and column numbers, which a table
/// made again with the same columns changes).
pub fn row_shape(tag: u8, body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    tag.hash(&mut h);
    let mut rest = body.get(2..).unwrap_or(&[]);
    while let Some((name, tail)) = take_cstr(rest) {
        // table oid (4), column number (2), type oid (4), size (2), typmod (4), format (2)
        let Some(f) = tail.get(..18) else {
            break;
        };
        name.hash(&mut h);
        f[6..10].hash(&mut h);
        f[12..16].hash(&mut h);
        rest = &tail[18..];
    }
    h.finish()
}

/// Why a replica refused a statement (`ErrorFields::replica_refusal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 25006: the statement writes (a function's body, nextval, ...).
    ReadOnly,
    /// Only a primary can do it (WAL control functions, strong locks).
    Recovery,
    /// Cancelled by a conflict with WAL replay: transient, so the statement
    /// is not marked primary-only.
    RecoveryConflict,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [Self::ReadOnly, Self::Recovery, Self::RecoveryConflict];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::Recovery => "recovery",
            Self::RecoveryConflict => "recovery_conflict",
        }
    }

    /// Whether the statement will fail on every replica the same way.
    pub fn is_lasting(self) -> bool {
        self != Self::RecoveryConflict
    }
}

/// The fields of an ErrorResponse or NoticeResponse that sluice uses.
/// A server's message may lack any of them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    /// The server function that raised it (field R).
    pub routine: Option<String>,
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
                b'R' => f.routine = value(),
                _ => {}
            }
            body = rest;
        }
        f
    }

    /// A prepared statement the server holds was planned against an older
    /// schema: "cached plan must not change result type" (known by its
    /// routine, since the message is translated), or a type it used is
    /// gone (an untranslated internal error).
    pub fn is_stale_statement(&self) -> bool {
        match self.code.as_deref() {
            Some("0A000") => self.routine.as_deref() == Some("RevalidateCachedQuery"),
            Some("XX000") => self
                .message
                .as_deref()
                .is_some_and(|m| m.starts_with("cache lookup failed for type")),
            _ => false,
        }
    }

    /// Why a replica refused a statement that the primary would run: an
    /// ERROR (not FATAL) PostgreSQL raises only on a standby. None for any
    /// other error.
    pub fn replica_refusal(&self) -> Option<Refusal> {
        if self.severity.as_deref() != Some("ERROR") {
            return None;
        }
        let message = self.message.as_deref().unwrap_or("");
        let recovery =
            message.contains("recovery is in progress") || message.contains("during recovery");
        match self.code.as_deref()? {
            // "cannot execute INSERT in a read-only transaction", "cannot
            // execute nextval() during recovery", ...
            "25006" => Some(Refusal::ReadOnly),
            // pg_current_wal_lsn(): "recovery is in progress"; locks above
            // RowExclusiveLock "while recovery is in progress".
            "55000" if recovery => Some(Refusal::Recovery),
            // A query cancelled because WAL replay needed what it read.
            "40001" if message.contains("conflict with recovery") => {
                Some(Refusal::RecoveryConflict)
            }
            _ if recovery => Some(Refusal::Recovery),
            _ => None,
        }
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
    fn only_what_a_standby_alone_raises_is_a_replica_refusal() {
        let r = |body: &[u8]| ErrorFields::parse(body).replica_refusal();
        assert_eq!(
            r(b"SERROR\0VERROR\0C25006\0Mcannot execute INSERT in a read-only transaction\0\0"),
            Some(Refusal::ReadOnly)
        );
        assert_eq!(
            r(b"VERROR\0C55000\0Mrecovery is in progress\0\0"),
            Some(Refusal::Recovery)
        );
        assert_eq!(
            r(b"VERROR\0C40001\0Mcanceling statement due to conflict with recovery\0\0"),
            Some(Refusal::RecoveryConflict)
        );
        assert!(!Refusal::RecoveryConflict.is_lasting());
        // The same codes for other reasons, and a FATAL, are not.
        assert_eq!(
            r(b"VERROR\0C55000\0Mcannot refresh materialized view concurrently\0\0"),
            None
        );
        assert_eq!(r(b"VERROR\0C40001\0Mcould not serialize access\0\0"), None);
        assert_eq!(
            r(b"VFATAL\0C25006\0Mcannot execute INSERT in a read-only transaction\0\0"),
            None
        );
        assert_eq!(r(b"VERROR\0C42P01\0Mrelation does not exist\0\0"), None);
    }

    #[test]
    fn stale_statements_are_known_by_code_and_routine() {
        let stale = ErrorFields::parse(
            b"SERROR\0C0A000\0Mcached plan must not change result type\0RRevalidateCachedQuery\0\0",
        );
        assert!(stale.is_stale_statement());
        let other = ErrorFields::parse(b"SERROR\0C0A000\0Mnot supported\0Rsomething_else\0\0");
        assert!(!other.is_stale_statement());
        assert!(
            ErrorFields::parse(b"SERROR\0CXX000\0Mcache lookup failed for type 16390\0\0")
                .is_stale_statement()
        );
    }

    #[test]
    fn row_shapes_ignore_table_oids_but_not_types() {
        fn desc(table: u8, ty: u8) -> Vec<u8> {
            let mut b = vec![0, 1];
            b.extend_from_slice(b"id\0");
            b.extend_from_slice(&[
                0, 0, 0, table, 0, 1, 0, 0, 0, ty, 0, 4, 255, 255, 255, 255, 0, 0,
            ]);
            b
        }
        assert_eq!(row_shape(b'T', &desc(1, 23)), row_shape(b'T', &desc(2, 23)));
        assert_ne!(row_shape(b'T', &desc(1, 23)), row_shape(b'T', &desc(1, 25)));
        assert_ne!(row_shape(b'T', &desc(1, 23)), row_shape(b'n', b""));
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
