//! Frame splitting: any byte stream is split into frames, an error, or a
//! wait for more bytes; never a panic, and never a frame over the cap.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::protocol::frame::{peek_header, peek_startup_len, split};

fuzz_target!(|data: &[u8]| {
    let max = 1 + usize::from(data.first().copied().unwrap_or(0)) * 64;
    let _ = peek_startup_len(data);
    let mut buf = bytes::BytesMut::from(data);
    loop {
        let before = buf.len();
        match (peek_header(&buf, max), split(&mut buf, max)) {
            (Ok(Some(h)), Ok(Some(f))) => {
                assert!(h.total <= max + 1 && f.body().len() + 5 == h.total);
                assert_eq!(buf.len(), before - h.total);
            }
            // A header whose body has not all arrived: split waits.
            (Ok(Some(h)), Ok(None)) if before < h.total => break,
            (Ok(None), Ok(None)) => break,
            (Err(_), Err(_)) => break,
            (a, b) => panic!("peek and split disagree: {a:?} / {}", b.is_ok()),
        }
    }
});
