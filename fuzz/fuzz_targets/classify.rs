//! The statement classifier and the lexer under it, on any text: a route
//! for everything, and a write never classified as a read because of a
//! hint.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sluice::route::classify::{PrimaryFunctions, Route, classify};
use sluice::sql::lex::{statements, tokens};
use sluice::sql::session_cmd::effects;

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let c = classify(sql, &PrimaryFunctions::primary(&["audit"]));
    let hinted = classify(
        &format!("/* sluice:replica */ {sql}"),
        &PrimaryFunctions::primary(&["audit"]),
    );
    if matches!(c.route, Route::Primary(_)) {
        assert!(
            matches!(hinted.route, Route::Primary(_)),
            "a hint made a write a read: {sql:?}"
        );
    }
    for s in statements(sql) {
        let _ = tokens(s);
        let _ = effects(s);
    }
    // Raw bytes: the non-UTF-8 path too.
    let _ = sluice::session::routing::quote_route_setting(data);
});
