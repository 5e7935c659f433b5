//! A fast, deterministic hasher for the engine's in-memory maps.
//!
//! The standard `HashMap` hashes with SipHash-1-3, keyed at random per map: resistant to
//! collision flooding, and on the resolve and replay paths the largest single cost after
//! allocation (every hint key and entity id of every event is hashed a few times). The keys
//! hashed here come from the operator's own ledger, not from an adversary over a network,
//! and nothing iterates these maps in hash order (listings are sorted), so a multiply-rotate
//! hash over 8-byte words is safe to use and results never depend on it.
//!
//! Integers are mixed with one multiply each. Byte strings are mixed with a folded multiply
//! (the high and low halves of the 128-bit product xor-ed), which carries every input bit
//! into every output bit: with the plain multiply, whose carries only run upwards, 200 000
//! keys `user<i>@bench.example` had 5 488 full 64-bit collisions; folded, none, and their
//! buckets fill as random ones would.
//!
//! Event keys (`u128` digest bits, `dedup::event_key`) are uniform already and are folded
//! rather than mixed.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// The odd multiplier of the word mix (from the golden ratio, as in Fibonacci hashing).
const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// Xor-ed into each byte word before its folded multiply, so that a zero state and a zero
/// word do not fold to zero (an odd constant with mixed bits, from the digits of pi).
const P: u64 = 0x243F_6A88_85A3_08D3;

