//! Parses arbitrary UTF-8. Whatever parses must print to text that parses back to the same
//! tree, and must evaluate (to a value or an error) without panicking.

#![no_main]

use chrono::{TimeZone, Utc};
use defacto_core::expr::{EmptyScope, Expr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(expr) = Expr::parse(text) else {
        return;
    };
    let printed = expr.ast().to_string();
    let again = Expr::parse(&printed)
        .unwrap_or_else(|e| panic!("printed form of {text:?} does not parse: {printed:?}: {e}"));
    assert_eq!(again.ast(), expr.ast(), "{text:?} printed as {printed:?}");
    let scope = EmptyScope {
        now: Utc.with_ymd_and_hms(2024, 6, 1, 0, 0, 0).unwrap(),
    };
    let _ = expr.eval(&scope);
});
