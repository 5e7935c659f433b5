//! Canonical JSON (DEFINITIONS.md §6.1): the one text that definition hashes, version names and
//! event ids are computed over. Keys sorted by code point, no whitespace, minimal escaping.

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

/// Canonical JSON text with non-ASCII characters kept as they are (hashes).
pub fn to_canonical_json(value: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, value, false);
    out
}

/// Canonical JSON text with non-ASCII characters escaped as `\uXXXX` (version names, §8.1).
pub fn to_canonical_json_ascii(value: &Json) -> String {
    let mut out = String::new();
    write_value(&mut out, value, true);
    out
}

/// Lower-case hex SHA-256 of a text.
pub fn sha256_hex(text: &str) -> String {
    let mut out = String::with_capacity(64);
    push_hex(&mut out, &Sha256::digest(text.as_bytes()));
    out
}

/// Appends bytes as lower-case hex, two digits a byte. (`hex::encode` collects the digits as
/// `char`s one at a time: 5 % of a normalize's instructions went to it for event ids.) The
/// digits are written to a stack buffer and join the text 32 bytes (a digest) at a time:
/// pushed a `char` at a time, each with its own capacity check, they were 4 % of a normalize.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 64];
    for chunk in bytes.chunks(digits.len() / 2) {
        for (pair, b) in digits.chunks_exact_mut(2).zip(chunk) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0F)];
        }
        let text = std::str::from_utf8(&digits[..chunk.len() * 2]).expect("hex digits are ASCII");
        out.push_str(text);
    }
}

fn write_value(out: &mut String, value: &Json, ascii: bool) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => write_number(out, n),
        Json::String(s) => write_string(out, s, ascii),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, ascii);
            }
            out.push(']');
        }
        Json::Object(map) => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, k, ascii);
                out.push(':');
                write_value(out, v, ascii);
            }
            out.push('}');
        }
    }
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else {
        out.push_str(&float_json_text(n.as_f64().unwrap_or(0.0)));
    }
}

/// A float in canonical JSON: shortest round trip, `.0` for integral values below 1e16,
/// exponent form (`1e+16`, `1e-7`) outside [1e-5, 1e16).
pub fn float_json_text(f: f64) -> String {
    if !f.is_finite() {
        return "null".to_string();
    }
    let abs = f.abs();
    if abs != 0.0 && !(1e-5..1e16).contains(&abs) {
        // `{:e}` is the shortest round-trip mantissa with an exponent: 1e16, 1.5e-7.
        let text = format!("{f:e}");
        match text.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => text,
        }
    } else {
        let text = f.to_string();
        if text.contains('.') || text.contains("inf") || text.contains("NaN") {
            text
        } else {
            format!("{text}.0")
        }
    }
}

fn write_string(out: &mut String, s: &str, ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hex_digits_are_those_of_the_hex_crate() {
        let all: Vec<u8> = (0..=255).collect();
        let mut text = String::from("x");
        push_hex(&mut text, &all);
        assert_eq!(text, format!("x{}", hex::encode(&all)));
        assert_eq!(sha256_hex(""), hex::encode(Sha256::digest(b"")));
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        let v = json!({"b": [1, 2.5, null], "a": {"z": true, "é": "x\ny"}});
        assert_eq!(
            to_canonical_json(&v),
            r#"{"a":{"z":true,"é":"x\ny"},"b":[1,2.5,null]}"#
        );
        assert_eq!(
            to_canonical_json_ascii(&v),
            r#"{"a":{"z":true,"\u00e9":"x\ny"},"b":[1,2.5,null]}"#
        );
    }

    #[test]
    fn floats_follow_serde_json_conventions() {
        assert_eq!(float_json_text(1.0), "1.0");
        assert_eq!(float_json_text(0.5), "0.5");
        assert_eq!(float_json_text(1e16), "1e+16");
        assert_eq!(float_json_text(1e-7), "1e-7");
        assert_eq!(float_json_text(-2.0), "-2.0");
        assert_eq!(float_json_text(0.0), "0.0");
    }

    #[test]
    fn astral_characters_escape_as_surrogate_pairs() {
        assert_eq!(to_canonical_json_ascii(&json!("😀")), r#""\ud83d\ude00""#);
        assert_eq!(to_canonical_json(&json!("\u{1}")), r#""\u0001""#);
    }
}
