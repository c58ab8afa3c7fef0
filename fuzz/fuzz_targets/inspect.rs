//! The message bodies sluice reads: ErrorResponse, ParameterStatus,
//! ReadyForQuery, BackendKeyData, Parse, Bind, Describe/Close.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::protocol::extended::{
    bind_param, bind_view, parse_param_type, parse_query, parse_view, target_view,
};
use sluice::protocol::inspect::{ErrorFields, backend_key_data, parameter_status, ready_status};

fuzz_target!(|data: &[u8]| {
    let e = ErrorFields::parse(data);
    let _ = (e.code_or_internal(), e.message_or_default());
    let _ = parameter_status(data);
    let _ = ready_status(data);
    let _ = backend_key_data(data);
    if let Some(p) = parse_view(data) {
        let _ = p;
    }
    let _ = parse_query(data);
    let _ = bind_view(data);
    let _ = target_view(data);
    for n in [0, 1, 7] {
        let _ = bind_param(data, n);
        let _ = parse_param_type(data, n);
    }
});
