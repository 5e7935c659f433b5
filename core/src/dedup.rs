//! Deduplication of normalized events as a stream (PIPELINE.md §2.9), for ledgers and calls
//! too large to hold: events are offered one at a time in sequence order and each is appended
//! or skipped at once, so a caller never keeps a whole call of normalized events.
//!
//! §2.9 sorts a call by timestamp and lets the earliest copy of an id win. A stream decides at
//! the first copy, so a later copy with an earlier timestamp *displaces* a copy already
//! accepted. That is rare (retries carry later timestamps), and it is reported instead of
//! repaired: the caller discards what it produced and runs again with the true winners
//! (`StreamDedup::displaced`) given in advance as `fixed`, which makes the second run exact.
//! Both runs together agree with `normalize::dedup_call` call by call (tests below).

use sha2::{Digest, Sha256};

use crate::fasthash::FastMap;
use crate::value::{instant_nanos, Instant};

/// What deduplication keeps of an event id: 128 bits of its SHA-256 digest (the hex digits
/// after `e_`, §2.6), so the ids of a large ledger fit in memory. An id of another form is
/// hashed to the same width.
pub fn event_key(event_id: &str) -> u128 {
    event_id
        .strip_prefix("e_")
        .and_then(|hex| hex.as_bytes().get(..32))
        .and_then(hex_u128)
        .unwrap_or_else(|| {
            let digest = Sha256::digest(event_id.as_bytes());
            u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"))
        })
}

