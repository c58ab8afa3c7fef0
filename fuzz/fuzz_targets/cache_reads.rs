//! What the result cache reads from outside: the replication stream's
//! CopyData bodies (split at every 0xff byte into a sequence, as a stream
//! of messages), and statement texts it classifies.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::cache::reads::cacheable;
use sluice::cache::wal::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::default();
    for body in data.split(|b| *b == 0xff) {
        let _ = d.copy_data(body);
    }
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = cacheable(sql);
    }
});
