//! The evaluator.

use serde_json::Value;

use crate::bucket::{BucketSpec, context_bucket};
use crate::context::{Context, KindName};
use crate::model::{Clause, ClauseTest, Flag, FlagRule, Rollout, Segment, SegmentRule, Target};
use crate::reason::{BigSegmentsStatus, ErrorKind, Reason};
use crate::store::Store;

/// How deep prerequisites, and segments referring to segments, may nest. Deeper data is reported as
/// `MALFORMED_FLAG` instead of risking the stack; real data nests a few levels.
pub const MAX_NESTING_DEPTH: usize = 64;

/// The result of evaluating a flag. The value and strings in the reason borrow from the flag data.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detail<'a> {
    /// The variation's value, or `None` (the caller's default applies).
    pub value: Option<&'a Value>,
    /// The variation's index, or `None` when no variation was chosen.
    pub variation_index: Option<usize>,
    /// Why.
    pub reason: Reason<'a>,
    /// Set when the evaluation met a big segment.
    pub big_segments_status: Option<BigSegmentsStatus>,
}

impl<'a> Detail<'a> {
    #[inline]
    fn error(error_kind: ErrorKind) -> Detail<'a> {
        Detail { value: None, variation_index: None, reason: Reason::Error { error_kind }, big_segments_status: None }
    }

    #[inline]
    fn empty(reason: Reason<'a>) -> Detail<'a> {
        Detail { value: None, variation_index: None, reason, big_segments_status: None }
    }

    /// Whether analytics should treat this result as part of an experiment: the reason says so, or (the older
    /// model) the matched rule or the fallthrough has event tracking on.
    pub fn is_experiment(&self, flag: &Flag) -> bool {
        match self.reason {
            r if r.in_experiment() => true,
            Reason::Fallthrough { .. } => flag.track_events_fallthrough,
            Reason::RuleMatch { rule_index, .. } => flag.rules.get(rule_index).is_some_and(|r| r.track_events),
            _ => false,
        }
    }
}

/// One evaluation of a prerequisite flag, reported so that the SDK can send its analytics event.
#[derive(Debug, Clone, Copy)]
pub struct PrerequisiteEvent<'a> {
    /// The flag that has the prerequisite.
    pub target_flag: &'a Flag,
    /// The prerequisite flag.
    pub prerequisite_flag: &'a Flag,
    /// Its result.
    pub detail: Detail<'a>,
}

/// Receives prerequisite evaluations.
pub trait PrerequisiteRecorder<'a> {
    /// Called once per prerequisite evaluated, innermost first.
    fn record(&mut self, event: PrerequisiteEvent<'a>);
}

/// A recorder that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecorder;

impl PrerequisiteRecorder<'_> for NoRecorder {
    #[inline]
    fn record(&mut self, _: PrerequisiteEvent<'_>) {}
}

impl<'a, F: FnMut(PrerequisiteEvent<'a>)> PrerequisiteRecorder<'a> for F {
    fn record(&mut self, event: PrerequisiteEvent<'a>) {
        self(event)
    }
}

/// Evaluates `flag` for `context`, finding prerequisites and segments in `store`.
pub fn evaluate<'a, S: Store + ?Sized>(store: &'a S, flag: &'a Flag, context: &Context) -> Detail<'a> {
    evaluate_with_recorder(store, flag, context, &mut NoRecorder)
}

/// [`evaluate`], reporting each prerequisite evaluation to `recorder`.
pub fn evaluate_with_recorder<'a, S: Store + ?Sized, R: PrerequisiteRecorder<'a> + ?Sized>(
    store: &'a S,
    flag: &'a Flag,
    context: &Context,
    recorder: &mut R,
) -> Detail<'a> {
    // Off flags are common, and serving one needs none of the evaluator's state.
    if !flag.on {
        return off_value(flag, Reason::Off);
    }
    let mut scope = Scope { store, context, recorder, big_segments_status: None };
    let (mut detail, _) = scope.evaluate(flag, None);
    detail.big_segments_status = scope.big_segments_status;
    detail
}