#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(K);
    }

    #[inline]
    fn fold(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word ^ P) * u128::from(K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        // The multiply carries low bits upwards only; the rotation brings the well-mixed high
        // bits down to where the table takes its bucket index.
        self.0.rotate_left(26)
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.fold(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        // The last 1–7 bytes are read as two overlapping 4-byte words, or as three single
        // bytes when fewer than 4, which together with the length determine them. (Copying
        // a variable length into a buffer compiles to a `memcpy` call, which was most of the
        // hashing time of short keys such as property names.)
        let rest = chunks.remainder();
        let n = rest.len();
        if n > 0 {
            let word = if n >= 4 {
                let head = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
                let tail = u32::from_le_bytes(rest[n - 4..].try_into().expect("4 bytes"));
                u64::from(head) | (u64::from(tail) << 32)
            } else {
                u64::from(rest[0]) | (u64::from(rest[n / 2]) << 8) | (u64::from(rest[n - 1]) << 16)
            };
            self.fold(word ^ ((n as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn write_i64(&mut self, n: i64) {
        self.mix(n as u64);
    }

    #[inline]
    fn write_u128(&mut self, key: u128) {
        self.0 ^= (key as u64) ^ ((key >> 64) as u64);
    }
}

pub type FastBuild = BuildHasherDefault<FastHasher>;
pub type FastMap<K, V> = HashMap<K, V, FastBuild>;
pub type FastSet<K> = HashSet<K, FastBuild>;
/// Insertion-ordered maps and sets (definitions, event data, hints) hashed the same way: their
/// order never depends on the hasher, and they are looked up once or more per event.
pub type FastIndexMap<K, V> = indexmap::IndexMap<K, V, FastBuild>;
pub type FastIndexSet<K> = indexmap::IndexSet<K, FastBuild>;

/// Maps of names with at most this many entries are searched name by name (`ByName`; raw
/// events' JSON objects in `normalize` too).
pub const SCANNED_NAMES: usize = 8;

/// Lookups by name in the small insertion-ordered maps the replay consults per event (an
/// entity's properties, states and handlers; an event's data). A handful of names is found
/// sooner by comparing them (most differ in length, so most comparisons end at once) than by
/// hashing the name and probing the table; larger maps are hashed as usual.
pub trait ByName<V> {
    /// The position of `name`.
    fn index_by_name(&self, name: &str) -> Option<usize>;
    /// The value of `name`.
    fn by_name(&self, name: &str) -> Option<&V>;
}

/// Whether two texts are equal, compared in place for the short ones names and most data
/// values are: up to 16 bytes, two overlapping word loads per side instead of a call to the C
/// library's `memcmp` (whose call and size dispatch were most of each comparison in the
/// replay's name lookups).
#[inline(always)]
pub fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

impl<V> ByName<V> for FastIndexMap<String, V> {
    #[inline]
    fn index_by_name(&self, name: &str) -> Option<usize> {
        if self.len() <= SCANNED_NAMES {
            self.keys().position(|k| same_text(k, name))
        } else {
            self.get_index_of(name)
        }
    }

    #[inline]
    fn by_name(&self, name: &str) -> Option<&V> {
        self.index_by_name(name).map(|i| &self[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash<T: std::hash::Hash>(value: T) -> u64 {
        FastBuild::default().hash_one(value)
    }

    #[test]
    fn same_text_agrees_with_equality_at_every_length() {
        // Texts of 0 to 40 bytes, equal, and differing at each position in turn.
        for n in 0..40usize {
            let a: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            assert!(same_text(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone().into_bytes();
                b[at] = b'Z';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_text(&a, &b), "{n} at {at}");
            }
            let longer = format!("{a}x");
            assert!(!same_text(&a, &longer) && !same_text(&longer, &a), "{n}");
        }
        assert!(same_text("é", "é") && !same_text("é", "è"));
    }

    #[test]
    fn names_are_found_alike_in_scanned_and_hashed_maps() {
        for size in [0, 1, SCANNED_NAMES, SCANNED_NAMES + 1, 30] {
            let map: FastIndexMap<String, usize> =
                (0..size).map(|i| (format!("p{i}"), i * 10)).collect();
            for i in 0..size {
                let name = format!("p{i}");
                assert_eq!(map.index_by_name(&name), Some(i));
                assert_eq!(map.by_name(&name), Some(&(i * 10)));
            }
            for absent in ["", "p", "q0", &format!("p{size}")] {
                assert_eq!(map.index_by_name(absent), None, "{absent} of {size}");
                assert_eq!(map.by_name(absent), None);
            }
        }
    }

    #[test]
    fn equal_values_hash_equal_and_near_values_apart() {
        assert_eq!(hash("customer"), hash(String::from("customer")));
        assert_ne!(hash("customer"), hash("customes"));
        assert_ne!(hash(("a", "bc")), hash(("ab", "c")));
        // A tail of zero bytes is not the same input as a shorter one.
        assert_ne!(hash([0u8; 3].as_slice()), hash([0u8; 4].as_slice()));
        // Every tail length, and a change of any one byte of the tail.
        let text = b"abcdefghijklmno";
        let mut seen = std::collections::HashSet::new();
        for len in 0..=text.len() {
            assert!(seen.insert(hash(&text[..len])), "length {len}");
            for at in 0..len {
                let mut changed = text[..len].to_vec();
                changed[at] ^= 0x20;
                assert!(
                    seen.insert(hash(changed.as_slice())),
                    "length {len}, byte {at}"
                );
            }
        }
    }

    #[test]
    fn similar_composite_keys_do_not_collide() {
        // The identity keys of 200 000 customers (the plain multiply gave 5 488 collisions).
        let hashes: std::collections::HashSet<u64> = (0..200_000)
            .map(|i| hash(("customer", "email", format!("user{i}@bench.example"))))
            .collect();
        assert_eq!(hashes.len(), 200_000);
    }

    #[test]
    fn buckets_spread_for_similar_keys() {
        // 64 Ki e-mail-like keys into 4096 buckets: no bucket far above the mean of 16.
        let mut buckets = vec![0u32; 4096];
        for i in 0..65_536 {
            let h = hash(format!("user{i}@example.com"));
            buckets[(h & 4095) as usize] += 1;
        }
        let worst = *buckets.iter().max().unwrap();
        assert!(worst < 48, "worst bucket holds {worst} keys");
    }
}
