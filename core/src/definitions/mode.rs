//! Build modes: the mode a build runs in (DEFINITIONS.md §8.4), the mode registration
//! predicts (§8.5) and a draft's impact (§8.6). Pure functions of stored and current state.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::normalized::Hashes;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BuildMode {
    Skip,
    Incremental,
    Full,
    FullRenormalize,
    FullWithIdentityReset,
}

impl BuildMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildMode::Skip => "SKIP",
            BuildMode::Incremental => "INCREMENTAL",
            BuildMode::Full => "FULL",
            BuildMode::FullRenormalize => "FULL_RENORMALIZE",
            BuildMode::FullWithIdentityReset => "FULL_WITH_IDENTITY_RESET",
        }
    }

    pub fn parse(s: &str) -> Option<BuildMode> {
        [
            BuildMode::Skip,
            BuildMode::Incremental,
            BuildMode::Full,
            BuildMode::FullRenormalize,
            BuildMode::FullWithIdentityReset,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }

    /// FULL, FULL_RENORMALIZE and FULL_WITH_IDENTITY_RESET replay everything.
    pub fn is_full(self) -> bool {
        matches!(
            self,
            BuildMode::Full | BuildMode::FullRenormalize | BuildMode::FullWithIdentityReset
        )
    }
}

impl fmt::Display for BuildMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a build-state record holds that mode detection reads (§8.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredState {
    pub hashes: Hashes,
    pub salt_fingerprint: String,
    pub dirty: bool,
    pub cursor: i64,
}

/// What the build knows now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentState {
    pub hashes: Hashes,
    pub salt_fingerprint: String,
    /// The highest ledger sequence the build could replay (batch product: the resolve cursor).
    pub highest_sequence: i64,
    pub force_full: bool,
    pub force_from_raw: bool,
}

/// The mode detection table of §8.4: the first matching row wins.
pub fn detect(stored: &StoredState, current: &CurrentState) -> BuildMode {
    if current.force_from_raw {
        BuildMode::FullRenormalize
    } else if current.force_full {
        BuildMode::Full
    } else if current.hashes.source_hash != stored.hashes.source_hash {
        BuildMode::FullRenormalize
    } else if current.hashes.identity_hash != stored.hashes.identity_hash
        || current.salt_fingerprint != stored.salt_fingerprint
    {
        BuildMode::FullWithIdentityReset
    } else if current.hashes.definition_hash != stored.hashes.definition_hash || stored.dirty {
        BuildMode::Full
    } else if current.highest_sequence > stored.cursor {
        BuildMode::Incremental
    } else {
        BuildMode::Skip
    }
}

/// The mode and reason a registration or a draft predicts against the active version's
/// stored hashes (§8.5, §8.6): rows 1–3, `INCREMENTAL` when nothing changed, `FULL` when
/// there is nothing to compare with.
pub fn predict(active: Option<&Hashes>, new: &Hashes) -> (BuildMode, &'static str) {
    match active {
        None => (BuildMode::Full, "no active version to compare"),
        Some(old) if old.source_hash != new.source_hash => {
            (BuildMode::FullRenormalize, "source mappings changed")
        }
        Some(old) if old.identity_hash != new.identity_hash => {
            (BuildMode::FullWithIdentityReset, "identity config changed")
        }
        Some(old) if old.definition_hash != new.definition_hash => {
            (BuildMode::Full, "entity definitions changed")
        }
        Some(_) => (BuildMode::Incremental, "no definition changes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(d: &str, s: &str, i: &str) -> Hashes {
        Hashes {
            definition_hash: d.into(),
            source_hash: s.into(),
            identity_hash: i.into(),
        }
    }

    fn stored() -> StoredState {
        StoredState {
            hashes: hashes("d", "s", "i"),
            salt_fingerprint: String::new(),
            dirty: false,
            cursor: 10,
        }
    }

    fn current() -> CurrentState {
        CurrentState {
            hashes: hashes("d", "s", "i"),
            salt_fingerprint: String::new(),
            highest_sequence: 10,
            force_full: false,
            force_from_raw: false,
        }
    }

    // Every row of the mode table of DEFINITIONS.md §8.4, and that the first matching row wins.
    #[test]
    fn row_0a_from_raw_wins_over_everything() {
        let c = CurrentState {
            force_from_raw: true,
            force_full: true,
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::FullRenormalize);
    }

    #[test]
    fn row_0b_forced_full() {
        let c = CurrentState {
            force_full: true,
            hashes: hashes("d", "S2", "I2"),
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::Full);
    }

    #[test]
    fn row_1_source_change_renormalizes() {
        let c = CurrentState {
            hashes: hashes("D2", "S2", "I2"),
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::FullRenormalize);
    }

    #[test]
    fn row_2_identity_or_salt_change_resets_identity() {
        let c = CurrentState {
            hashes: hashes("D2", "s", "I2"),
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::FullWithIdentityReset);
        let c = CurrentState {
            salt_fingerprint: "abc".into(),
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::FullWithIdentityReset);
    }

    #[test]
    fn row_3_entity_change_is_full() {
        let c = CurrentState {
            hashes: hashes("D2", "s", "i"),
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::Full);
    }

    #[test]
    fn row_4_dirty_is_full() {
        let s = StoredState {
            dirty: true,
            ..stored()
        };
        assert_eq!(detect(&s, &current()), BuildMode::Full);
        // A dirty flag does not hide a more expensive mode.
        let c = CurrentState {
            hashes: hashes("d", "S2", "i"),
            ..current()
        };
        assert_eq!(detect(&s, &c), BuildMode::FullRenormalize);
    }

    #[test]
    fn row_5_pending_events_are_incremental() {
        let c = CurrentState {
            highest_sequence: 11,
            ..current()
        };
        assert_eq!(detect(&stored(), &c), BuildMode::Incremental);
    }

    #[test]
    fn row_6_nothing_to_do_is_skip() {
        assert_eq!(detect(&stored(), &current()), BuildMode::Skip);
    }

    // CONTRACTS A19 (reasons), DEFINITIONS.md §8.5
    #[test]
    fn predictions_name_their_reason() {
        let old = hashes("d", "s", "i");
        assert_eq!(
            predict(None, &old),
            (BuildMode::Full, "no active version to compare")
        );
        assert_eq!(
            predict(Some(&old), &old),
            (BuildMode::Incremental, "no definition changes")
        );
        assert_eq!(
            predict(Some(&old), &hashes("D", "S", "I")).0,
            BuildMode::FullRenormalize
        );
        assert_eq!(
            predict(Some(&old), &hashes("D", "s", "I")),
            (BuildMode::FullWithIdentityReset, "identity config changed")
        );
        assert_eq!(
            predict(Some(&old), &hashes("D", "s", "i")),
            (BuildMode::Full, "entity definitions changed")
        );
    }

    #[test]
    fn modes_print_and_parse_as_the_spec_names_them() {
        for m in [
            BuildMode::Skip,
            BuildMode::Incremental,
            BuildMode::Full,
            BuildMode::FullRenormalize,
            BuildMode::FullWithIdentityReset,
        ] {
            assert_eq!(BuildMode::parse(m.as_str()), Some(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
    }
}
