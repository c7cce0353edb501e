//! LaunchDarkly's server-side flag and segment JSON, with the preprocessed forms evaluation uses.
//!
//! Reading fills every missing field with its default; writing emits every field that SDKs require, as
//! LaunchDarkly's own writer does (older SDKs reject flags with missing arrays).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::attr_ref::AttrRef;
use crate::context::KindName;
use crate::keyset::KeySet;
use crate::operators::Matcher;

/// A feature flag.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Flag {
    /// Unique key within an environment.
    pub key: String,
    /// Monotonic version; SDKs ignore updates that do not raise it.
    #[serde(default)]
    pub version: u64,
    /// Targeting on; off serves `off_variation`.
    #[serde(default)]
    pub on: bool,
    /// Flags that must be on and serve the given variation.
    #[serde(default, deserialize_with = "null_as_default")]
    pub prerequisites: Vec<Prerequisite>,
    /// Bucketing salt.
    #[serde(default, deserialize_with = "null_as_default")]
    pub salt: String,
    /// User-kind key targets (the form from before contexts).
    #[serde(default, deserialize_with = "null_as_default")]
    pub targets: Vec<Target>,
    /// Key targets per context kind, in evaluation order.
    #[serde(default, deserialize_with = "null_as_default")]
    pub context_targets: Vec<Target>,
    /// Rules, first match wins.
    #[serde(default, deserialize_with = "null_as_default")]
    pub rules: Vec<FlagRule>,
    /// What to serve when nothing else matched.
    #[serde(default, deserialize_with = "null_as_default")]
    pub fallthrough: VariationOrRollout,
    /// Variation served when the flag is off; `None` serves the caller's default.
    #[serde(default)]
    pub off_variation: Option<i64>,
    /// The values the flag can serve.
    #[serde(default, deserialize_with = "null_as_default")]
    pub variations: Vec<Value>,
    /// Explicit client-side availability; when absent, `client_side` decides and mobile is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_side_availability: Option<ClientSideAvailability>,
    /// Legacy client-side flag (available to the JavaScript SDK).
    #[serde(default, deserialize_with = "null_as_default")]
    pub client_side: bool,
    /// Send full feature events for every evaluation.
    #[serde(default, deserialize_with = "null_as_default")]
    pub track_events: bool,
    /// Send full feature events for fallthrough evaluations.
    #[serde(default, deserialize_with = "null_as_default")]
    pub track_events_fallthrough: bool,
    /// Send debug events until this time (Unix milliseconds).
    #[serde(default)]
    pub debug_events_until_date: Option<u64>,
    /// A tombstone: the flag was deleted at `version`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub deleted: bool,
    /// Send 1 in N feature and debug events (absent means 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling_ratio: Option<u64>,
    /// Migration flag settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationSettings>,
    /// Leave this flag out of summary events.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exclude_from_summaries: bool,
}

impl Flag {
    /// Where the flag may be evaluated client-side.
    pub fn client_side_availability(&self) -> ClientSideAvailability {
        self.client_side_availability
            .unwrap_or(ClientSideAvailability { using_mobile_key: true, using_environment_id: self.client_side })
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Which client-side credentials may evaluate a flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientSideAvailability {
    /// Mobile SDKs (mobile key).
    #[serde(default)]
    pub using_mobile_key: bool,
    /// Browser SDKs (client-side ID).
    #[serde(default)]
    pub using_environment_id: bool,
}

/// Migration flag settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSettings {
    /// 1 in N consistency checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ratio: Option<u64>,
}

/// A prerequisite: flag `key` must be on and serve `variation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prerequisite {
    /// The prerequisite flag's key.
    pub key: String,
    /// The variation it must serve.
    pub variation: i64,
}