/// 32 hex digits (either case) as a number. `normalize` reads every ledger id through
/// `event_key`, so this is branch-free: a digit's value comes from a table (0xFF for a
/// non-digit) and a bad digit is noticed once, at the end. (Random hex digits make the
/// digit/letter branches of a digit-by-digit parse mispredict about a third of the time.)
fn hex_u128(digits: &[u8]) -> Option<u128> {
    const VALUES: [u8; 256] = {
        let mut t = [0xFF; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let half = |digits: &[u8]| {
        let (mut acc, mut bad) = (0u64, 0u8);
        for &d in digits {
            let v = VALUES[d as usize];
            bad |= v;
            acc = acc << 4 | u64::from(v & 0x0F);
        }
        (acc, bad & 0xF0 == 0)
    };
    let (high, high_ok) = half(digits.get(..16)?);
    let (low, low_ok) = half(digits.get(16..32)?);
    (high_ok && low_ok).then_some(u128::from(high) << 64 | u128::from(low))
}

/// A map keyed by event keys.
pub type KeyMap<V> = FastMap<u128, V>;

/// The canonical ledger rows' event keys, with their sequences.
pub type LedgerKeys = KeyMap<i64>;

/// An id accepted by this stream: the timestamp (ns) and sequence of the copy kept.
#[derive(Debug, Clone, Copy)]
struct Kept {
    timestamp: i128,
    sequence: i64,
}

/// Streaming deduplication, call by call. See the module documentation.
#[derive(Debug, Default)]
pub struct StreamDedup {
    /// The ids of the ledger: a copy of one of them is always a duplicate.
    ledger: LedgerKeys,
    /// Every id accepted so far by this stream, with its kept copy.
    seen: KeyMap<Kept>,
    /// The first sequence of the call being offered; a kept copy at or above it belongs to
    /// this call and may still be displaced, one below it is final.
    call_start: Option<(i64, i64)>,
    /// Ids whose winner within their call is known in advance: id → the winning sequence.
    fixed: KeyMap<i64>,
    /// Ids whose accepted copy a later, earlier-timestamped copy displaced: id → the sequence
    /// that wins.
    displaced: KeyMap<i64>,
    /// The current call's duplicates (sequence, id), reported in input order at its end.
    call_duplicates: Vec<(i64, String)>,
    duplicates: Vec<String>,
}

impl StreamDedup {
    /// Deduplication against the canonical ledger rows `ledger` (their ids and sequences);
    /// `fixed` holds the within-call winners a previous run found displaced (else empty).
    pub fn new(ledger: impl IntoIterator<Item = (u128, i64)>, fixed: KeyMap<i64>) -> Self {
        StreamDedup::with_ledger(ledger.into_iter().collect(), fixed)
    }

    /// `new` with the ledger's keys already gathered in a map (a large ledger's are read
    /// batch by batch straight into one).
    pub fn with_ledger(ledger: LedgerKeys, fixed: KeyMap<i64>) -> Self {
        StreamDedup {
            ledger,
            fixed,
            ..Default::default()
        }
    }

    /// Makes room for `additional` more accepted events at once (the map otherwise doubles,
    /// rehashing every key each time, as a large first run fills it).
    pub fn reserve(&mut self, additional: usize) {
        self.seen.reserve(additional);
    }

    /// Offers the event at `sequence` of ingest call `call` (events come in sequence order):
    /// whether it is appended. Duplicates are remembered for `take_duplicates`.
    pub fn offer(&mut self, call: i64, sequence: i64, event_id: &str, timestamp: &Instant) -> bool {
        let call_start = match self.call_start {
            Some((c, start)) if c == call => start,
            _ => {
                self.end_call();
                self.call_start = Some((call, sequence));
                sequence
            }
        };
        let key = event_key(event_id);
        let timestamp = instant_nanos(timestamp);
        let kept = Kept {
            timestamp,
            sequence,
        };
        let accept = match self.seen.get_mut(&key) {
            // Kept by the ledger: final.
            _ if self.ledger.contains_key(&key) => false,
            // Kept by an earlier call: final.
            Some(k) if k.sequence < call_start => false,
            Some(k) => {
                if self.fixed.contains_key(&key) || timestamp >= k.timestamp {
                    false
                } else {
                    // An earlier copy in this call was accepted too soon.
                    self.displaced.insert(key, sequence);
                    *k = kept;
                    true
                }
            }
            None => match self.fixed.get(&key) {
                Some(winner) if *winner != sequence => false,
                _ => {
                    self.seen.insert(key, kept);
                    true
                }
            },
        };
        if !accept {
            self.call_duplicates.push((sequence, event_id.to_string()));
        }
        accept
    }

    fn end_call(&mut self) {
        let mut call = std::mem::take(&mut self.call_duplicates);
        call.sort_by_key(|(s, _)| *s);
        self.duplicates.extend(call.into_iter().map(|(_, id)| id));
    }

    /// The ids of the duplicates skipped so far: call by call, in input order within a call
    /// (the current call's join them at its end, or here when the stream is over).
    pub fn take_duplicates(&mut self, stream_over: bool) -> Vec<String> {
        if stream_over {
            self.end_call();
        }
        std::mem::take(&mut self.duplicates)
    }

    /// The within-call winners that displaced an event already accepted. When not empty the
    /// accepted events are wrong for these ids: run again with them as `fixed`.
    pub fn displaced(&self) -> &KeyMap<i64> {
        &self.displaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::dedup_call;
    use proptest::prelude::*;

    fn id(n: u8) -> String {
        format!("e_{}", hex::encode(Sha256::digest([n])))
    }

    fn at(secs: i64) -> Instant {
        chrono::DateTime::from_timestamp(secs, 0).expect("in range")
    }

    #[test]
    fn keys_are_the_digest_prefix_and_other_ids_are_hashed() {
        let e = id(1);
        assert_eq!(event_key(&e), u128::from_str_radix(&e[2..34], 16).unwrap());
        let upper = format!("e_{}", e[2..].to_uppercase());
        assert_eq!(event_key(&upper), event_key(&e));
        // Not 32 hex digits after `e_`: hashed like any other id.
        for other in [
            "e_12",
            "e_+0000000000000000000000000000001",
            "e_g0000000000000000000000000000000",
        ] {
            let digest = Sha256::digest(other.as_bytes());
            assert_eq!(
                event_key(other),
                u128::from_be_bytes(digest[..16].try_into().unwrap())
            );
        }
        assert_ne!(event_key("custom-1"), event_key("custom-2"));
        assert_eq!(event_key("custom-1"), event_key("custom-1"));
    }

    /// Accepted sequences and duplicate ids.
    type Outcome = (Vec<i64>, Vec<String>);

    /// One stream of events: (call, id number, timestamp seconds); sequences follow input
    /// order. Returns the accepted sequences and duplicate ids of the streaming dedup (with a
    /// second run when the first reports displaced winners) and of `dedup_call` per call.
    fn both(ledger: &[u8], events: &[(i64, u8, i64)]) -> (Outcome, Outcome) {
        let ledger_keys: Vec<(u128, i64)> =
            ledger.iter().map(|n| (event_key(&id(*n)), 0)).collect();
        let run = |fixed: KeyMap<i64>| {
            let mut d = StreamDedup::new(ledger_keys.clone(), fixed);
            let mut accepted = Vec::new();
            for (i, (call, n, secs)) in events.iter().enumerate() {
                let seq = i as i64 + 1;
                if d.offer(*call, seq, &id(*n), &at(*secs)) {
                    accepted.push(seq);
                }
            }
            let displaced = d.displaced().clone();
            (accepted, d.take_duplicates(true), displaced)
        };
        let (mut accepted, mut dups, displaced) = run(KeyMap::default());
        if !displaced.is_empty() {
            let second = run(displaced);
            assert!(
                second.2.is_empty(),
                "a run with fixed winners displaces nothing"
            );
            (accepted, dups) = (second.0, second.1);
        }
        accepted.sort();

        let known: std::collections::HashSet<String> = ledger.iter().map(|n| id(*n)).collect();
        let mut seen = known.clone();
        let (mut want, mut want_dups) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < events.len() {
            let call = events[start].0;
            let end = start + events[start..].iter().take_while(|e| e.0 == call).count();
            let rows: Vec<(usize, (i64, String, Instant))> = (start..end)
                .map(|i| (i - start, (i as i64 + 1, id(events[i].1), at(events[i].2))))
                .collect();
            let d = dedup_call(rows, |(_, id, t)| (id.as_str(), *t), |id| seen.contains(id));
            for (seq, id, _) in d.accepted {
                seen.insert(id);
                want.push(seq);
            }
            want_dups.extend(d.duplicate_ids);
            start = end;
        }
        want.sort();
        ((accepted, dups), (want, want_dups))
    }

    #[test]
    fn a_later_copy_with_an_earlier_timestamp_wins_within_its_call() {
        // Call 1: id 1 at t=5, then again at t=3 (wins), then at t=3 (tie: the first wins).
        let events = [(1, 1, 5), (1, 2, 1), (1, 1, 3), (1, 1, 3), (2, 1, 0)];
        let (got, want) = both(&[], &events);
        assert_eq!(got, want);
        assert_eq!(got.0, vec![2, 3]);
    }

    #[test]
    fn the_ledger_copy_always_wins() {
        let (got, want) = both(&[1], &[(1, 1, 0), (1, 2, 0)]);
        assert_eq!(got, want);
        assert_eq!(got.0, vec![2]);
    }

    proptest! {
        // CONTRACTS C11: within a call the earliest copy wins, however the call is streamed.
        #[test]
        fn streaming_dedup_agrees_with_dedup_per_call(
            ledger in proptest::collection::vec(0u8..6, 0..3),
            events in proptest::collection::vec((0i64..3, 0u8..8, 0i64..4), 0..40),
        ) {
            // Calls come in order: sort by call, keeping input order within one.
            let mut events = events;
            events.sort_by_key(|e| e.0);
            let (got, want) = both(&ledger, &events);
            prop_assert_eq!(got, want);
        }
    }
}
