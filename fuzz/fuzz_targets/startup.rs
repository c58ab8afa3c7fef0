//! Startup packets and `options` strings from hostile clients.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::protocol::startup::{parse, parse_options};

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_options(s);
    }
});