/// Individual targets: contexts of `context_kind` whose key is in `values` get `variation`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "TargetData")]
pub struct Target {
    /// The kind; absent means `user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_kind: Option<String>,
    /// The keys, in the order they were given.
    pub values: Vec<String>,
    /// The variation served.
    pub variation: i64,
    #[serde(skip)]
    pub(crate) key_set: KeySet,
    #[serde(skip)]
    pub(crate) kind: KindName,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetData {
    #[serde(default)]
    context_kind: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    values: Vec<String>,
    #[serde(default)]
    variation: i64,
}

impl From<TargetData> for Target {
    fn from(d: TargetData) -> Target {
        Target::new(d.context_kind, d.values, d.variation)
    }
}

impl Target {
    /// Builds a target and its key set.
    pub fn new(context_kind: Option<String>, values: Vec<String>, variation: i64) -> Target {
        let key_set = KeySet::new(&values);
        let kind = KindName::new(context_kind.as_deref());
        Target { context_kind, values, variation, key_set, kind }
    }
}

/// A flag rule: when all clauses match, serve the variation or rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagRule {
    /// Stable rule ID.
    #[serde(default, deserialize_with = "null_as_default")]
    pub id: String,
    /// Fixed variation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation: Option<i64>,
    /// Percentage rollout (used when `variation` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Clauses, all of which must match.
    #[serde(default, deserialize_with = "null_as_default")]
    pub clauses: Vec<Clause>,
    /// Send full feature events for matches of this rule.
    #[serde(default, deserialize_with = "null_as_default")]
    pub track_events: bool,
}

/// A fixed variation or a rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VariationOrRollout {
    /// Fixed variation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variation: Option<i64>,
    /// Percentage rollout (used when `variation` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// Rollout or experiment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutKind {
    /// A plain percentage rollout.
    #[default]
    Rollout,
    /// An experiment: buckets by key and reports `inExperiment`.
    Experiment,
}

/// A percentage rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "RolloutData")]
pub struct Rollout {
    /// Rollout or experiment (absent means rollout).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<RolloutKind>,
    /// The kind of context to bucket (absent means `user`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_kind: Option<String>,
    /// Weighted variations; weights are in thousandths of a percent (100000 = 100%).
    pub variations: Vec<WeightedVariation>,
    /// Attribute to bucket by (absent means `key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_by: Option<String>,
    /// Seed that replaces the `key.salt` hash prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(skip)]
    pub(crate) bucket_by_ref: Option<AttrRef>,
    #[serde(skip)]
    pub(crate) bucket_kind: KindName,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RolloutData {
    #[serde(default, deserialize_with = "lenient_rollout_kind")]
    kind: Option<RolloutKind>,
    #[serde(default)]
    context_kind: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    variations: Vec<WeightedVariation>,
    #[serde(default)]
    bucket_by: Option<String>,
    #[serde(default)]
    seed: Option<i64>,
}

fn lenient_rollout_kind<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RolloutKind>, D::Error> {
    // Unknown kinds behave as plain rollouts, as in LaunchDarkly's SDKs.
    Ok(match Option::<String>::deserialize(d)?.as_deref() {
        None => None,
        Some("experiment") => Some(RolloutKind::Experiment),
        Some(_) => Some(RolloutKind::Rollout),
    })
}

impl From<RolloutData> for Rollout {
    fn from(d: RolloutData) -> Rollout {
        // With a context kind the data is context-aware and bucketBy is a reference; without one it is a name.
        let bucket_by_ref = d
            .bucket_by
            .as_deref()
            .map(|b| if d.context_kind.is_some() { AttrRef::parse(b) } else { AttrRef::literal(b) });
        Rollout {
            kind: d.kind,
            bucket_kind: KindName::new(d.context_kind.as_deref()),
            context_kind: d.context_kind,
            variations: d.variations,
            bucket_by: d.bucket_by,
            seed: d.seed,
            bucket_by_ref,
        }
    }
}

impl Rollout {
    /// True for experiments.
    pub fn is_experiment(&self) -> bool {
        self.kind == Some(RolloutKind::Experiment)
    }
}

/// One variation of a rollout and its weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WeightedVariation {
    /// The variation index.
    pub variation: i64,
    /// Weight in thousandths of a percent.
    #[serde(default)]
    pub weight: i64,
    /// Excluded from experiment tracking.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untracked: bool,
}

/// A clause operator. Unknown operators are kept (and written back) and never match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// JSON equality with any value.
    In,
    /// String suffix.
    EndsWith,
    /// String prefix.
    StartsWith,
    /// Unanchored regular expression search.
    Matches,
    /// Substring.
    Contains,
    /// Numeric `<`.
    LessThan,
    /// Numeric `<=`.
    LessThanOrEqual,
    /// Numeric `>`.
    GreaterThan,
    /// Numeric `>=`.
    GreaterThanOrEqual,
    /// Date before.
    Before,
    /// Date after.
    After,
    /// Membership of any listed segment.
    SegmentMatch,
    /// Semantic version equal.
    SemVerEqual,
    /// Semantic version less than.
    SemVerLessThan,
    /// Semantic version greater than.
    SemVerGreaterThan,
    /// Any other name.
    Unknown(String),
}

