//! Fuzzes the definition loader: arbitrary text as a YAML definitions document must load,
//! validate and hash without panicking, and a valid set's normalized document must reload
//! to the same document.
#![no_main]

use defacto_core::definitions::{raw_from_yaml_text, validate, Definitions, NormalizedDocument};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(raw) = raw_from_yaml_text(text, None) else { return };
    let validation = validate(&raw);
    let _ = validation.result();
    if let Ok(defs) = validation.into_definitions() {
        let doc = NormalizedDocument::of(&defs);
        let _ = doc.hashes();
        let _ = doc.version_name();
        let again = Definitions::from_document(doc.json()).expect("a normalized document reloads");
        assert_eq!(NormalizedDocument::of(&again), doc);
    }
});
