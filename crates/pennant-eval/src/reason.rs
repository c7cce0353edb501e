//! Evaluation reasons, serialised exactly as LaunchDarkly's SDKs write them.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// Why an evaluation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorKind {
    /// The SDK has no flag data yet.
    ClientNotReady,
    /// No flag with that key.
    FlagNotFound,
    /// The flag data is inconsistent (bad variation index, bad attribute reference, a cycle…).
    MalformedFlag,
    /// The context was missing or invalid.
    UserNotSpecified,
    /// The value's type is not the one the caller asked for.
    WrongType,
    /// An unexpected error.
    Exception,
}

impl ErrorKind {
    /// The name in LaunchDarkly JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ClientNotReady => "CLIENT_NOT_READY",
            ErrorKind::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorKind::MalformedFlag => "MALFORMED_FLAG",
            ErrorKind::UserNotSpecified => "USER_NOT_SPECIFIED",
            ErrorKind::WrongType => "WRONG_TYPE",
            ErrorKind::Exception => "EXCEPTION",
        }
    }
}

/// The state of big-segment membership data when an evaluation needed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BigSegmentsStatus {
    /// Membership data was available and current.
    Healthy,
    /// Membership data was out of date.
    Stale,
    /// No big-segment store is configured.
    NotConfigured,
    /// The store failed.
    StoreError,
}

/// Why a flag evaluated to its value. Strings borrow from the flag data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason<'a> {
    /// The flag is off.
    Off,
    /// Nothing matched; the fallthrough was served.
    Fallthrough {
        /// Served by an experiment rollout.
        in_experiment: bool,
    },
    /// The context's key was targeted.
    TargetMatch,
    /// A rule matched.
    RuleMatch {
        /// Index of the rule.
        rule_index: usize,
        /// ID of the rule.
        rule_id: &'a str,
        /// Served by an experiment rollout.
        in_experiment: bool,
    },
    /// A prerequisite was off or served another variation.
    PrerequisiteFailed {
        /// The first prerequisite that failed.
        prerequisite_key: &'a str,
    },
    /// The evaluation failed.
    Error {
        /// What went wrong.
        error_kind: ErrorKind,
    },
}

impl Reason<'_> {
    /// The reason's `kind` in LaunchDarkly JSON.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Off => "OFF",
            Reason::Fallthrough { .. } => "FALLTHROUGH",
            Reason::TargetMatch => "TARGET_MATCH",
            Reason::RuleMatch { .. } => "RULE_MATCH",
            Reason::PrerequisiteFailed { .. } => "PREREQUISITE_FAILED",
            Reason::Error { .. } => "ERROR",
        }
    }

    /// True when an experiment rollout chose the value.
    pub fn in_experiment(&self) -> bool {
        matches!(self, Reason::Fallthrough { in_experiment: true } | Reason::RuleMatch { in_experiment: true, .. })
    }

    /// Serialises with a big-segments status, as LaunchDarkly does when an evaluation used big segments.
    pub fn with_status(&self, status: Option<BigSegmentsStatus>) -> ReasonJson<'_, '_> {
        ReasonJson { reason: self, big_segments_status: status }
    }
}

impl Serialize for Reason<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_status(None).serialize(s)
    }
}

/// A reason with its optional big-segments status, ready to serialise.
#[derive(Debug, Clone, Copy)]
pub struct ReasonJson<'r, 'a> {
    reason: &'r Reason<'a>,
    big_segments_status: Option<BigSegmentsStatus>,
}

impl Serialize for ReasonJson<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("kind", self.reason.kind())?;
        match *self.reason {
            Reason::Off | Reason::TargetMatch => {}
            Reason::Fallthrough { in_experiment } => {
                if in_experiment {
                    map.serialize_entry("inExperiment", &true)?;
                }
            }
            Reason::RuleMatch { rule_index, rule_id, in_experiment } => {
                map.serialize_entry("ruleIndex", &rule_index)?;
                if !rule_id.is_empty() {
                    map.serialize_entry("ruleId", rule_id)?;
                }
                if in_experiment {
                    map.serialize_entry("inExperiment", &true)?;
                }
            }
            Reason::PrerequisiteFailed { prerequisite_key } => {
                map.serialize_entry("prerequisiteKey", prerequisite_key)?;
            }
            Reason::Error { error_kind } => map.serialize_entry("errorKind", error_kind.as_str())?,
        }
        if let Some(status) = self.big_segments_status {
            map.serialize_entry("bigSegmentsStatus", &status)?;
        }
        map.end()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reasons_serialise_like_launchdarkly() {
        let cases = [
            (Reason::Off, json!({"kind": "OFF"})),
            (Reason::Fallthrough { in_experiment: false }, json!({"kind": "FALLTHROUGH"})),
            (Reason::Fallthrough { in_experiment: true }, json!({"kind": "FALLTHROUGH", "inExperiment": true})),
            (Reason::TargetMatch, json!({"kind": "TARGET_MATCH"})),
            (
                Reason::RuleMatch { rule_index: 2, rule_id: "r", in_experiment: false },
                json!({"kind": "RULE_MATCH", "ruleIndex": 2, "ruleId": "r"}),
            ),
            (
                Reason::PrerequisiteFailed { prerequisite_key: "p" },
                json!({"kind": "PREREQUISITE_FAILED", "prerequisiteKey": "p"}),
            ),
            (
                Reason::Error { error_kind: ErrorKind::MalformedFlag },
                json!({"kind": "ERROR", "errorKind": "MALFORMED_FLAG"}),
            ),
        ];
        for (reason, want) in cases {
            assert_eq!(serde_json::to_value(reason).unwrap(), want);
        }
        let with = Reason::Off.with_status(Some(BigSegmentsStatus::NotConfigured));
        assert_eq!(serde_json::to_value(with).unwrap(), json!({"kind": "OFF", "bigSegmentsStatus": "NOT_CONFIGURED"}));
    }
}
