//! A handed-over client's state as the new process decodes it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::takeover::moved::Moved;

fuzz_target!(|data: &[u8]| {
    if let Some(m) = Moved::decode(data) {
        assert_eq!(Moved::decode(&m.encode()), Some(m));
    }
});