impl Operator {
    /// The operator's name in LaunchDarkly JSON.
    pub fn as_str(&self) -> &str {
        match self {
            Operator::In => "in",
            Operator::EndsWith => "endsWith",
            Operator::StartsWith => "startsWith",
            Operator::Matches => "matches",
            Operator::Contains => "contains",
            Operator::LessThan => "lessThan",
            Operator::LessThanOrEqual => "lessThanOrEqual",
            Operator::GreaterThan => "greaterThan",
            Operator::GreaterThanOrEqual => "greaterThanOrEqual",
            Operator::Before => "before",
            Operator::After => "after",
            Operator::SegmentMatch => "segmentMatch",
            Operator::SemVerEqual => "semVerEqual",
            Operator::SemVerLessThan => "semVerLessThan",
            Operator::SemVerGreaterThan => "semVerGreaterThan",
            Operator::Unknown(s) => s,
        }
    }

    /// Reads an operator name.
    pub fn parse(s: &str) -> Operator {
        match s {
            "in" => Operator::In,
            "endsWith" => Operator::EndsWith,
            "startsWith" => Operator::StartsWith,
            "matches" => Operator::Matches,
            "contains" => Operator::Contains,
            "lessThan" => Operator::LessThan,
            "lessThanOrEqual" => Operator::LessThanOrEqual,
            "greaterThan" => Operator::GreaterThan,
            "greaterThanOrEqual" => Operator::GreaterThanOrEqual,
            "before" => Operator::Before,
            "after" => Operator::After,
            "segmentMatch" => Operator::SegmentMatch,
            "semVerEqual" => Operator::SemVerEqual,
            "semVerLessThan" => Operator::SemVerLessThan,
            "semVerGreaterThan" => Operator::SemVerGreaterThan,
            other => Operator::Unknown(other.to_owned()),
        }
    }
}

impl Serialize for Operator {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Operator {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Operator::parse(&Option::<String>::deserialize(d)?.unwrap_or_default()))
    }
}

/// A clause: an attribute of one context kind compared with values by an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "ClauseData")]
pub struct Clause {
    /// The kind of context to test (absent means `user`; also marks `attribute` as a reference).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_kind: Option<String>,
    /// Attribute name (no `contextKind`) or reference (with one).
    pub attribute: String,
    /// Operator.
    pub op: Operator,
    /// Values to compare with.
    pub values: Vec<Value>,
    /// Negate the result (not applied when the attribute is missing).
    pub negate: bool,
    #[serde(skip)]
    pub(crate) attr: AttrRef,
    #[serde(skip)]
    pub(crate) test: ClauseTest,
    #[serde(skip)]
    pub(crate) matcher: Matcher,
}

