use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn splits_complete_frames_and_waits_for_partial_ones() {
    let mut wire = msg(b'Q', b"SELECT 1\0");
    wire.extend_from_slice(&msg(b'S', b""));
    let mut buf = BytesMut::from(&wire[..wire.len() - 2]);
    let f = split(&mut buf, 1024).unwrap().unwrap();
    assert_eq!(f.tag, b'Q');
    assert_eq!(f.body(), b"SELECT 1\0");
    assert_eq!(split(&mut buf, 1024).unwrap(), None);
    buf.extend_from_slice(&wire[wire.len() - 2..]);
    let f = split(&mut buf, 1024).unwrap().unwrap();
    assert_eq!((f.tag, f.body().len()), (b'S', 0));
    assert!(buf.is_empty());
}

#[test]
fn header_needs_five_bytes() {
    assert_eq!(peek_header(b"Q\0\0\0", 100).unwrap(), None);
}

#[test]
fn rejects_lengths_below_four_and_negative() {
    assert_eq!(
        peek_header(b"Q\0\0\0\x03", 100),
        Err(FrameError::BadLength(3))
    );
    assert_eq!(
        peek_header(b"Q\xff\xff\xff\xff", usize::MAX),
        Err(FrameError::BadLength(u32::MAX))
    );
}

#[test]
fn rejects_oversized_before_reserving() {
    let mut buf = BytesMut::from(&b"d\x40\0\0\0"[..]);
    assert_eq!(
        split(&mut buf, 1 << 20),
        Err(FrameError::TooLarge {
            len: 0x4000_0000,
            max: 1 << 20
        })
    );
    assert!(buf.capacity() < 1 << 20);
}

#[test]
fn startup_lengths_follow_postgres_limits() {
    assert_eq!(peek_startup_len(b"\0\0"), Ok(None));
    assert_eq!(peek_startup_len(b"\0\0\0\x08"), Ok(Some(8)));
    assert_eq!(
        peek_startup_len(b"\0\0\0\x07"),
        Err(FrameError::BadLength(7))
    );
    assert!(matches!(
        peek_startup_len(b"\0\x01\0\0"),
        Err(FrameError::TooLarge { .. })
    ));
}
