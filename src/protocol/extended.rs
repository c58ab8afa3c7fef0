//! Views and builders for the extended-protocol messages transaction pooling
//! rewrites (Parse, Bind, Describe, Close): names change, everything else is
//! copied byte for byte.

use bytes::{BufMut, BytesMut};

use super::inspect::take_cstr;

/// One message made of `parts`, through the builders' single framing helper.
/// Room for all of it is reserved first: put piece by piece into an empty
/// buffer (a rewritten Bind on every execution of a prepared statement),
/// it was reallocated several times as it grew: ~1,400 instructions a
/// message under callgrind.
fn typed(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    out.reserve(super::frame::HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>());
    super::build::typed(out, tag, |b| parts.iter().for_each(|p| b.put_slice(p)));
}

/// A Parse body: statement name, and the rest (query, parameter types) verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseView<'a> {
    pub name: &'a [u8],
    pub rest: &'a [u8],
}

pub fn parse_view(body: &[u8]) -> Option<ParseView<'_>> {
    let (name, rest) = take_cstr(body)?;
    // The rest must hold the query's terminator and the 2-byte type count.
    let (_, types) = take_cstr(rest)?;
    (types.len() >= 2).then_some(ParseView { name, rest })
}

/// The query text of a Parse's `rest`.
pub fn parse_query(rest: &[u8]) -> &[u8] {
    take_cstr(rest).map(|(q, _)| q).unwrap_or_default()
}

pub fn build_parse(out: &mut BytesMut, name: &[u8], rest: &[u8]) {
    typed(out, b'P', &[name, b"\0", rest]);
}

/// A Bind body: portal, statement, and the rest (formats, values) verbatim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindView<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub rest: &'a [u8],
}

pub fn bind_view(body: &[u8]) -> Option<BindView<'_>> {
    let (portal, rest) = take_cstr(body)?;
    let (statement, rest) = take_cstr(rest)?;
    Some(BindView {
        portal,
        statement,
        rest,
    })
}

pub fn build_bind(out: &mut BytesMut, portal: &[u8], statement: &[u8], rest: &[u8]) {
    typed(out, b'B', &[portal, b"\0", statement, b"\0", rest]);
}

/// Describe or Close body: 'S' (statement) or 'P' (portal), and a name.
pub fn target_view(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    let (name, tail) = take_cstr(rest)?;
    (matches!(kind, b'S' | b'P') && tail.is_empty()).then_some((kind, name))
}

pub fn build_describe(out: &mut BytesMut, kind: u8, name: &[u8]) {
    typed(out, b'D', &[&[kind], name, b"\0"]);
}

pub fn build_close(out: &mut BytesMut, kind: u8, name: &[u8]) {
    typed(out, b'C', &[&[kind], name, b"\0"]);
}

pub fn parse_complete(out: &mut BytesMut) {
    typed(out, b'1', &[]);
}

pub fn close_complete(out: &mut BytesMut) {
    typed(out, b'3', &[]);
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2)
        .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
}

/// Parameter `n` of a Bind's rest (after its portal and statement names): whether binary, and its bytes (None for NULL).
pub fn bind_param(bind: &[u8], n: usize) -> Option<(bool, &[u8])> {
    let formats = u16_at(bind, 0)?;
    let format = match formats {
        0 => 0,
        1 => u16_at(bind, 2)?,
        _ if n < formats => u16_at(bind, 2 + 2 * n)?,
        _ => return None,
    };
    let mut off = 2 + 2 * formats;
    let count = u16_at(bind, off)?;
    off += 2;
    if n >= count {
        return None;
    }
    for i in 0..=n {
        let len = i32::from_be_bytes(bind.get(off..off + 4)?.try_into().ok()?);
        off += 4;
        let len = usize::try_from(len).ok()?;
        if i == n {
            return Some((format == 1, bind.get(off..off + len)?));
        }
        off += len;
    }
    None
}

/// The type a Parse body (after its name) gives parameter `n`, if any.
pub fn parse_param_type(parse_rest: &[u8], n: usize) -> Option<u32> {
    let (_, types) = take_cstr(parse_rest)?;
    if n >= u16_at(types, 0)? {
        return None;
    }
    let at = 2 + 4 * n;
    Some(u32::from_be_bytes(types.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::split;

    #[test]
    fn a_rewritten_bind_is_built_in_one_allocation() {
        let mut out = BytesMut::new();
        let rest = [7u8; 10];
        build_bind(
            &mut out,
            b"",
            b"sluice_0123456789abcdef0123456789abcdef",
            &rest,
        );
        assert_eq!(out.len(), 5 + 1 + 40 + 10);
        // Grown piece by piece, the buffer would have doubled past its length.
        assert_eq!(out.capacity(), out.len());
        assert_eq!(&out[1..5], &(out.len() as u32 - 1).to_be_bytes());
    }

    #[test]
    fn parse_round_trips_with_a_new_name() {
        let body = b"s1\0SELECT $1\0\0\x01\0\0\0\x17";
        let v = parse_view(body).unwrap();
        assert_eq!(v.name, b"s1");
        assert_eq!(parse_query(v.rest), b"SELECT $1");
        let mut out = BytesMut::new();
        build_parse(&mut out, b"sluice_x", v.rest);
        let f = split(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.body(), b"sluice_x\0SELECT $1\0\0\x01\0\0\0\x17");
    }

    #[test]
    fn bind_keeps_parameters_verbatim() {
        let body = b"p\0s1\0\0\0\0\x01\0\0\0\x02hi\0\0";
        let v = bind_view(body).unwrap();
        assert_eq!((v.portal, v.statement), (&b"p"[..], &b"s1"[..]));
        let mut out = BytesMut::new();
        build_bind(&mut out, v.portal, b"g", v.rest);
        let f = split(&mut out, 1 << 20).unwrap().unwrap();
        assert_eq!(f.body(), b"p\0g\0\0\0\0\x01\0\0\0\x02hi\0\0");
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        assert_eq!(parse_view(b"s1\0SELECT 1\0"), None);
        assert_eq!(parse_view(b"s1"), None);
        assert_eq!(bind_view(b"p\0s1"), None);
        assert_eq!(target_view(b"Xname\0"), None);
        assert_eq!(target_view(b"Sname\0extra"), None);
        assert_eq!(target_view(b"Sname\0"), Some((b'S', &b"name"[..])));
    }
}