/// What a clause tests, decided when it is loaded so that evaluation branches once per clause.
#[derive(Debug, Clone)]
pub(crate) enum ClauseTest {
    /// `segmentMatch`: membership of any of these segments.
    Segments(Box<[Box<str>]>),
    /// The attribute reference is invalid, which fails the evaluation.
    Malformed,
    /// The attribute `kind`: the matcher sees every kind the context has.
    Kind,
    /// An attribute of the individual context of this kind.
    Attribute { kind: KindName },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClauseData {
    #[serde(default)]
    context_kind: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    attribute: String,
    #[serde(default = "unknown_op")]
    op: Operator,
    #[serde(default, deserialize_with = "null_as_default")]
    values: Vec<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    negate: bool,
}

fn unknown_op() -> Operator {
    Operator::Unknown(String::new())
}

impl From<ClauseData> for Clause {
    fn from(d: ClauseData) -> Clause {
        Clause::new(d.context_kind, d.attribute, d.op, d.values, d.negate)
    }
}

impl Clause {
    /// Builds a clause and preprocesses its values.
    pub fn new(
        context_kind: Option<String>,
        attribute: String,
        op: Operator,
        values: Vec<Value>,
        negate: bool,
    ) -> Clause {
        let attr = if context_kind.is_some() { AttrRef::parse(&attribute) } else { AttrRef::literal(&attribute) };
        let test = if op == Operator::SegmentMatch {
            ClauseTest::Segments(values.iter().filter_map(Value::as_str).map(Box::from).collect())
        } else if !attr.is_valid() {
            ClauseTest::Malformed
        } else if attr.is_kind() {
            ClauseTest::Kind
        } else {
            ClauseTest::Attribute { kind: KindName::new(context_kind.as_deref()) }
        };
        let matcher = Matcher::new(&op, &values);
        Clause { context_kind, attribute, op, values, negate, attr, test, matcher }
    }
}

/// A segment: a reusable set of contexts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "SegmentData")]
pub struct Segment {
    /// Unique key within an environment.
    pub key: String,
    /// Monotonic version.
    pub version: u64,
    /// User-kind keys always in the segment.
    pub included: Vec<String>,
    /// User-kind keys never in the segment (unless included).
    pub excluded: Vec<String>,
    /// Keys of other kinds always in the segment.
    pub included_contexts: Vec<SegmentTarget>,
    /// Keys of other kinds never in the segment (unless included).
    pub excluded_contexts: Vec<SegmentTarget>,
    /// Rules; any match puts the context in the segment.
    pub rules: Vec<SegmentRule>,
    /// Bucketing salt.
    pub salt: String,
    /// A big segment, whose membership lives in an external store.
    pub unbounded: bool,
    /// The context kind of a big segment's membership.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unbounded_context_kind: Option<String>,
    /// The big segment's generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// A tombstone.
    pub deleted: bool,
    #[serde(skip)]
    pub(crate) included_set: KeySet,
    #[serde(skip)]
    pub(crate) excluded_set: KeySet,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SegmentData {
    key: String,
    #[serde(default)]
    version: u64,
    #[serde(default, deserialize_with = "null_as_default")]
    included: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    excluded: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    included_contexts: Vec<SegmentTarget>,
    #[serde(default, deserialize_with = "null_as_default")]
    excluded_contexts: Vec<SegmentTarget>,
    #[serde(default, deserialize_with = "null_as_default")]
    rules: Vec<SegmentRule>,
    #[serde(default, deserialize_with = "null_as_default")]
    salt: String,
    #[serde(default, deserialize_with = "null_as_default")]
    unbounded: bool,
    #[serde(default)]
    unbounded_context_kind: Option<String>,
    #[serde(default)]
    generation: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    deleted: bool,
}

impl From<SegmentData> for Segment {
    fn from(d: SegmentData) -> Segment {
        Segment {
            included_set: KeySet::new(&d.included),
            excluded_set: KeySet::new(&d.excluded),
            key: d.key,
            version: d.version,
            included: d.included,
            excluded: d.excluded,
            included_contexts: d.included_contexts,
            excluded_contexts: d.excluded_contexts,
            rules: d.rules,
            salt: d.salt,
            unbounded: d.unbounded,
            unbounded_context_kind: d.unbounded_context_kind,
            generation: d.generation,
            deleted: d.deleted,
        }
    }
}

impl Segment {
    /// Rebuilds the key sets after `included` or `excluded` were changed in place.
    pub fn reindex(&mut self) {
        self.included_set = KeySet::new(&self.included);
        self.excluded_set = KeySet::new(&self.excluded);
    }
}

/// Keys of one context kind listed in a segment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "SegmentTargetData")]
pub struct SegmentTarget {
    /// The kind (absent or empty means `user`).
    pub context_kind: String,
    /// The keys.
    pub values: Vec<String>,
    #[serde(skip)]
    pub(crate) key_set: KeySet,
    #[serde(skip)]
    pub(crate) kind: KindName,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SegmentTargetData {
    #[serde(default, deserialize_with = "null_as_default")]
    context_kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    values: Vec<String>,
}

impl From<SegmentTargetData> for SegmentTarget {
    fn from(d: SegmentTargetData) -> SegmentTarget {
        SegmentTarget {
            key_set: KeySet::new(&d.values),
            kind: KindName::new(Some(&d.context_kind)),
            context_kind: d.context_kind,
            values: d.values,
        }
    }
}

/// A segment rule: all clauses match, and the context buckets under `weight` if one is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "SegmentRuleData")]
pub struct SegmentRule {
    /// Stable rule ID.
    pub id: String,
    /// Clauses, all of which must match.
    pub clauses: Vec<Clause>,
    /// Share of matching contexts included, in thousandths of a percent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Attribute to bucket by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_by: Option<String>,
    /// The kind of context to bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_context_kind: Option<String>,
    #[serde(skip)]
    pub(crate) bucket_by_ref: Option<AttrRef>,
    #[serde(skip)]
    pub(crate) bucket_kind: KindName,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SegmentRuleData {
    #[serde(default, deserialize_with = "null_as_default")]
    id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    clauses: Vec<Clause>,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    bucket_by: Option<String>,
    #[serde(default)]
    rollout_context_kind: Option<String>,
}

impl From<SegmentRuleData> for SegmentRule {
    fn from(d: SegmentRuleData) -> SegmentRule {
        let bucket_by_ref = d
            .bucket_by
            .as_deref()
            .map(|b| if d.rollout_context_kind.is_some() { AttrRef::parse(b) } else { AttrRef::literal(b) });
        SegmentRule {
            id: d.id,
            clauses: d.clauses,
            weight: d.weight,
            bucket_by: d.bucket_by,
            bucket_kind: KindName::new(d.rollout_context_kind.as_deref()),
            rollout_context_kind: d.rollout_context_kind,
            bucket_by_ref,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_flag_is_written_back_with_every_required_field() {
        let flag: Flag = serde_json::from_value(json!({"key": "f"})).unwrap();
        let out = serde_json::to_value(&flag).unwrap();
        for field in [
            "key",
            "version",
            "on",
            "prerequisites",
            "salt",
            "targets",
            "contextTargets",
            "rules",
            "fallthrough",
            "offVariation",
            "variations",
            "clientSide",
            "trackEvents",
            "trackEventsFallthrough",
            "debugEventsUntilDate",
            "deleted",
        ] {
            assert!(out.get(field).is_some(), "missing {field} in {out}");
        }
        assert_eq!(out["offVariation"], json!(null));
        assert_eq!(out["prerequisites"], json!([]));
    }

    #[test]
    fn full_flag_round_trips() {
        let input = json!({
            "key": "f", "version": 3, "on": true, "salt": "s",
            "prerequisites": [{"key": "p", "variation": 1}],
            "targets": [{"values": ["a"], "variation": 0}],
            "contextTargets": [{"contextKind": "org", "values": ["o"], "variation": 1}],
            "rules": [{"id": "r", "clauses": [{"contextKind": "user", "attribute": "/a/b", "op": "someFutureOp",
                "values": [1], "negate": true}], "rollout": {"kind": "experiment", "contextKind": "org", "seed": 7,
                "bucketBy": "/x", "variations": [{"variation": 0, "weight": 60000, "untracked": true},
                {"variation": 1, "weight": 40000}]}, "trackEvents": true}],
            "fallthrough": {"variation": 0}, "offVariation": 1, "variations": [true, false],
            "clientSideAvailability": {"usingMobileKey": false, "usingEnvironmentId": true}, "clientSide": true,
            "trackEvents": false, "trackEventsFallthrough": true, "debugEventsUntilDate": 1700000000000_u64,
            "deleted": false, "samplingRatio": 10, "migration": {"checkRatio": 2}, "excludeFromSummaries": true
        });
        let flag: Flag = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(serde_json::to_value(&flag).unwrap(), input);
        assert_eq!(flag.rules[0].clauses[0].op, Operator::Unknown("someFutureOp".into()));
    }

    #[test]
    fn segment_round_trips() {
        let input = json!({
            "key": "s", "version": 2, "included": ["a"], "excluded": ["b"],
            "includedContexts": [{"contextKind": "org", "values": ["o"]}], "excludedContexts": [],
            "rules": [{"id": "r", "clauses": [{"attribute": "email", "op": "endsWith", "values": ["@x"],
                "negate": false}], "weight": 50000, "bucketBy": "email"}],
            "salt": "salty", "unbounded": false, "deleted": false
        });
        let segment: Segment = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(serde_json::to_value(&segment).unwrap(), input);
        assert!(segment.included_set.contains("a"));
    }

    #[test]
    fn legacy_client_side_means_mobile_too() {
        let flag: Flag = serde_json::from_value(json!({"key": "f", "clientSide": true})).unwrap();
        assert_eq!(
            flag.client_side_availability(),
            ClientSideAvailability { using_mobile_key: true, using_environment_id: true }
        );
    }

    #[test]
    fn wrong_shapes_are_typed_errors() {
        assert!(serde_json::from_value::<Flag>(json!({"key": 3})).is_err());
        assert!(serde_json::from_value::<Flag>(json!({"key": "f", "variations": {}})).is_err());
        assert!(serde_json::from_value::<Segment>(json!([])).is_err());
    }
}