/// A key on the chain of flags (or segments) being evaluated, linked through the call stack so cycle detection
/// needs no allocation.
struct Chain<'c> {
    key: &'c str,
    depth: usize,
    parent: Option<&'c Chain<'c>>,
}

impl<'c> Chain<'c> {
    fn push(parent: Option<&'c Chain<'c>>, key: &'c str) -> Chain<'c> {
        Chain { key, depth: parent.map_or(1, |p| p.depth + 1), parent }
    }

    fn contains(chain: Option<&Chain<'_>>, key: &str) -> bool {
        let mut link = chain;
        while let Some(c) = link {
            if c.key == key {
                return true;
            }
            link = c.parent;
        }
        false
    }
}

/// The flag data is inconsistent in a way that fails the whole evaluation.
struct Malformed;

struct Scope<'a, 'c, 'r, S: ?Sized, R: ?Sized> {
    store: &'a S,
    context: &'c Context,
    recorder: &'r mut R,
    big_segments_status: Option<BigSegmentsStatus>,
}

impl<'a, S: Store + ?Sized, R: PrerequisiteRecorder<'a> + ?Sized> Scope<'a, '_, '_, S, R> {
    /// Evaluates a flag. The flag is false when the whole evaluation, including the flags that have this one as
    /// a prerequisite, must fail (a cycle, a bad clause); errors confined to this flag's own result (a variation
    /// index out of range) leave it true, as in LaunchDarkly's engines.
    fn evaluate(&mut self, flag: &'a Flag, chain: Option<&Chain<'_>>) -> (Detail<'a>, bool) {
        if !flag.on {
            return (off_value(flag, Reason::Off), true);
        }
        if !flag.prerequisites.is_empty() {
            let link = Chain::push(chain, &flag.key);
            if link.depth > MAX_NESTING_DEPTH {
                return (Detail::error(ErrorKind::MalformedFlag), false);
            }
            for prereq in &flag.prerequisites {
                let Some(prereq_flag) = self.store.flag(&prereq.key).filter(|f| !f.deleted) else {
                    return (off_value(flag, Reason::PrerequisiteFailed { prerequisite_key: &prereq.key }), true);
                };
                if Chain::contains(Some(&link), &prereq_flag.key) {
                    return (Detail::error(ErrorKind::MalformedFlag), false);
                }
                let (result, valid) = self.evaluate(prereq_flag, Some(&link));
                if !valid {
                    return (Detail::error(ErrorKind::MalformedFlag), false);
                }
                let passed = prereq_flag.on
                    && result.variation_index.is_some_and(|i| i64::try_from(i).ok() == Some(prereq.variation));
                self.recorder.record(PrerequisiteEvent {
                    target_flag: flag,
                    prerequisite_flag: prereq_flag,
                    detail: result,
                });
                if !passed {
                    return (off_value(flag, Reason::PrerequisiteFailed { prerequisite_key: &prereq.key }), true);
                }
            }
        }
        if let Some(variation) = self.target_match(flag) {
            return (variation_detail(flag, variation, Reason::TargetMatch), true);
        }
        match self.matching_rule(&flag.rules) {
            Err(Malformed) => return (Detail::error(ErrorKind::MalformedFlag), false),
            Ok(None) => {}
            Ok(Some((rule_index, rule))) => {
                let reason = Reason::RuleMatch { rule_index, rule_id: &rule.id, in_experiment: false };
                return (self.variation_or_rollout(flag, rule.variation, rule.rollout.as_ref(), reason), true);
            }
        }
        let fallthrough = &flag.fallthrough;
        let reason = Reason::Fallthrough { in_experiment: false };
        (self.variation_or_rollout(flag, fallthrough.variation, fallthrough.rollout.as_ref(), reason), true)
    }

    fn target_match(&self, flag: &Flag) -> Option<i64> {
        if flag.context_targets.is_empty() {
            return flag.targets.iter().find(|t| self.in_target(t)).map(|t| t.variation);
        }
        for target in &flag.context_targets {
            // A user-kind entry without keys stands for the `targets` entry of the same variation, so that the
            // old-style list keeps its place in the order.
            let matched = if target.kind.is_user() && target.values.is_empty() {
                flag.targets.iter().find(|t| t.variation == target.variation).is_some_and(|t| self.in_target(t))
            } else {
                self.in_target(target)
            };
            if matched {
                return Some(target.variation);
            }
        }
        None
    }

    #[inline]
    fn in_target(&self, target: &Target) -> bool {
        self.context.individual_of(&target.kind).is_some_and(|c| target.key_set.contains(c.key()))
    }

    // Inlined into `evaluate` with the bucketing code, which saves a tenth of a rollout evaluation.
    #[inline(always)]
    fn variation_or_rollout(
        &self,
        flag: &'a Flag,
        variation: Option<i64>,
        rollout: Option<&Rollout>,
        reason: Reason<'a>,
    ) -> Detail<'a> {
        if let Some(index) = variation {
            return variation_detail(flag, index, reason);
        }
        let Some(rollout) = rollout.filter(|r| !r.variations.is_empty()) else {
            return Detail::error(ErrorKind::MalformedFlag);
        };
        let is_experiment = rollout.is_experiment();
        let spec = BucketSpec {
            is_experiment,
            seed: rollout.seed,
            kind: &rollout.bucket_kind,
            key: &flag.key,
            salt: &flag.salt,
            bucket_by: rollout.bucket_by_ref.as_ref(),
        };
        let (bucket, context_found) = match context_bucket(self.context, &spec) {
            Err(_) => return Detail::error(ErrorKind::MalformedFlag),
            Ok(Some(b)) => (b, true),
            Ok(None) => (0.0, false),
        };
        let mut sum = 0.0_f32;
        // Past the last bucket (rounding, or weights short of 100000) the context gets the last variation.
        let mut chosen = rollout.variations.last();
        for wv in &rollout.variations {
            #[allow(clippy::cast_precision_loss)]
            let weight = wv.weight as f32;
            sum += weight / 100_000.0;
            if bucket < sum {
                chosen = Some(wv);
                break;
            }
        }
        let Some(chosen) = chosen else { return Detail::error(ErrorKind::MalformedFlag) };
        let in_experiment = is_experiment && !chosen.untracked && context_found;
        let reason = match reason {
            Reason::Fallthrough { .. } => Reason::Fallthrough { in_experiment },
            Reason::RuleMatch { rule_index, rule_id, .. } => Reason::RuleMatch { rule_index, rule_id, in_experiment },
            other => other,
        };
        variation_detail(flag, chosen.variation, reason)
    }

    /// The first rule whose clauses all match, with its index.
    fn matching_rule(&mut self, rules: &'a [FlagRule]) -> Result<Option<(usize, &'a FlagRule)>, Malformed> {
        for (index, rule) in rules.iter().enumerate() {
            // Segment cycles are tracked on their own chain, which starts empty for each flag.
            if self.all_clauses_match(&rule.clauses, None)? {
                return Ok(Some((index, rule)));
            }
        }
        Ok(None)
    }

    // This, `clause_matches`, `SingleContext::get` and the cheap operators are inlined into the rule loop: for a
    // flag with many rules, the calls' prologues and epilogues cost about as much as the matching itself.
    #[inline(always)]
    fn all_clauses_match(&mut self, clauses: &'a [Clause], chain: Option<&Chain<'_>>) -> Result<bool, Malformed> {
        for clause in clauses {
            if !self.clause_matches(clause, chain)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    #[inline(always)]
    fn clause_matches(&mut self, clause: &'a Clause, chain: Option<&Chain<'_>>) -> Result<bool, Malformed> {
        let kind = match &clause.test {
            ClauseTest::Attribute { kind } => kind,
            ClauseTest::Segments(keys) => return self.segment_match(keys, clause.negate, chain),
            ClauseTest::Kind => return Ok(self.kind_matches(clause)),
            ClauseTest::Malformed => return Err(Malformed),
        };
        let Some(individual) = self.context.individual_of(kind) else { return Ok(false) };
        let matched = match individual.get(&clause.attr) {
            // A missing attribute never matches, whatever `negate` says.
            None | Some(Value::Null) => return Ok(false),
            Some(Value::Array(items)) => items.iter().any(|item| clause.matcher.matches(item)),
            Some(value) => clause.matcher.matches(value),
        };
        Ok(matched != clause.negate)
    }

    #[inline(never)]
    fn kind_matches(&self, clause: &Clause) -> bool {
        self.context.kinds().any(|kind| clause.matcher.matches_str(kind)) != clause.negate
    }

    fn segment_match(&mut self, keys: &[Box<str>], negate: bool, chain: Option<&Chain<'_>>) -> Result<bool, Malformed> {
        for key in keys {
            let Some(segment) = self.store.segment(key).filter(|s| !s.deleted) else { continue };
            if self.segment_contains(segment, chain)? {
                return Ok(!negate);
            }
        }
        Ok(negate)
    }

    fn segment_contains(&mut self, segment: &'a Segment, chain: Option<&Chain<'_>>) -> Result<bool, Malformed> {
        if Chain::contains(chain, &segment.key) {
            return Err(Malformed);
        }
        let link = Chain::push(chain, &segment.key);
        if link.depth > MAX_NESTING_DEPTH {
            return Err(Malformed);
        }
        if segment.unbounded {
            // Big-segment membership lives in a store this engine is not connected to.
            self.big_segments_status = Some(BigSegmentsStatus::NotConfigured);
            return Ok(false);
        }
        let user_key = self.context.individual_of(&KindName::User).map(|u| u.key());
        if user_key.is_some_and(|k| segment.included_set.contains(k))
            || self.in_segment_targets(&segment.included_contexts)
        {
            return Ok(true);
        }
        if user_key.is_some_and(|k| segment.excluded_set.contains(k))
            || self.in_segment_targets(&segment.excluded_contexts)
        {
            return Ok(false);
        }
        for rule in &segment.rules {
            if self.segment_rule_matches(segment, rule, Some(&link))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn in_segment_targets(&self, targets: &[crate::model::SegmentTarget]) -> bool {
        targets.iter().any(|t| self.context.individual_of(&t.kind).is_some_and(|c| t.key_set.contains(c.key())))
    }

    fn segment_rule_matches(
        &mut self,
        segment: &'a Segment,
        rule: &'a SegmentRule,
        chain: Option<&Chain<'_>>,
    ) -> Result<bool, Malformed> {
        if !self.all_clauses_match(&rule.clauses, chain)? {
            return Ok(false);
        }
        let Some(weight) = rule.weight else { return Ok(true) };
        let spec = BucketSpec {
            is_experiment: false,
            seed: None,
            kind: &rule.bucket_kind,
            key: &segment.key,
            salt: &segment.salt,
            bucket_by: rule.bucket_by_ref.as_ref(),
        };
        match context_bucket(self.context, &spec) {
            Err(_) => Err(Malformed),
            // A context without the rollout's kind is not in the rollout.
            Ok(None) => Ok(false),
            #[allow(clippy::cast_precision_loss)]
            Ok(Some(bucket)) => Ok(bucket < weight as f32 / 100_000.0),
        }
    }
}

#[inline]
fn variation_detail<'a>(flag: &'a Flag, index: i64, reason: Reason<'a>) -> Detail<'a> {
    match usize::try_from(index).ok().and_then(|i| flag.variations.get(i).map(|v| (i, v))) {
        Some((i, value)) => Detail { value: Some(value), variation_index: Some(i), reason, big_segments_status: None },
        None => Detail::error(ErrorKind::MalformedFlag),
    }
}

#[inline]
fn off_value<'a>(flag: &'a Flag, reason: Reason<'a>) -> Detail<'a> {
    match flag.off_variation {
        Some(index) => variation_detail(flag, index, reason),
        None => Detail::empty(reason),
    }
}
